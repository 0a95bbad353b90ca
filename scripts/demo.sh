#!/usr/bin/env bash
# Set everything up (once) and run the demo: segment a synthetic brain-tumour case with the bundled model.
# Extra arguments go to `cldl demo` (e.g. --out DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
exec .venv/bin/cldl demo "$@"
