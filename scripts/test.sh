#!/usr/bin/env bash
# Runs the whole test suite once per Keras backend, each in its own process.
# Fails if any backend fails or collects no test (pytest exit code 5).
# Extra arguments go to pytest, e.g. bash scripts/test.sh -k masks
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
status=0
summary=""
backends=$(.venv/bin/python -c "import runpy; print(*runpy.run_path('keras_bn_ext/backend/supported.py')['BACKENDS'])")
for backend in $backends; do
  echo "=== KERAS_BACKEND=$backend ==="
  start=$(date +%s)
  KERAS_BACKEND=$backend TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python -m pytest tests "$@"
  code=$?
  took=$(( $(date +%s) - start ))
  case $code in
    0) result="passed" ;;
    5) result="FAILED: no test collected (set-up error)"; status=1 ;;
    *) result="FAILED (pytest exit $code)"; status=1 ;;
  esac
  summary+="$backend: $result in ${took}s"$'\n'
done
echo "=== summary ==="
printf "%s" "$summary"
exit $status
