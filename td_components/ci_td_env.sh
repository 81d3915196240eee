#!/usr/bin/env bash
# Run the TouchDesigner-side tests in an environment like TD's own Python:
# Python 3.11, numpy 1.26, pyzmq, and nothing else (no pytest, no torch, bridge not installed;
# the tests use bridge/transport's numpy+zmq+stdlib publisher from the source tree).
# Usage: td_components/ci_td_env.sh [venv_dir]   (default /tmp/stepx-td-venv; reused if present)
# Python: $STEPX_TD_PYTHON, else python3.11 (TouchDesigner's), else python3; one other than 3.11 is
# used when it can take TD's numpy 1.26 pin (3.9 to 3.12), and the script says so.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$(realpath -m "${1:-/tmp/stepx-td-venv}")"
PY="${STEPX_TD_PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
VER="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
case "$VER" in
  3.11) ;;
  3.9|3.10|3.12) echo "ci_td_env: no Python 3.11 here: running the TouchDesigner checks on Python $VER with TD's numpy 1.26 pin" >&2 ;;
  *) echo "ci_td_env: the TouchDesigner checks need Python 3.11 (TD's), or 3.9-3.12 for its numpy 1.26 pin; found $VER." \
          "Install python3.11 (apt-get install python3.11-venv, pyenv install 3.11, uv python install 3.11) or set STEPX_TD_PYTHON" >&2
     exit 1 ;;
esac
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
