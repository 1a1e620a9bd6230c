"""Ray mode against local mode: `cnnviz batch --ray` gives the local rows, `cnnviz sweep --ray` the
local pool's CSV rows. One local Ray (2 CPUs) serves the whole module: starting one is slow, so
the sweep's Ray test lives here too rather than in tests/sweep/."""

from __future__ import annotations

import mmap
import os
import signal
from pathlib import Path

import batch_fixtures
import pytest
import torch

from cnnviz.batch import list_items, read_results, run_batch
from cnnviz.cli import main
from cnnviz.raytools import worker_env
from cnnviz.sweep import Limits, run_sweep
from cnnviz.sweep.table import read_rows

# the folder's fixtures (see batch_fixtures.py for why they are not in a conftest.py)
image_dir = batch_fixtures.image_dir
same_rows = batch_fixtures.same_rows

# The module's Ray jobs run in the first test's set-up: 8 to 9 minutes on a loaded 2-core machine,
# close to the suite's 600 s default, so the module gets more.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

MODELS = ["test_resnet", "test_efficientnet"]
METHODS = ("cam", "grad_cam", "guided_backprop")


@pytest.fixture(scope="module")
def ray_session():
    import ray

    env = worker_env()  # this checkout first on the workers' path, and this folder for fake_probe
    env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], str(Path(__file__).parent)])
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", runtime_env={"env_vars": env})
    try:
        yield ray
    finally:
        ray.shutdown()


METRICS = ("deletion", "average_drop", "pointing_game")


def _run(images, out, **kwargs):
    kwargs = {"metrics": METRICS, "metric_params": {"steps": 4}, **kwargs}
    models = kwargs.pop("models", MODELS)
    return run_batch(images, models, METHODS, out, weights="random", batch_size=3, **kwargs)


def _listing(image_dir: Path, folder: Path) -> str:
    """Every image of the folder, two of them with a box (for the pointing game)."""
    boxes = {"chelsea.jpg": "60 20 300 280", "made_rgba.png": "10 10 120 100"}
    lines = ["path,box"] + [f"{p},{boxes.get(p.name, '')}" for p in sorted(image_dir.rglob("*.*"))]
    path = folder / "listing.csv"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def jobs(ray_session, image_dir, tmp_path_factory):
    """The same job three ways: all local; all on Ray; begun locally (3 images, one model) and
    finished on Ray. Each Ray run is one Ray Data execution per model."""
    root = tmp_path_factory.mktemp("jobs")
    images = [_listing(image_dir, root)]
    local = _run(images, root / "local", workers=1)
    ray = _run(images, root / "ray", use_ray=True, progress=False)
    first = [
        i for i in list_items(images) if Path(i.path).name in ("chelsea.jpg", "coffee.jpg", "rocket.jpg")
    ]
    _run(first, root / "mixed", models=MODELS[:1])
    mixed = _run(images, root / "mixed", use_ray=True, progress=False)
    return local, ray, mixed


def test_ray_mode_gives_the_local_rows(jobs, same_rows):
    local, ray, _ = jobs
    assert (local.mode, ray.mode) == ("local", "ray")
    assert ray.rows == local.rows == 9 * len(MODELS) * len(METHODS) and ray.written == ray.rows
    parts = list((ray.out / "rows").glob("*.parquet"))
    assert parts and not any(p.name.startswith("part-") for p in parts)  # written by Ray's Parquet sink
    local_rows = read_results(local.out).to_pylist()
    same_rows(local_rows, read_results(ray.out).to_pylist())  # metrics to 1e-6
    pointed = [r for r in local_rows if r["metric_pointing_game"] is not None]
    assert {Path(r["image"]).name for r in pointed} == {"chelsea.jpg", "made_rgba.png"}
    assert all(r["metric_deletion"] is not None for r in local_rows if r["status"] == "ok")


def test_unreadable_images_are_recorded_and_skipped_on_ray(jobs):
    _, ray, _ = jobs
    rows = read_results(ray.out).to_pylist()
    errors = [r for r in rows if r["status"] == "error"]
    assert sorted({Path(r["image"]).name for r in errors}) == ["broken.jpg", "truncated.jpg"]
    assert len(errors) == ray.errors == 2 * len(MODELS) * len(METHODS)
    assert all(r["error"].startswith("cannot read the image: ") for r in errors)
    assert sum(r["status"] == "ok" for r in rows) == 7 * len(MODELS) * len(METHODS)


