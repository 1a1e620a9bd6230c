#!/usr/bin/env bash
# Install what the tests need (first run only), then lint and run the whole suite.
#   bash scripts/run_tests.sh [pytest arguments, e.g. -x -k render]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh test

# The browser test drives Debian's Chromium (Playwright's own browser download cannot work offline).
if [[ ! -x /usr/bin/chromium ]]; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "run_tests.sh: installing Debian's chromium for the browser test"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq chromium fonts-dejavu-core </dev/null >/dev/null
    else
        echo "run_tests.sh: WARNING: /usr/bin/chromium is missing and cannot be installed here" \
            "(needs root and apt-get); the browser test will be skipped." >&2
    fi
fi

# Tests never reach the Hub: models use random weights, examples ship in the repo.
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export GRADIO_ANALYTICS_ENABLED="${GRADIO_ANALYTICS_ENABLED:-False}"
export MPLBACKEND="${MPLBACKEND:-Agg}"
# Two pytest-xdist workers with one torch thread each fill the two cores; two threads per worker
# oversubscribe them (test_engine.py ran 4x slower that way on a loaded machine).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest -n 2 "$@"
