#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages napari needs to draw without a screen
# (Xvfb + Mesa OpenGL + the xcb libraries Qt 6 loads) and Python's venv module.
# Skips what is present.
set -euo pipefail
pkgs=(xvfb libgl1-mesa-dri libegl1 libglib2.0-0 libfontconfig1 libdbus-1-3 libxkbcommon-x11-0
      libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0
      libxcb-render-util0 libxcb-shape0 libxcb-xinerama0 libxcb-xfixes0 libxcb-xkb1)
# `python3 -m venv` needs ensurepip, which Debian ships separately (python3-venv);
# a python3 that is not Debian's (pyenv, conda) has it already.
if command -v apt-get >/dev/null 2>&1 && ! python3 -c "import ensurepip" 2>/dev/null; then
  pkgs+=(python3-venv)
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-system-deps: no apt-get here; install Xvfb and Mesa OpenGL with your package manager" >&2
  exit 0
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
