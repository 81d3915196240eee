#!/usr/bin/env bash
# Debian packages the tests use for real peers: liblo's oscdump (OSC), Mesa's EGL llvmpipe
# (headless OpenGL), glslang's glslangValidator (compiles the TouchDesigner shaders under
# TouchDesigner's injected preamble, tests/td/test_td_glsl.py), and chromium + chromium-driver
# (the explorer's browser tests, driven by Selenium; no browser is downloaded at test time).
# Installs what is missing when run as root; otherwise says what to install.
set -euo pipefail
pkgs=(liblo-tools libegl1 libegl-mesa0 libgl1-mesa-dri glslang-tools chromium chromium-driver)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  for i in 1 2 3; do
    (apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}") && exit 0
    echo "apt-get failed (try $i), retrying in 10 s" >&2; sleep 10
  done
  exit 1
fi
echo "missing Debian packages: ${missing[*]} (install them: sudo apt-get install ${missing[*]})" >&2
