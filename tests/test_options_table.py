"""The table of options (`keras_bn_ext.layers.options`) against the layer's
signature, docstring, config, `convert_model`, `to_torch` and `explain()`:
an option added to one of them and forgotten in the table fails here."""

import inspect
import re

import keras
import pytest

import keras_bn_ext
from keras_bn_ext.layers.options import EXTENSIONS
from keras_bn_ext.layers.options import OPTIONS

BN = keras_bn_ext.BatchNormalization

# A used value for each option that is not a bool (a bool's is `not default`).
USED_VALUES = {"momentum": None, "mode": "moving", "virtual_batch_size": 2,
               "virtual_batch_grouping": "strided"}
# A value each check must refuse, for the options whose check is not `bool`.
BAD_VALUES = {"momentum": 1.5, "mode": "frozen", "virtual_batch_size": 0,
              "virtual_batch_grouping": "rows"}
# Converting to Keras drops these (Keras's layer computes the same on finite
# batches); every other extension option must refuse instead.
DROPPED_FOR_KERAS = {"skip_nonfinite_updates", "debug"}


def used_value(option):
    if isinstance(option.default, bool):
        return not option.default
    return USED_VALUES[option.name]


def parameters(cls):
    return {
        name: p.default
        for name, p in inspect.signature(cls).parameters.items()
        if p.kind is not inspect.Parameter.VAR_KEYWORD
    }


def rows(predicate):
    return [pytest.param(o, id=o.name) for o in OPTIONS.values() if predicate(o)]


def test_keras_parameters_come_first_with_keras_defaults():
    ours, theirs = parameters(BN), parameters(keras.layers.BatchNormalization)
    # A drop-in: the same names, order (positional calls) and defaults.
    assert list(ours)[: len(theirs)] == list(theirs)
    for name, default in theirs.items():
        assert ours[name] == default, name


def test_every_extension_parameter_is_a_row_with_the_same_default():
    ours, theirs = parameters(BN), parameters(keras.layers.BatchNormalization)
    extensions = [name for name in ours if name not in theirs]
    assert extensions == [option.name for option in EXTENSIONS]
    for option in OPTIONS.values():
        assert option.keras_argument == (option.name in theirs), option.name
        assert ours[option.name] == option.default, option.name
        if option.keras_argument:
            assert theirs[option.name] == option.default, option.name
    # Rows in the order of the signature.
    assert list(OPTIONS) == [name for name in ours if name in OPTIONS]


@pytest.mark.parametrize("option", rows(lambda o: True))
def test_the_docstring_documents_each_option(option):
    assert re.search(rf"^ {{8}}{option.name}:", BN.__doc__, re.M), option.name


@pytest.mark.parametrize("option", rows(lambda o: o.check is not bool))
def test_each_check_names_the_argument_and_the_value(option):
    bad = BAD_VALUES[option.name]
    with pytest.raises(ValueError, match=re.escape(f"Received: {option.name}={bad!r}")):
        BN(**{option.name: bad})
    assert getattr(BN(**{option.name: option.default}), option.name) == option.default


@pytest.mark.parametrize("option", rows(lambda o: not o.keras_argument))
def test_config_writes_an_extension_option_only_when_not_default(option):
    assert option.name not in BN().get_config()
    value = used_value(option)
    config = BN(**{option.name: value}).get_config()
    assert config[option.name] == value
    assert getattr(BN.from_config(config), option.name) == value


@pytest.mark.parametrize("option", rows(lambda o: o.keras))
def test_to_keras_refuses_each_option_keras_cannot_express(option):
    value = used_value(option)
    model = keras.Sequential([keras.Input((3,)), BN(**{option.name: value})])
    with pytest.raises(ValueError) as info:
        keras_bn_ext.convert_model(model, to="keras")
    message = str(info.value)
    assert f"Received: {option.name}={value!r}" in message
    assert option.keras in message


def test_to_keras_drops_only_the_options_keras_computes_the_same():
    dropped = {o.name for o in EXTENSIONS if not o.keras}
    assert dropped == DROPPED_FOR_KERAS
    layer = BN(**{name: not OPTIONS[name].default for name in dropped}, name="bn")
    back = keras_bn_ext.convert_model(keras.Sequential([keras.Input((3,)), layer]),
                                      to="keras")
    assert type(back.get_layer("bn")) is keras.layers.BatchNormalization


@pytest.mark.parametrize("option", rows(lambda o: o.torch))
def test_to_torch_refuses_each_option_pytorch_cannot_express(option):
    pytest.importorskip("torch")
    value = used_value(option)
    layer = BN(axis=1, **{option.name: value})
    layer.build((None, 3, 4))
    with pytest.raises(ValueError) as info:
        keras_bn_ext.interop.to_torch(layer)
    assert f"{option.torch}. Received: {option.name}={value!r}" in str(info.value)


@pytest.mark.parametrize("option", rows(lambda o: o.explain))
def test_explain_words_each_option_as_the_table_says(option):
    value = used_value(option)
    layer, default = BN(**{option.name: value}), BN()
    layer.build((None, 3))
    default.build((None, 3))
    assert option.explain(value) in layer.explain()
    assert option.explain(value) not in default.explain()
