#!/usr/bin/env bash
# Set up napari-dinoloc in ./.venv (Python 3.11).  --dev adds what the tests need.
# Idempotent: a second run only checks that everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
dev=0
[ "${1:-}" = "--dev" ] && dev=1

python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || { echo "setup: $python not found; install Python 3.11 (or set PYTHON=...)" >&2; exit 1; }

# System libraries Qt needs on a bare Linux, and an X server for the GUI tests.
if [ "$(uname -s)" = Linux ] && command -v apt-get >/dev/null; then
  packages="libgl1 libegl1 libxkbcommon-x11-0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxcb-xinerama0 libxcb-cursor0 libxcb-shape0 libfontconfig1 libdbus-1-3"
  [ $dev = 1 ] && packages="$packages xvfb xauth"
  missing=$(for p in $packages; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
  if [ -n "$missing" ]; then
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  fi
fi

[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
extras="all"
[ $dev = 1 ] && extras="all,testing"
.venv/bin/python -m pip install -q -c constraints-dev.txt -e ".[$extras]"
