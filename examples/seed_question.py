"""Asked of keras_bn_ext: why does predict() not normalize?

    KERAS_BACKEND=jax python examples/seed_question.py   (or tensorflow, torch)

A user builds the smallest model, predicts on [[0, 1], [2, 3]] and expects
[[-1, -1], [1, 1]]. They get the input divided by sqrt(1 + epsilon). The
layer's own debug record and `layer.explain()` say why.

The walk-through is `keras_bn_ext.demo` (also `keras-bn-ext demo`); read
keras_bn_ext/demo.py for the code, section by section.
"""

import keras

from keras_bn_ext.demo import run_demo


def main():
    print(f"Backend: {keras.backend.backend()}")
    run_demo()


if __name__ == "__main__":
    main()
