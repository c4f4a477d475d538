#!/usr/bin/env bash
# The seed question, answered by the layer itself: bash scripts/demo.sh [--backend NAME]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >&2
exec .venv/bin/python -m keras_bn_ext demo "$@"
