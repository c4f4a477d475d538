"""XLA's exact cost of a JAX step: bytes moved and buffers, without running it.

`compiled.cost_analysis()["bytes accessed"]` sums the bytes every kernel of
the optimized program reads and writes; divided by the float32 input's size
it is the number of full-size passes a step makes over memory, a count free
of timing noise (tests/test_xla_passes.py bounds ours). The step is compiled
from shapes alone (`jax.ShapeDtypeStruct`), so no data is made or run.
"""

import bench_steps


def xla_cost(impl, case, mode="train"):
    """XLA's cost of the JAX step `bench_steps.jax_step` times.

    Args:
        impl: "ours" (keras_bn_ext) or "keras" (keras.layers.BatchNormalization).
        case: a `bench_steps.Case` (shape, axis, mask).
        mode: "train" (forward, backward and moving update) or "infer".

    Returns:
        A dict: `passes` (bytes accessed / the float32 input's bytes),
        `bytes_accessed`, and XLA's buffer assignment: `temp_bytes`,
        `output_bytes`, `argument_bytes`, with the `method`.
    """
    import jax

    x = jax.ShapeDtypeStruct(case.shape, "float32")
    mask = jax.ShapeDtypeStruct(case.mask_shape, "bool") if case.masked else None
    layer = bench_steps.make_layer(impl, case)
    compiled, _ = bench_steps.jax_compile(layer, case, mode, x, x, mask)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    bytes_accessed = float(cost["bytes accessed"])
    memory = compiled.memory_analysis()
    return {
        "passes": bytes_accessed / (4 * case.size),
        "bytes_accessed": bytes_accessed,
        "temp_bytes": int(memory.temp_size_in_bytes),
        "output_bytes": int(memory.output_size_in_bytes),
        "argument_bytes": int(memory.argument_size_in_bytes),
        "method": "jax compiled.memory_analysis() (XLA buffer assignment)",
    }


def xla_passes(impl, case, mode="train"):
    """Full-size float32 passes of the JAX step: see `xla_cost`."""
    return xla_cost(impl, case, mode)["passes"]
