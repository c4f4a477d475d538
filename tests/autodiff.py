"""Gradients on the current backend, for tests that compare them with a
float64 reference (jax.grad, tf.GradientTape, torch.autograd)."""

import keras
import numpy as np

BACKEND = keras.backend.backend()


def gradients(f, args):
    """Gradients of the scalar `f(*args)` with respect to every argument
    (NumPy arrays in, NumPy arrays out)."""
    if BACKEND == "jax":
        import jax

        argnums = tuple(range(len(args)))
        return [np.asarray(g) for g in jax.grad(f, argnums=argnums)(*args)]
    if BACKEND == "tensorflow":
        import tensorflow as tf

        tensors = [tf.constant(a) for a in args]
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            loss = f(*tensors)
        return [g.numpy() for g in tape.gradient(loss, tensors)]
    import torch

    tensors = [torch.tensor(a, requires_grad=True) for a in args]
    return [g.numpy() for g in torch.autograd.grad(f(*tensors), tensors)]
