#!/usr/bin/env bash
# Creates .venv (Python 3.11+) and installs the package with the CPU backends.
# Idempotent: reinstalls only when requirements-ci.txt or pyproject.toml change.
#
# CPU builds everywhere: PyPI's torch for Linux is a CUDA build (several GB),
# so where PyTorch's CPU wheel index answers, pip also looks there, and
# torch==2.13.0 resolves to 2.13.0+cpu. Where it does not answer (a machine
# that reaches only PyPI, or a local wheel store), pip uses its usual sources
# at once instead of retrying an unreachable index.
# TORCH_INDEX_URL picks another index (e.g. .../whl/cu126 for a CUDA build);
# TORCH_INDEX_URL= (empty) uses none.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_INDEX_URL="${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=".venv/.keras_bn_ext-installed"
want="$(cat requirements-ci.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  index=()
  if [ -n "$TORCH_INDEX_URL" ] && .venv/bin/python -c '
import sys, urllib.request
urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=5)
' "$TORCH_INDEX_URL" 2>/dev/null; then
    index=(--extra-index-url "$TORCH_INDEX_URL")
    echo "setup: torch from $TORCH_INDEX_URL"
  fi
  .venv/bin/python -m pip install --quiet --disable-pip-version-check \
    ${index[@]+"${index[@]}"} -r requirements-ci.txt
  # tf-keras (tests/test_tf_keras.py) without its `tensorflow` requirement:
  # tensorflow-cpu above is the same TensorFlow (see requirements-ci.txt).
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
    tf-keras==2.21.0
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
  echo "$want" > "$stamp"
fi
