#!/usr/bin/env bash
# Installs everything tomeray needs on a fresh Debian/Ubuntu machine: the opencv-doc sample media,
# python3-venv, Chromium with its WebDriver for the search page's browser tests and COLMAP (apt, only
# when missing), a virtual environment in .venv, and tomeray with its test extras (pip). Safe to run
# again: it only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi

apt_packages=()
[ -f /usr/share/doc/opencv-doc/examples/data/vtest.avi ] || apt_packages+=(opencv-doc)
"$PYTHON" -c "import ensurepip, venv" 2>/dev/null || apt_packages+=(python3-venv)
command -v chromium >/dev/null || apt_packages+=(chromium)
command -v chromedriver >/dev/null || apt_packages+=(chromium-driver)
command -v colmap >/dev/null || apt_packages+=(colmap)  # tests read the binary export with model_analyzer
if [ ${#apt_packages[@]} -gt 0 ]; then
  echo "installing with apt-get: ${apt_packages[*]}"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_packages[@]}" >/dev/null
fi

# PyTorch's Linux wheels bundle CUDA's libraries: the environment takes about 6.6 GB. Say so before
# pip runs out of room halfway through.
need_gb=7
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  free_gb=$(df -Pk . | awk 'NR == 2 {print int($4 / 1048576)}')
  if [ "$free_gb" -lt "$need_gb" ]; then
    echo "error: installing tomeray needs about $need_gb GB free under $(pwd) (PyTorch and its CUDA" \
         "libraries take 6.6 GB of it); only $free_gb GB is free. Free some space and run this again." >&2
    exit 1
  fi
fi

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
echo "tomeray installed in $(pwd)/.venv"
