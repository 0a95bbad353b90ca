#!/usr/bin/env bash
# Set everything up (once) and run the whole test suite plus the linter.
#   scripts/test.sh            the default suite (everything but tests marked slow)
#   scripts/test.sh --slow     also the slow tests (e.g. the demo model's accuracy on 20 fresh phantoms)
# Other arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh --test
export VTK_DEFAULT_OPENGL_WINDOW="${VTK_DEFAULT_OPENGL_WINDOW:-vtkEGLRenderWindow}"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
args=()
if [ "${1:-}" = "--slow" ]; then
  shift
  args=(-m "")
fi
exec .venv/bin/python -m pytest "${args[@]}" "$@"
