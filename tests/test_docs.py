"""Documentation cannot drift from behaviour: every ```python block of the
README and docs/*.md runs, and every docstring example (doctest) passes."""

import doctest
import importlib
import pathlib
import re
import warnings

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
CODE_BLOCK = re.compile(r"```python\n(.*?)```", re.S)

DOCTEST_MODULES = [
    "keras_bn_ext.branching",
    "keras_bn_ext.layers.batch_normalization",
    "keras_bn_ext.debug.registry",
    "keras_bn_ext.interop.torch",
    "keras_bn_ext.interop.swap",
    "keras_bn_ext.tools.recalibrate",
    "keras_bn_ext.tools.report",
    "keras_bn_ext.tools.monitor",
]


def test_docs_have_code():
    # The test below must not pass vacuously.
    assert sum(len(CODE_BLOCK.findall(p.read_text())) for p in DOC_FILES) >= 3


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: p.name)
def test_markdown_python_blocks_run(path, tmp_path, monkeypatch):
    blocks = CODE_BLOCK.findall(path.read_text())
    if not blocks:
        pytest.skip(f"{path.name} has no python block")
    monkeypatch.chdir(tmp_path)  # examples may write files
    namespace = {"__name__": "__doc__"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, block in enumerate(blocks):
            try:
                exec(compile(block, f"{path.name}[block {i}]", "exec"), namespace)
            except Exception as e:
                raise AssertionError(
                    f"{path.name}, python block {i} failed: {e!r}\n{block}"
                ) from e


@pytest.mark.parametrize("name", DOCTEST_MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = doctest.testmod(
            module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
        )
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {name}"
