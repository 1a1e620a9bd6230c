"""The project's skeleton keeps its promises: set-up commands, packaging and shipped examples."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirement_lines(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("-")]


def test_test_extra_mirrors_requirements_dev():
    assert PYPROJECT["project"]["optional-dependencies"]["test"] == requirement_lines(
        ROOT / "requirements-dev.txt"
    )
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["dependencies"]["file"] == ["requirements.txt"]


def test_console_script_points_at_a_main_function():
    module, _, func = PYPROJECT["project"]["scripts"]["cnnviz"].partition(":")
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None, f"{module} does not exist"
    assert re.search(rf"^def {func}\(", Path(spec.origin).read_text(), re.MULTILINE)


def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", section, re.DOTALL)
    lines = [line.split("#", 1)[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line]


def test_readme_quick_start_has_exactly_the_two_set_up_commands():
    assert quick_start_commands() == ["bash scripts/run_app.sh", "bash scripts/run_tests.sh"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/run_tests.sh" in ci
    for script in ("scripts/setup.sh", "scripts/run_app.sh", "scripts/run_tests.sh", ".ci/run"):
        text = (ROOT / script).read_text()
        assert "set -euo pipefail" in text, script
        subprocess.run(["bash", "-n", str(ROOT / script)], check=True)


def test_readme_front_matter_is_ready_for_spaces():
    front = (ROOT / "README.md").read_text().split("---\n")[1]
    keys = dict(line.split(":", 1) for line in front.splitlines() if re.match(r"^\w+:", line))
    assert keys["sdk"].strip() == "gradio"
    assert keys["app_file"].strip() == "app.py"
    assert keys["python_version"].strip().strip('"') == "3.11"
    assert re.fullmatch(r"\d+\.\d+\.\d+", keys["sdk_version"].strip())


EXAMPLES = sorted((ROOT / "examples").glob("*.jpg"))


def test_at_least_four_examples_ship_with_their_sources():
    assert len(EXAMPLES) >= 4
    sources = (ROOT / "examples" / "SOURCES.md").read_text()
    readme = (ROOT / "README.md").read_text()
    for path in EXAMPLES:
        assert f"`{path.name}`" in sources, f"{path.name} has no entry in examples/SOURCES.md"
        assert f"examples/{path.name}" in readme, f"{path.name} is not listed in README.md"
        assert path.stat().st_size <= 150_000, f"{path.name} is larger than 150 KB"
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.mode == "RGB" and min(image.size) >= 224


# ---------------------------------------------------------------- setup.sh idempotence

FAKE_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "$(dirname "$0")/../calls.log"
if [[ "${1:-}" == --version ]]; then echo "Python 3.11.7"; fi
exit 0
"""


@pytest.fixture()
def sandbox(tmp_path: Path) -> Path:
    """A copy of the files setup.sh reads, with a fake .venv whose python only logs its calls."""
    for name in ("requirements.txt", "requirements-dev.txt", "pyproject.toml", "scripts/setup.sh"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    return tmp_path


def pip_calls(root: Path, mode: str) -> list[str]:
    log = root / ".venv" / "calls.log"
    log.write_text("")
    env = {"PATH": "/usr/bin:/bin", "CNNVIZ_TORCH": "torch==9.9 torchvision==9.9"}
    subprocess.run(["bash", "scripts/setup.sh", mode], cwd=root, env=env, check=True, capture_output=True)
    return [line for line in log.read_text().splitlines() if line.startswith("-m pip")]


def test_setup_installs_once_and_again_only_when_requirements_change(sandbox: Path):
    first = pip_calls(sandbox, "test")
    assert len(first) == 3
    assert first[0].endswith("torch==9.9 torchvision==9.9")  # torch is pinned before anything else
    assert first[1].endswith("-r requirements-dev.txt") and first[2].endswith("--no-deps -e .")
    assert pip_calls(sandbox, "test") == []
    assert pip_calls(sandbox, "app") == []  # a test install covers the app
    with (sandbox / "requirements.txt").open("a") as f:
        f.write("rich>=13\n")
    app = pip_calls(sandbox, "app")
    assert [call.split()[-1] for call in app] == ["torchvision==9.9", "requirements.txt", "."]
    assert pip_calls(sandbox, "app") == []
    assert len(pip_calls(sandbox, "test")) == 3  # the test stamp is stale too


def test_setup_rejects_an_unknown_mode(sandbox: Path):
    result = subprocess.run(["bash", "scripts/setup.sh", "dev"], cwd=sandbox, capture_output=True, text=True)
    assert result.returncode == 2 and "'app' or 'test'" in result.stderr
