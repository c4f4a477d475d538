"""keras_bn_ext.BatchNormalization through the layer harness: the cases of
Keras's own `test_bn_basics` and `test_renorm_basics`, plus checks that the
harness itself fails when it should."""

import keras
import numpy as np
import pytest
import reference
from harness import check_config_round_trip
from harness import run_layer_test

import keras_bn_ext

BN = keras_bn_ext.BatchNormalization

# (init_kwargs, input_shape, trainable weights, non-trainable weights, losses)
CASES = {
    # test_bn_basics: vector case
    "vector": ({"center": True, "scale": True}, (2, 3), 2, 2, 0),
    "vector_no_center_no_scale": ({"center": False, "scale": False}, (2, 3), 0, 2, 0),
    # test_bn_basics: image case, with regularizers (one loss each)
    "image_regularizers": (
        {"center": True, "scale": True, "beta_regularizer": "l2",
         "gamma_regularizer": "l2"},
        (2, 4, 4, 3), 2, 2, 2,
    ),
    # Not in Keras's test: one of center/scale off at a time.
    "image_center_only": ({"center": True, "scale": False}, (2, 4, 4, 3), 1, 2, 0),
    "image_scale_only": ({"center": False, "scale": True}, (2, 4, 4, 3), 1, 2, 0),
    "channels_first": ({"axis": 1}, (2, 3, 4, 4), 2, 2, 0),
    # test_renorm_basics: moving_mean, moving_variance, moving_stddev,
    # renorm_mean, renorm_stddev are non-trainable.
    "renorm": ({"center": True, "scale": True, "renorm": True}, (2, 3), 2, 5, 0),
    "renorm_clipping": (
        {"center": True, "scale": True, "renorm": True,
         "renorm_clipping": {"rmax": 3.0, "rmin": 0.3, "dmax": 5.0}},
        (2, 4, 4, 3), 2, 5, 0,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_batch_normalization_harness(case):
    init_kwargs, shape, n_trainable, n_non_trainable, n_losses = CASES[case]
    run_layer_test(
        BN,
        init_kwargs=init_kwargs,
        call_kwargs={"training": True},
        input_shape=shape,
        expected_output_shape=shape,
        expected_num_trainable_weights=n_trainable,
        expected_num_non_trainable_weights=n_non_trainable,
        expected_num_losses=n_losses,
        supports_masking=True,
    )


# A training call on two samples gives -1/+1 (up to epsilon) per channel.
X = np.array([[0.0, 10.0], [2.0, 30.0]], dtype="float32")


def test_harness_expected_output():
    # The harness compares values when given them.
    run_layer_test(
        BN,
        call_kwargs={"training": True},
        input_data=X,
        expected_output=reference.batch_norm(X).output,
        expected_output_shape=(2, 2),
        run_mixed_precision_check=False,
    )


# The harness must be able to fail: wrong expectations and broken layers.
WRONG_EXPECTATIONS = {
    "weight_count": dict(input_shape=(2, 3), expected_output_shape=(2, 3),
                         expected_num_trainable_weights=3),
    "loss_count": dict(init_kwargs={"gamma_regularizer": "l2"}, input_shape=(2, 3),
                       expected_num_losses=2),
    "output": dict(input_data=X, call_kwargs={"training": True}, expected_output=X),
}


@pytest.mark.parametrize("name", list(WRONG_EXPECTATIONS))
def test_harness_rejects_wrong_expectation(name):
    with pytest.raises(AssertionError):
        run_layer_test(BN, **WRONG_EXPECTATIONS[name], run_training_check=False,
                       run_mixed_precision_check=False)


class _ForgetfulBN(BN):
    # A config that misreports an argument: from_config gives another layer.
    def get_config(self):
        return {**super().get_config(), "epsilon": 2 * self.epsilon}


def test_harness_rejects_broken_config():
    with pytest.raises(AssertionError):
        check_config_round_trip(
            _ForgetfulBN, {"epsilon": 0.5}, {"_ForgetfulBN": _ForgetfulBN}
        )


class _DeadWeight(keras.layers.Layer):
    # Its weight gets a zero gradient: a step that trains nothing must fail.
    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1],), name="w")

    def call(self, inputs, training=None):
        return inputs + 0.0 * self.w


def test_harness_rejects_untrained_weight():
    with pytest.raises(AssertionError, match="did not train"):
        run_layer_test(
            _DeadWeight, {}, input_shape=(4, 3),
            custom_objects={"_DeadWeight": _DeadWeight},
            run_mixed_precision_check=False,
        )
