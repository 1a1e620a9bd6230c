#!/usr/bin/env bash
# Install what the app needs (first run only) and start it: bash scripts/run_app.sh [app.py arguments]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh app
export GRADIO_ANALYTICS_ENABLED="${GRADIO_ANALYTICS_ENABLED:-False}"
exec .venv/bin/python app.py "$@"
