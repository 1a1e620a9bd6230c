"""Fixtures of the batch tests, imported by their modules (not a conftest.py: other test folders
import helpers from the top-level ``conftest``, and a second module of that name would shadow it).

Images for the batch tests: a few made here (modes and sizes the preprocessing must handle), the
shipped examples, and two files no decoder can read."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnviz.batch.work import TIMING_COLUMNS

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
BROKEN = ("broken.jpg", "truncated.jpg")


def make_images(folder: Path) -> Path:
    """examples/*.jpg, three made images (one in a subfolder) and two unreadable files."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(EXAMPLES.glob("*.jpg")):
        shutil.copy(path, folder / path.name)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (150, 200, 4), dtype=np.uint8), "RGBA").save(
        folder / "made_rgba.png"
    )
    Image.fromarray(rng.integers(0, 255, (240, 120), dtype=np.uint8), "L").save(folder / "made_grey.jpg")
    (folder / "sub").mkdir(exist_ok=True)
    ramp = np.linspace(0, 65535, 96 * 64).reshape(96, 64).astype(np.uint16)
    Image.fromarray(ramp).save(folder / "sub" / "made_16bit.png")
    (folder / "broken.jpg").write_bytes(b"this is not an image")
    (folder / "truncated.jpg").write_bytes((EXAMPLES / "chelsea.jpg").read_bytes()[:600])
    return folder


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    return make_images(tmp_path_factory.mktemp("images"))


def comparable(rows: list[dict]) -> list[dict]:
    """Rows without the timing columns and the map bytes (compared apart, as float16 arrays)."""
    return [{k: v for k, v in r.items() if k not in (*TIMING_COLUMNS, "map")} for r in rows]


def assert_same_rows(a: list[dict], b: list[dict], metric_tol: float = 1e-6) -> None:
    """Equal rows: maps to float16 rounding, metrics and probabilities to `metric_tol`."""
    from cnnviz.batch import decode_map

    assert [(r["model"], r["method"], r["image"]) for r in a] == [
        (r["model"], r["method"], r["image"]) for r in b
    ]
    for x, y in zip(a, b, strict=True):
        for key in x:
            if key in TIMING_COLUMNS:
                continue
            if key == "map":
                if x["map"] is None or y["map"] is None:
                    assert x["map"] is None and y["map"] is None, (x["image"], x["method"])
                    continue
                mx = decode_map(x["map"], x["map_shape"]).astype(np.float32)
                my = decode_map(y["map"], y["map_shape"]).astype(np.float32)
                scale = max(float(np.abs(mx).max()), 1e-30)
                np.testing.assert_allclose(
                    mx, my, rtol=2e-3, atol=2e-3 * scale, err_msg=f"{x['image']} {x['method']}"
                )
            elif isinstance(x[key], float):
                assert y[key] == pytest.approx(x[key], rel=metric_tol, abs=metric_tol), (
                    key,
                    x["image"],
                    x["method"],
                )
            elif isinstance(x[key], list) and x[key] and isinstance(x[key][0], float):
                assert y[key] == pytest.approx(x[key], rel=metric_tol, abs=metric_tol), (key, x["image"])
            else:
                assert x[key] == y[key], (key, x["image"], x["method"])


@pytest.fixture(scope="session")
def same_rows():
    """`assert_same_rows`, for the test modules (conftest helpers are reached through fixtures)."""
    return assert_same_rows
