"""The Keras backends this package trains, debugs and is tested on.

Kept free of imports so that scripts can read it without loading a backend
(`python -c "import runpy; print(*runpy.run_path(PATH)['BACKENDS'])"`).
NumPy and OpenVINO are inference-only Keras backends: the layer runs there
without training-time features.
"""

BACKENDS = ("tensorflow", "jax", "torch")
