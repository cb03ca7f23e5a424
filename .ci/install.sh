#!/usr/bin/env bash
# Installs everything tomeray needs on a fresh Debian/Ubuntu machine: the opencv-doc sample
# media (apt), a virtual environment in .venv, and tomeray with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
if [ ! -f /usr/share/doc/opencv-doc/examples/data/vtest.avi ]; then
  $SUDO apt-get update -qq
  $SUDO DEBIAN_FRONTEND=noninteractive apt-get install -y -qq opencv-doc python3-venv >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
