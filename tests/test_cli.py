"""The command line: --help, inspect, --backend, one-line errors."""

import os
import subprocess
import sys
import zipfile

import keras
import numpy as np
from helpers import BACKEND

import keras_bn_ext
from keras_bn_ext.cli import main

OTHER_BACKEND = {"tensorflow": "jax", "jax": "torch", "torch": "tensorflow"}[BACKEND]


def _cli(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "keras_bn_ext", *args],
                          capture_output=True, text=True, env=env, timeout=120)


def _saved_model(tmp_path):
    model = keras.Sequential([
        keras.Input((3,)), keras.layers.Dense(4),
        keras_bn_ext.BatchNormalization(track_updates=True, name="ours"),
        keras.layers.BatchNormalization(name="theirs"),
    ])
    model(np.ones((4, 3), "float32"), training=True)
    path = str(tmp_path / "model.keras")
    model.save(path)
    return path


def test_help_lists_the_commands():
    result = _cli("--help")
    assert result.returncode == 0
    assert "demo" in result.stdout and "inspect" in result.stdout
    assert "--backend" in result.stdout


def test_inspect_a_saved_model_on_another_backend(tmp_path):
    result = _cli("--backend", OTHER_BACKEND, "inspect", _saved_model(tmp_path))
    assert result.returncode == 0, result.stderr
    assert f"{OTHER_BACKEND} backend" in result.stdout
    assert "BatchNormalization layers of model" in result.stdout
    rows = {line.split()[0]: line for line in result.stdout.splitlines()
            if line.strip().startswith(("ours ", "theirs "))}
    assert "keras_bn_ext" in rows["ours"] and " 1 " in rows["ours"]  # 1 update
    assert "never_updated" not in rows["theirs"]


def test_a_text_file_named_keras_is_a_one_line_error(tmp_path):
    path = tmp_path / "x.keras"
    path.write_text("not a model")
    result = _cli("inspect", str(path))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [e for e in result.stderr.splitlines() if e.startswith("keras-bn-ext:")]
    assert errors == [f"keras-bn-ext: error: {path} is not a Keras model file "
                      "(a .keras file is a zip archive saved by model.save())."]
    assert result.stdout == ""