def test_ray_finishes_a_job_that_local_mode_began(jobs, same_rows):
    local, _, mixed = jobs
    assert mixed.passes == 9 * len(MODELS) - 3  # the 3 images done locally were not redone
    same_rows(read_results(local.out).to_pylist(), read_results(mixed.out).to_pylist())


def test_ray_address_selects_ray_mode_and_a_finished_job_submits_nothing(
    jobs, image_dir, monkeypatch, capsys
):
    _, ray, _ = jobs
    monkeypatch.setenv("RAY_ADDRESS", "auto")  # the module's session is reused
    argv = ["batch", _listing(image_dir, ray.out.parent), "--models", ",".join(MODELS)]
    argv += ["--methods", ",".join(METHODS), "--metrics", ",".join(METRICS), "--metric-param", "steps=4"]
    code = main([*argv, "--weights", "random", "--out", str(ray.out), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and "0 new rows (0 image x model passes" in out and "ray mode" in out


TIMING = ("t_build", "t_inspect", "t_explain", "t_total", "peak_rss_mb")


def test_sweep_on_ray_gives_the_local_pool_rows(ray_session, tmp_path, capsys):
    names = ["test_resnet", "test_efficientnet", "test_vit", "test_convnext"]
    limits = Limits(timeout=300, mem_gb=4, jobs=2)  # generous: a busy 2-core machine timed one out
    run_sweep(names=names, out=tmp_path / "local.csv", limits=limits, summary=None)
    # The command a user types, on the module's Ray session (as RAY_ADDRESS would select a cluster).
    argv = ["sweep", ",".join(names), "--ray", "--out", str(tmp_path / "ray.csv"), "--timeout", "300"]
    assert main([*argv, "--mem-gb", "4", "--quiet"]) == 0
    assert "4 models" in (tmp_path / "ray.md").read_text()
    local, ray = read_rows(tmp_path / "local.csv"), read_rows(tmp_path / "ray.csv")
    assert [r["name"] for r in ray] == sorted(names)
    assert all(r["grad_cam"] == "ok" for r in ray)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]  # noqa: E731
    assert strip(ray) == strip(local)


def fake_probe(name: str, small: int, dtype: torch.dtype) -> dict:
    """Runs in the model's process under a Ray worker: 'crash' dies by SIGKILL, 'greedy' maps
    2 GiB (MemoryError under a lower cap), others succeed."""
    if name == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    if name == "greedy":
        try:
            mmap.mmap(-1, 2 * 2**30).close()
        except OSError as exc:
            raise MemoryError(f"cannot map 2 GiB: {exc}") from exc
    return {"name": name, "family": "fake", "cam": "ok", "cam_note": ""}


def test_sweep_on_ray_reports_a_crash_and_a_model_too_big_for_any_node(ray_session, tmp_path):
    from cnnviz.sweep.ray_pool import run_on_ray
    from cnnviz.sweep.runner import Plan

    rows = []
    plans = [
        Plan("crash", "float32", 4.0, 60.0, False, 1, need_gb=0.5),
        Plan("fine", "float32", 4.0, 60.0, False, 1, need_gb=0.5),
        Plan("huge", "float32", 4.0, 60.0, False, 1, need_gb=10_000.0),
        Plan("greedy", "float32", 1.75, 60.0, False, 1, need_gb=0.5),
    ]
    run_on_ray(plans, 64, fake_probe, ["cam"], rows.append, Limits(60, 1.75, 4, 1))
    by_name = {r["name"]: r for r in rows}
    assert len(rows) == 4 and by_name["fine"]["cam"] == "ok"
    # Its cap was already --big-mem-gb: no rerun.
    crash = by_name["crash"]
    assert crash["cam"] == "failed" and crash["error"].startswith("crashed: killed by SIGKILL")
    assert "more than any Ray node offers" in by_name["huge"]["error"]
    # Out of its 1.75 GiB: submitted again under --big-mem-gb 4, which holds it.
    assert by_name["greedy"]["cam"] == "ok"
    assert by_name["greedy"]["error"].startswith("ran out of the 1.75 GiB cap (probe raised MemoryError")
