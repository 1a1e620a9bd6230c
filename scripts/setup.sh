#!/usr/bin/env bash
# Create .venv (if missing) and install cnnviz into it, idempotently.
#
#   bash scripts/setup.sh app    # runtime dependencies (requirements.txt), for the app and the CLI
#   bash scripts/setup.sh test   # also the test dependencies (requirements-dev.txt)
#
# A stamp in .venv records a hash of what was installed; when the requirement files, pyproject.toml
# and this script are unchanged, a second run installs nothing and takes about a second.
# Environment: PYTHON (interpreter to build the venv with, default python3.11 or python3),
# CNNVIZ_TORCH (pip arguments that pin torch/torchvision; empty string to let requirements.txt decide).
set -euo pipefail

mode="${1:-app}"
case "$mode" in
app) req_files=(requirements.txt) ;;
test) req_files=(requirements.txt requirements-dev.txt) ;;
*)
    echo "setup.sh: unknown mode '$mode'; expected 'app' or 'test'" >&2
    exit 2
    ;;
esac

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="$root/.venv"

# torch and torchvision first, pinned to the builds this kind of machine offers from its own disk:
# unpinned, pip would pick a newer CUDA build and download several GB.
arch="$(uname -m)"
if [[ -z "${CNNVIZ_TORCH+set}" ]]; then
    case "$(uname -s)-$arch" in
    Linux-x86_64) CNNVIZ_TORCH="torch==2.14.1 torchvision==0.29.1" ;;
    Linux-aarch64) CNNVIZ_TORCH="torch==2.9.1 torchvision==0.24.1" ;;
    *) CNNVIZ_TORCH="" ;;
    esac
fi

pick_python() {
    if [[ -n "${PYTHON:-}" ]]; then
        echo "$PYTHON"
    elif command -v python3.11 >/dev/null 2>&1; then
        echo python3.11
    else
        echo python3
    fi
}

if ! "$venv/bin/python" -c "import sys" >/dev/null 2>&1; then
    py="$(pick_python)"
    if ! "$py" -c "import sys; sys.exit(sys.version_info < (3, 11))"; then
        echo "setup.sh: cnnviz needs Python >= 3.11; '$py' is $("$py" --version 2>&1)." \
            "Set PYTHON=/path/to/python3.11." >&2
        exit 1
    fi
    echo "setup.sh: creating $venv with $("$py" --version 2>&1)"
    rm -rf "$venv"
    "$py" -m venv "$venv"
fi

stamp_for() { # the hash of everything that decides what mode $1 installs
    local files=(requirements.txt pyproject.toml scripts/setup.sh)
    [[ "$1" == test ]] && files+=(requirements-dev.txt)
    {
        echo "$1 $arch torch=[$CNNVIZ_TORCH]"
        "$venv/bin/python" --version
        cat "${files[@]}"
    } | sha256sum | cut -d' ' -f1
}

want="$(stamp_for "$mode")"
for have_mode in "$mode" test; do # a test install also covers the app
    stamp="$venv/.cnnviz-setup-$have_mode"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$(stamp_for "$have_mode")" ]]; then
        echo "setup.sh: .venv is up to date ($have_mode dependencies)"
        exit 0
    fi
done

pip=("$venv/bin/python" -m pip install --disable-pip-version-check --progress-bar off --quiet)
start=$SECONDS
if [[ -n "$CNNVIZ_TORCH" ]]; then
    echo "setup.sh: installing $CNNVIZ_TORCH"
    # shellcheck disable=SC2086  # CNNVIZ_TORCH is a list of pip arguments
    "${pip[@]}" $CNNVIZ_TORCH
fi
echo "setup.sh: installing -r ${req_files[-1]}"
"${pip[@]}" -r "${req_files[-1]}"
"${pip[@]}" --no-deps -e .
echo "$want" >"$venv/.cnnviz-setup-$mode"
echo "setup.sh: done in $((SECONDS - start)) s"
