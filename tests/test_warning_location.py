"""Warnings point at the user's line, not at a line inside the library."""


import keras
import numpy as np
import pytest
from helpers import never_updated_warnings  # noqa: E402

import keras_bn_ext


def _in_capture(model, x):
    with keras_bn_ext.debug.capture(model) as records:
        model.predict(x, verbose=0)  # in capture
    assert records[0].flags == ("never_updated",)


@pytest.mark.parametrize(
    "how", ["direct call", "predict", "evaluate", "predict in capture"]
)
def test_never_updated_warning_names_the_callers_line(how):
    x = np.ones((4, 3), "float32")
    layer = keras_bn_ext.BatchNormalization()
    model = keras.Sequential([keras.Input((3,)), layer])
    model.compile(optimizer="sgd", loss="mse")
    runs = {
        "direct call": lambda: layer(x),
        "predict": lambda: model.predict(x, verbose=0),
        "evaluate": lambda: model.evaluate(x, x, verbose=0),
        # Records on: TensorFlow warns from its callback thread.
        "predict in capture": lambda: _in_capture(model, x),
    }
    caught = never_updated_warnings(runs[how])
    line = {"predict in capture": "model.predict(x, verbose=0)  # in capture"}.get(
        how, f'"{how}": lambda'
    )
    assert len(caught) == 1, [str(w.message) for w in caught]
    # The lambda above, in this file: the user's line.
    assert caught[0].filename == __file__
    source = open(__file__).read().splitlines()[caught[0].lineno - 1]
    assert line in source
