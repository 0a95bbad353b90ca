#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install cldl into it.
#   scripts/setup_env.sh          runtime (torch, numpy, SimpleITK, nibabel, vtk for snapshots, nilearn's atlas)
#   scripts/setup_env.sh --test   plus the test tools (pytest, medpy, surface-distance, scipy, ruff) and, with apt
#                                 as root, Colin27 (Debian mricron-data) for Testing/test_prepare.py
# Idempotent: a stamp records what was installed; nothing is reinstalled unless pyproject.toml or
# constraints.txt changed. torch is pinned through constraints.txt (never let pip choose another build).
set -euo pipefail
cd "$(dirname "$0")/.."

extras="render,anatomy"
[ "${1:-}" = "--test" ] && extras="render,anatomy,test"

python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "error: Python >= 3.10 is required (set PYTHON=/path/to/python3.x)" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $("$python" --version)" >&2
  "$python" -m venv .venv
fi

stamp=".venv/.cldl-installed-$extras"
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "installing cldl[$extras] into .venv (first run: about a minute)" >&2
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt torch==2.13.0 -e ".[$extras]"
# cldl prepare's brain extraction: deepbet's TorchScript models (17 MB, in its wheel); --no-deps keeps out the GUI
# toolkit and pandas it declares, which the extraction does not use
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -c constraints.txt deepbet
if [ "${1:-}" = "--test" ] && [ ! -f /usr/share/mricron/templates/ch2.nii.gz ]; then
  # Colin27 with and without its skull: test data of Testing/test_prepare.py (never used for training)
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y -q mricron-data >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q mricron-data >/dev/null; }
  else
    echo "note: Testing/test_prepare.py needs Colin27: sudo apt-get install mricron-data" >&2
  fi
fi
echo "$want" > "$stamp"
