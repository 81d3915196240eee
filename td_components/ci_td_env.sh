#!/usr/bin/env bash
# Run the TouchDesigner-side tests in an environment like TD's own Python:
# Python 3.11, numpy 1.26, pyzmq, and nothing else (no pytest, no torch, bridge not installed;
# the tests use bridge/transport's numpy+zmq+stdlib publisher from the source tree).
# Usage: td_components/ci_td_env.sh [venv_dir]   (default /tmp/stepx-td-venv; reused if present)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$(realpath -m "${1:-/tmp/stepx-td-venv}")"
PY="${STEPX_TD_PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"need Python 3.11 (TouchDesigner), got {sys.version}"'
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "numpy==1.26.*" pyzmq
fi
"$VENV/bin/python" -I - <<'PYEOF'  # -I: the repo's own egg-info in the cwd is not an installed package
import importlib.metadata as md, numpy, sys
extra = sorted(d.metadata["Name"].lower() for d in md.distributions()) 
allowed = {"numpy", "pyzmq", "pip", "setuptools", "wheel"}
assert numpy.__version__.startswith("1.26."), numpy.__version__
assert set(extra) <= allowed, f"TD-like venv holds more than numpy+pyzmq: {extra}"
print(f"TD-like env: Python {sys.version.split()[0]}, numpy {numpy.__version__}, packages {extra}")
PYEOF
cd "$ROOT/tests/td"
exec env PYTHONPATH="$ROOT:$ROOT/td_components" PYTHONDONTWRITEBYTECODE=1 \
  "$VENV/bin/python" -m unittest discover -s . -p 'test_*.py' -v
