#!/usr/bin/env bash
# Install the package as users do: build the wheel, install it with extras into a fresh venv OUTSIDE
# the checkout, and run `stepx record` (both embedded checkpoints), `stepx preview --out x.mp4` and
# `stepx doctor` from there, so nothing can come from the source tree (shaders, tokenizer, both
# shapes checkpoints are package data; shapes-free is assembled from its own UNet and text encoder
# and the default folder's VAE, tokenizer and scheduler).
# Usage: .ci/wheel-smoke.sh [python]   (torch==2.13.0 is installed first: pip reuses the cached wheel)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${1:-python3}"
TORCH="${TORCH:-torch==2.13.0}"
WORK="$(mktemp -d /tmp/stepx-wheel.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
echo "wheel-smoke: building in $WORK"
"$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w "$WORK/dist" "$ROOT" 2>/dev/null \
  || "$PY" -m pip wheel --quiet --no-deps -w "$WORK/dist" "$ROOT"
WHEEL="$(ls "$WORK"/dist/stepx_bridge-*.whl)"
"$PY" -m venv "$WORK/venv"
V="$WORK/venv/bin"
"$V/python" -m pip install --quiet --disable-pip-version-check "$TORCH"  # first, so the extras' resolver keeps it
"$V/python" -m pip install --quiet --disable-pip-version-check "$WHEEL[preview,mp4]"
cd "$WORK"  # nothing of the checkout on sys.path from here on
"$V/python" -c 'import bridge, sys; assert "/stepx-wheel." in bridge.__file__ and "site-packages" in bridge.__file__, bridge.__file__'
"$V/stepx" record "a red circle above a blue square" --seed 3 --steps 8 -o run.stepx
"$V/stepx" record "a red circle above a blue square" --seed 3 --steps 8 --model shapes-free -o free.stepx
"$V/python" -c 'from bridge.models.loading import load_pipeline; p, n = load_pipeline("shapes-free", device="cpu"); assert n == "stepx-shapes-free" and p.text_encoder.config.local_window == 1, n'
"$V/stepx" preview --trace run.stepx --out x.mp4 --frames 24 --size 256x256 --particles 8192
test -s x.mp4
"$V/stepx" doctor
echo "wheel-smoke: ok ($(basename "$WHEEL"))"
