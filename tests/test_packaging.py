"""The package as users install it: the wheel's contents and metadata, and
the type check of the public API (mypy, configured in pyproject.toml).

These checks do not depend on the Keras backend, so they run once, under
KERAS_BACKEND=jax (scripts/test.sh runs the suite once per backend)."""

import email.parser
import pathlib
import shutil
import subprocess
import sys
import zipfile

import keras
import pytest

import keras_bn_ext

ROOT = pathlib.Path(__file__).resolve().parents[1]

once = pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="backend-independent check: runs once, under KERAS_BACKEND=jax",
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    # Built from a copy, so the build leaves nothing in the work tree;
    # offline: the build backend is the venv's setuptools.
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "keras_bn_ext", source / "keras_bn_ext",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--quiet", "--disable-pip-version-check", "-w", str(tmp / "dist"), str(source)],
        check=True, capture_output=True, text=True,
    )
    (path,) = (tmp / "dist").glob("keras_bn_ext-*.whl")
    return path


def _metadata(wheel):
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return email.parser.Parser().parsestr(archive.read(name).decode())


@once
def test_wheel_holds_license_and_py_typed(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert "keras_bn_ext/py.typed" in names
        (license_name,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        text = archive.read(license_name).decode()
    assert text == (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text


@once
def test_wheel_metadata_spdx_license_and_single_version(wheel):
    metadata = _metadata(wheel)
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata["License"] is None  # the deprecated free-text field
    assert metadata.get_all("License-File") == ["LICENSE"]
    # One version: _version.py, read by the build, the package and the CLI.
    assert metadata["Version"] == keras_bn_ext.__version__
    assert wheel.name.startswith(f"keras_bn_ext-{keras_bn_ext.__version__}-")
    classifiers = metadata.get_all("Classifier")
    assert "Typing :: Typed" in classifiers
    urls = dict(u.split(", ", 1) for u in metadata.get_all("Project-URL"))
    assert {"Documentation", "Repository", "Issues", "Changelog"} <= set(urls)


@once
def test_mypy_passes_on_the_package():
    # [tool.mypy] in pyproject.toml: files = keras_bn_ext, backends untyped.
    result = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues found" in result.stdout


@once
def test_mypy_sees_the_public_hints(tmp_path):
    # Not vacuous: a wrong use of the typed API is an error for the user's
    # type checker (py.typed), and the hints are not all `Any`.
    user_code = tmp_path / "user_code.py"
    user_code.write_text(
        "import keras_bn_ext\n"
        "from keras_bn_ext.debug import StatsRecord\n"
        "keras_bn_ext.decide_branch(True, True, mode=3)\n"
        "def f(r: StatsRecord) -> int:\n"
        "    return r.layer\n"
        "keras_bn_ext.diagnose(None, None, steps='a')\n"
        "keras_bn_ext.BatchNormalization().add_debug_hook(5)\n"
        "keras_bn_ext.interop.from_flax(None, name=3)\n"
        "n: int = keras_bn_ext.BatchNormalization().explain()\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
         str(user_code)],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'Argument "mode" to "decide_branch" has incompatible type "int"' in result.stdout
    assert 'Incompatible return value type (got "str", expected "int")' in result.stdout
    assert 'Argument "steps" to "diagnose" has incompatible type "str"' in result.stdout
    assert 'Argument 1 to "add_debug_hook" of "BatchNormalization"' in result.stdout
    assert 'Argument "name" to "from_flax" has incompatible type "int"' in result.stdout
    assert 'Incompatible types in assignment (expression has type "str"' in result.stdout
