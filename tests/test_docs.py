"""Documentation cannot drift from behaviour: every ```python block of the
README and docs/*.md runs, every docstring example (doctest) passes, every
public name has a docstring and a place in the API reference, and the site
builds with `mkdocs build --strict`."""

import doctest
import importlib
import inspect
import os
import pathlib
import pkgutil
import re
import subprocess
import sys
import warnings

import keras
import pytest

import keras_bn_ext

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
CODE_BLOCK = re.compile(r"```python\n(.*?)```", re.S)
# A block that needs the one before it says so on its first line, for the
# reader as for this test; every other block must run on its own.
CONTINUES = "# (continues the previous block)"

once = pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="backend-independent check: runs once, under KERAS_BACKEND=jax",
)


def _package_modules():
    """Every module of the package, by name, without importing them."""
    names = ["keras_bn_ext"]
    for info in pkgutil.walk_packages(keras_bn_ext.__path__, "keras_bn_ext."):
        names.append(info.name)
    return names


def _source(name):
    spec = importlib.util.find_spec(name)
    return pathlib.Path(spec.origin).read_text()


DOCTEST_MODULES = [n for n in _package_modules() if ">>> " in _source(n)]


def test_docs_have_code():
    # The tests below must not pass vacuously.
    assert sum(len(CODE_BLOCK.findall(p.read_text())) for p in DOC_FILES) >= 3
    assert len(DOCTEST_MODULES) >= 8


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: p.name)
def test_markdown_python_blocks_run(path, tmp_path, monkeypatch):
    blocks = CODE_BLOCK.findall(path.read_text())
    if not blocks:
        pytest.skip(f"{path.name} has no python block")
    monkeypatch.chdir(tmp_path)  # examples may write files
    namespace = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, block in enumerate(blocks):
            if not block.startswith(CONTINUES):
                namespace = {"__name__": "__doc__"}  # as if copied alone
            try:
                exec(compile(block, f"{path.name}[block {i}]", "exec"), namespace)
            except Exception as e:
                raise AssertionError(
                    f"{path.name}, python block {i} failed: {e!r}. Each block "
                    "runs on its own unless its first line is "
                    f"{CONTINUES!r}.\n{block}"
                ) from e


@pytest.mark.parametrize("name", DOCTEST_MODULES)
def test_docstring_examples(name):
    try:
        module = importlib.import_module(name)
    except ImportError as e:  # an optional dependency (e.g. flax) is missing
        pytest.skip(f"{name} needs {e.name}, which is not installed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = doctest.testmod(
            module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
        )
    assert result.attempted > 0, f"no example found in {name}"
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {name}"


def _public_api():
    """`{dotted name: object}` of every name in the public `__all__`s."""
    api = {}
    for module in (keras_bn_ext, keras_bn_ext.debug, keras_bn_ext.interop,
                   keras_bn_ext.tools, keras_bn_ext.callbacks):
        for name in module.__all__:
            value = getattr(module, name)
            if not inspect.ismodule(value):
                api[f"{module.__name__}.{name}"] = value
    return api


def _members(cls):
    """Public methods and properties a class defines itself, except those of
    a Keras base class (`build`, `call`, ...: Keras documents them)."""
    inherited = {
        name for base in cls.__mro__[1:]
        if not base.__module__.startswith("keras_bn_ext") for name in vars(base)
    }
    for name, value in vars(cls).items():
        if name.startswith("_") or name in inherited:
            continue
        if name in getattr(cls, "__dataclass_fields__", {}):
            continue
        if inspect.isfunction(value) or isinstance(value, property):
            yield name, getattr(cls, name)


def test_every_public_name_has_a_docstring():
    missing = []
    for dotted, value in _public_api().items():
        if not inspect.getdoc(value):
            missing.append(dotted)
        if inspect.isclass(value) and value.__module__.startswith("keras_bn_ext"):
            # getdoc finds an overridden method's documentation in its base.
            missing += [
                f"{dotted}.{name}" for name, member in _members(value)
                if not inspect.getdoc(member)
            ]
    assert not missing, f"public names without a docstring: {missing}"


def test_every_public_name_is_in_the_api_reference():
    pages = "\n".join(p.read_text() for p in (ROOT / "docs" / "api").glob("*.md"))
    documented = set(re.findall(r"^::: ([\w.]+)", pages, re.M))
    missing = [
        dotted for dotted, value in _public_api().items()
        if f"{value.__module__}.{value.__qualname__}" not in documented
    ]
    assert not missing, (
        f"public names missing from docs/api/*.md (add a `::: module.Name` "
        f"line): {missing}"
    )


def test_readme_links_work_outside_github():
    # PyPI and other renderers of the README know nothing of the repository's
    # files: its links are absolute, and those to the site name real pages.
    site = re.search(r"^site_url: (\S+)$", (ROOT / "mkdocs.yml").read_text(), re.M)[1]
    links = re.findall(r"\]\(([^)]+)\)", (ROOT / "README.md").read_text())
    assert links
    relative = [link for link in links if not link.startswith("https://")]
    assert not relative, f"relative links in README.md: {relative}"
    for link in links:
        if link.startswith(site):
            page = link[len(site):].split("#")[0].strip("/")
            assert (ROOT / "docs" / f"{page}.md").exists(), link


@once
def test_mkdocs_build_strict(tmp_path):
    # A broken link, a page left out of the nav or a docstring reference that
    # does not resolve is a warning, and --strict makes it an error.
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict",
         "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    api_page = (tmp_path / "site" / "api" / "layer" / "index.html").read_text()
    assert "virtual_batch_size" in api_page  # generated from the docstrings