def test_bad_paths_give_one_line_errors(tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    archive = tmp_path / "other.keras"
    with zipfile.ZipFile(archive, "w") as f:
        f.writestr("readme.txt", "a zip, but no model")
    cases = {
        str(tmp_path / "missing.keras"): "no such file",
        str(tmp_path): "is a directory",
        str(text): "is not a loadable Keras model",
        str(archive): "is not a loadable Keras model",
    }
    for path, message in cases.items():
        assert main(["inspect", path]) == 1
        captured = capsys.readouterr()
        assert captured.out == ""
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("keras-bn-ext: error: ")
        assert message in lines[0]


def test_inspect_in_process_prints_the_report(tmp_path, capsys):
    assert main(["inspect", _saved_model(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "2 (1 keras, 1 keras_bn_ext)" in out


# A backend "not installed": a module finder that hides it (and everything
# under it) from imports and from importlib.util.find_spec.
_HIDE_BACKENDS = """
import sys
from importlib.machinery import PathFinder
HIDDEN = {hidden!r}
class _HidingPathFinder:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            return None
        return PathFinder.find_spec(name, path, target)
    def invalidate_caches(self):
        PathFinder.invalidate_caches()
sys.meta_path[:] = [_HidingPathFinder() if f is PathFinder else f for f in sys.meta_path]
"""


def _cli_with_only(backend, *args, tmp_path):
    hidden = [b for b in ("tensorflow", "jax", "torch") if b != backend]
    (tmp_path / "sitecustomize.py").write_text(_HIDE_BACKENDS.format(hidden=hidden))
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env.update(PYTHONPATH=str(tmp_path), KERAS_HOME=str(tmp_path / "keras_home"))
    return subprocess.run([sys.executable, "-m", "keras_bn_ext", *args],
                          capture_output=True, text=True, env=env, timeout=120)


def test_help_and_version_import_no_backend():
    env = dict(os.environ, PYTHONPROFILEIMPORTTIME="1")
    for args in (["--help"], ["--version"]):
        result = subprocess.run([sys.executable, "-m", "keras_bn_ext", *args],
                                capture_output=True, text=True, env=env, timeout=60)
        assert result.returncode == 0, result.stderr
        imported = {line.split("|")[-1].strip()
                    for line in result.stderr.splitlines() if "|" in line}
        assert not imported & {"keras", "tensorflow", "jax", "torch"}, args
    assert result.stdout.strip() == f"keras-bn-ext {keras_bn_ext.__version__}"


def test_version_has_one_source():
    from importlib.metadata import version

    assert version("keras-bn-ext") == keras_bn_ext.__version__


def test_cli_works_with_only_this_backend_installed(tmp_path):
    # No --backend, no $KERAS_BACKEND, no keras.json: it picks the installed one.
    path = _saved_model(tmp_path)
    result = _cli_with_only(BACKEND, "inspect", path, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"{BACKEND} backend" in result.stdout
    assert result.stderr == ""  # no TensorFlow start-up lines either
    missing = OTHER_BACKEND
    result = _cli_with_only(BACKEND, "--backend", missing, "inspect", path,
                            tmp_path=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"keras-bn-ext: error: the {missing} backend is not installed (pip "
        f"install 'keras-bn-ext[{missing}]'). Received: --backend={missing}")


def test_keras_json_backend_is_a_preference(tmp_path):
    # Keras writes keras.json (backend "tensorflow") on its first import:
    # an installed backend named there is used, a missing one is skipped.
    home = tmp_path / "keras_home"
    home.mkdir()
    path = _saved_model(tmp_path)
    for configured in (BACKEND, OTHER_BACKEND):
        (home / "keras.json").write_text('{"backend": "%s"}' % configured)
        result = _cli_with_only(BACKEND, "inspect", path, tmp_path=tmp_path)
        assert result.returncode == 0, result.stderr
        assert f"{BACKEND} backend" in result.stdout


def test_an_explicit_missing_backend_is_a_one_line_error(tmp_path):
    env_backend = OTHER_BACKEND
    hidden = [b for b in ("tensorflow", "jax", "torch") if b != BACKEND]
    (tmp_path / "sitecustomize.py").write_text(_HIDE_BACKENDS.format(hidden=hidden))
    env = dict(os.environ, PYTHONPATH=str(tmp_path), KERAS_BACKEND=env_backend)
    result = subprocess.run([sys.executable, "-m", "keras_bn_ext", "demo"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().endswith(f"Received: KERAS_BACKEND={env_backend}")


def _cli_into_closed_pipe(*args, unbuffered):
    """The command with its stdout piped to a reader that has already left
    (as `| head -1` does once it has its line). Closing the read end before
    the command starts makes its first write fail every time, whether it
    writes line by line (PYTHONUNBUFFERED) or once at exit."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND=BACKEND)
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    process = subprocess.Popen([sys.executable, "-m", "keras_bn_ext", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env)
    process.stdout.close()
    try:
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    return process.returncode, stderr


def test_a_reader_that_leaves_early_ends_every_command_quietly(tmp_path):
    path = _saved_model(tmp_path)
    data = str(tmp_path / "x.npy")
    np.save(data, np.random.default_rng(0).normal(size=(8, 3)).astype("float32"))
    cases = [
        (["--version"], False),
        (["inspect", path], False),
        (["inspect", path], True),
        (["diagnose", path, data, "--batch-size", "4"], True),
        (["diagnose", path, data, "--json"], False),
        (["demo"], True),
    ]
    for args, unbuffered in cases:
        status, stderr = _cli_into_closed_pipe(*args, unbuffered=unbuffered)
        assert "Traceback" not in stderr, (args, stderr)
        assert "BrokenPipeError" not in stderr, (args, stderr)  # "Exception ignored"
        assert status == 141, (args, unbuffered, status, stderr)  # 128 + SIGPIPE
