"""Keras's own BatchNormalization tests, run from the installed Keras with
our layer swapped in.

The keras wheel ships `keras/src/layers/normalization/batch_normalization_test.py`.
Its tests build the layer as `layers.BatchNormalization` from the module's
global `layers`; we give that module a `layers` whose `BatchNormalization`
is ours and leave everything else to Keras. Passing the file as it is, for
whichever Keras is installed, is what "drop-in replacement" means.

A test that a newer Keras adds and we do not pass yet goes in
EXPECTED_FAILURES with the reason (strict: it fails the suite once it passes).
"""

import types
import unittest

import pytest
from keras.src import layers as keras_layers
from keras.src.layers.normalization import batch_normalization_test as upstream

import keras_bn_ext

# "test name": "why we do not pass it yet". Empty for Keras 3.15.
EXPECTED_FAILURES = {}


class _LayersWithOurs(types.ModuleType):
    """`keras.src.layers` with `BatchNormalization` replaced."""

    def __init__(self, batch_normalization):
        super().__init__("keras.src.layers")
        self.BatchNormalization = batch_normalization

    def __getattr__(self, name):
        return getattr(keras_layers, name)


def _keras_tests(layer_class):
    """Keras's test case class, building `layer_class` wherever it builds
    its BatchNormalization."""
    upstream.layers = _LayersWithOurs(layer_class)
    return upstream.BatchNormalizationTest


def _upstream_test_names():
    return unittest.TestLoader().getTestCaseNames(upstream.BatchNormalizationTest)


class KerasBatchNormalizationTest(_keras_tests(keras_bn_ext.BatchNormalization)):
    """Collected by pytest: every upstream test, against our layer."""


for _name, _reason in EXPECTED_FAILURES.items():
    setattr(
        KerasBatchNormalizationTest,
        _name,
        pytest.mark.xfail(strict=True, reason=_reason)(
            getattr(upstream.BatchNormalizationTest, _name)
        ),
    )


def test_the_upstream_file_has_its_tests():
    # Keras 3.15's file holds 33 tests (parameterized cases included).
    assert len(_upstream_test_names()) >= 33
    assert set(EXPECTED_FAILURES) <= set(_upstream_test_names())


def test_the_swap_reaches_the_upstream_tests():
    """A layer that does not normalize must fail Keras's tests: proof that
    they exercise the class we swap in, not Keras's own."""

    class NotNormalizing(keras_bn_ext.BatchNormalization):
        def call(self, inputs, training=None, mask=None):
            return inputs

    try:
        tests = unittest.TestLoader().loadTestsFromTestCase(
            _keras_tests(NotNormalizing)
        )
        result = unittest.TestResult()
        tests.run(result)
    finally:
        _keras_tests(keras_bn_ext.BatchNormalization)
    failed = {test.id().rsplit(".", 1)[-1] for test, _ in result.failures + result.errors}
    assert "test_correctness0" in failed or any(
        name.startswith("test_correctness") for name in failed
    ), failed
    assert upstream.layers.BatchNormalization is keras_bn_ext.BatchNormalization
