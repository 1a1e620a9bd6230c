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
# One torch thread: the tests run small models, where a second thread gains little, and on a busy
# machine torch's spinning threads made tests/engine/test_explain.py 6-10x slower (16 s against 157 s).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

# Lint first, but run the tests even when lint fails, so one run reports both.
lint=0
.venv/bin/ruff check . || lint=1
.venv/bin/ruff format --check . || lint=1
.venv/bin/mypy || lint=1
# Serial: with 2 cores, pytest-xdist's `-n 2` measured no gain (each worker imports torch, timm and
# gradio and builds its own fixtures: 74 CPU-s against 52 for the whole suite). Pass `-n 2` to try it.
tests=0
.venv/bin/python -m pytest "$@" || tests=$?
if [[ "$lint" != 0 ]]; then
    echo "run_tests.sh: ruff or mypy found problems (see above)" >&2
fi
if [[ "$tests" != 0 ]]; then
    exit "$tests"
fi
exit "$lint"
