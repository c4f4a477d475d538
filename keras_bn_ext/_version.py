"""The package version, read by `keras_bn_ext.__version__`, the CLI's
`--version` and the build (`pyproject.toml`), without importing Keras."""

__version__ = "0.1.0"
