"""`cnnviz batch`, local mode: inputs, rows that agree with plain `explain` calls, unreadable images,
resuming, the summary and the command line. Ray mode is in test_batch_ray.py."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import batch_fixtures
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import cnnviz
from cnnviz import zoo
from cnnviz.batch import (
    InputError,
    JobMismatchError,
    decode_map,
    list_items,
    read_results,
    run_batch,
)
from cnnviz.batch.summary import mean_interval, t975
from cnnviz.cli import main

# the folder's fixtures (see batch_fixtures.py for why they are not in a conftest.py)
image_dir = batch_fixtures.image_dir
same_rows = batch_fixtures.same_rows

MODEL = "test_resnet"
METHODS = ("cam", "grad_cam", "vanilla_gradient", "guided_backprop")


def _run(images, out, **kwargs):
    kwargs = {"weights": "random", "batch_size": 3, "workers": 1, **kwargs}
    return run_batch(images, kwargs.pop("models", [MODEL]), kwargs.pop("methods", METHODS), out, **kwargs)


# ---------------------------------------------------------------- inputs


def test_folders_globs_and_listings(image_dir, tmp_path):
    items = list_items([str(image_dir)])
    names = [Path(i.path).name for i in items]
    assert "made_16bit.png" in names  # folders are searched recursively
    assert names.count("chelsea.jpg") == 1 and len(items) == 9
    globbed = list_items([str(image_dir / "*.png")])
    assert [Path(i.path).name for i in globbed] == ["made_rgba.png"]
    listing = tmp_path / "list.csv"
    listing.write_text(
        "path,target,box\n"
        f"{image_dir / 'chelsea.jpg'},285,10 20 200 210\n"
        f"{image_dir / 'chelsea.jpg'},281,\n"
        "../relative.jpg,,\n"
    )
    items = list_items([str(listing)])
    assert [i.image for i in items] == [
        str(image_dir / "chelsea.jpg"),
        f"{image_dir / 'chelsea.jpg'}#2",
        items[2].path,
    ]
    assert (items[0].target, items[0].box) == (285, (10.0, 20.0, 200.0, 210.0))
    assert (items[1].target, items[1].box) == (281, None)
    assert items[2].target == -1 and items[2].path == str(tmp_path / "../relative.jpg")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("path,target\nx.jpg,cat\n", "line 2: target 'cat' is not a class index"),
        ("path,target\nx.jpg,-3\n", "line 2: target -3 is negative"),
        ("path,box\nx.jpg,1 2 3\n", "line 2: box '1 2 3' is not four finite numbers"),
        ("path,box\nx.jpg,5 5 1 9\n", "line 2: box '5 5 1 9' is empty"),
        ("file,target\nx.jpg,1\n", "a listing needs a 'path' column"),
        ("path,label\nx.jpg,1\n", "unknown columns ['label']"),
        ("path\n", "the listing has no rows"),
    ],
)
def test_bad_listings_name_the_line(tmp_path, text, message):
    listing = tmp_path / "bad.csv"
    listing.write_text(text)
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        list_items([str(listing)])


def test_parquet_listing_and_missing_sources(tmp_path, image_dir):
    import pyarrow as pa

    path = tmp_path / "list.parquet"
    pq.write_table(
        pa.table({"path": [str(image_dir / "coffee.jpg")], "target": [504], "box": [[1.0, 2.0, 30.0, 40.0]]}),
        path,
    )
    (item,) = list_items([str(path)])
    assert (item.target, item.box) == (504, (1.0, 2.0, 30.0, 40.0))
    with pytest.raises(InputError, match="neither a file, a folder"):
        list_items([str(tmp_path / "nothing-here")])
    with pytest.raises(InputError, match="matches no image"):
        list_items([str(tmp_path / "*.jpg")])


# ---------------------------------------------------------------- the rows


@pytest.fixture(scope="module")
def local_job(image_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "job"
    result = _run([str(image_dir)], out)
    return result, read_results(out).to_pylist()


def test_rows_agree_with_plain_explain_calls(local_job, image_dir):
    result, rows = local_job
    assert result.mode == "local" and result.rows == 9 * len(METHODS) == len(rows)
    model = zoo.load_model(MODEL, weights="random")
    by_image: dict[str, dict[str, dict]] = {}
    for row in rows:
        by_image.setdefault(row["image"], {})[row["method"]] = row
    checked = 0
    for image, per_method in by_image.items():
        if Path(image).name in ("broken.jpg", "truncated.jpg"):
            continue
        ex = model.explain(Image.open(image), methods=METHODS)
        probs = ex.probabilities[0]
        for method in METHODS:
            row = per_method[method]
            assert (row["status"], row["error"], row["weights"]) == ("ok", "", "random")
            assert row["target"] == int(ex.targets[0]) and not row["target_given"] and row["target_rank"] == 0
            assert row["top5_class"] == [int(i) for i in probs.topk(5).indices]
            assert row["target_prob"] == pytest.approx(float(probs.max()), rel=1e-5)
            stored = decode_map(row["map"], row["map_shape"])
            raw = ex[method].raw[0].numpy()
            assert stored.dtype == np.float16 and stored.shape == raw.shape
            scale = float(np.abs(raw).max())
            np.testing.assert_allclose(stored.astype(np.float32), raw, rtol=2e-3, atol=2e-3 * scale)
            assert row["layer"] == ex[method].layer
            if method == "cam":  # Zhou et al.'s identity survives the float16 storage
                logit = float(ex.logits[0, row["target"]])
                assert float(stored.astype(np.float64).mean()) + row["map_offset"] == pytest.approx(
                    logit, abs=1e-2
                )
            checked += 1
    assert checked == 7 * len(METHODS)
    cam = next(r for r in rows if r["method"] == "cam" and r["status"] == "ok")
    assert cam["map_shape"] == [5, 5]  # CAM family at the map's own resolution
    grad = next(r for r in rows if r["method"] == "vanilla_gradient" and r["status"] == "ok")
    assert grad["map_shape"] == [3, 160, 160]


def test_unreadable_images_are_recorded_and_skipped(local_job, image_dir):
    result, rows = local_job
    errors = [r for r in rows if r["status"] == "error"]
    assert sorted({Path(r["image"]).name for r in errors}) == ["broken.jpg", "truncated.jpg"]
    assert len(errors) == 2 * len(METHODS) and result.errors == len(errors)
    for r in errors:
        assert r["error"].startswith("cannot read the image: ")
        assert r["map"] is None and r["top5_class"] is None
    broken = next(r for r in errors if r["image"].endswith("broken.jpg"))
    assert "UnidentifiedImageError" in broken["error"]
    truncated = next(r for r in errors if r["image"].endswith("truncated.jpg"))
    assert "truncated" in truncated["error"]


def test_targets_boxes_and_bad_targets_from_a_listing(tmp_path, image_dir):
    listing = tmp_path / "list.csv"
    rows = [
        ("chelsea.jpg", "285", "50 40 400 300"),
        ("coffee.jpg", "", ""),
        ("astronaut.jpg", "7", ""),
        ("rocket.jpg", "5000", ""),
    ]
    with listing.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "target", "box"])
        writer.writerows((str(image_dir / p), t, b) for p, t, b in rows)
    _run([str(listing)], tmp_path / "job", methods=("grad_cam",), batch_size=4)
    got = {Path(r["image"]).name: r for r in read_results(tmp_path / "job").to_pylist()}
    model = zoo.load_model(MODEL, weights="random")
    ex = model.explain(Image.open(image_dir / "chelsea.jpg"), methods=("grad_cam",), target=285)
    assert got["chelsea.jpg"]["target"] == 285 and got["chelsea.jpg"]["target_given"]
    probs = ex.probabilities[0]
    assert got["chelsea.jpg"]["target_rank"] == int((probs > probs[285]).sum())
    assert got["chelsea.jpg"]["target_prob"] == pytest.approx(float(probs[285]), rel=1e-5)
    stored = decode_map(got["chelsea.jpg"]["map"], got["chelsea.jpg"]["map_shape"]).astype(np.float32)
    np.testing.assert_allclose(stored, ex["grad_cam"].raw[0].numpy(), rtol=2e-3, atol=1e-3 * stored.max())
    assert got["chelsea.jpg"]["box"] == [50.0, 40.0, 400.0, 300.0]
    assert not got["coffee.jpg"]["target_given"] and got["coffee.jpg"]["target_rank"] == 0
    assert got["astronaut.jpg"]["target"] == 7
    assert got["rocket.jpg"]["status"] == "error"
    assert got["rocket.jpg"]["error"] == "target 5000 is not a class of test_resnet (1000 classes)"
    assert got["chelsea.jpg"]["image_size"] == list(Image.open(image_dir / "chelsea.jpg").size)


def test_map_storage_modes(tmp_path, image_dir):
    images = [str(image_dir / "chelsea.jpg")]
    _run(images, tmp_path / "sal", methods=("cam", "vanilla_gradient"), maps="saliency")
    rows = {r["method"]: r for r in read_results(tmp_path / "sal").to_pylist()}
    assert rows["vanilla_gradient"]["map_shape"] == [160, 160] and rows["cam"]["map_shape"] == [5, 5]
    ex = zoo.load_model(MODEL, weights="random").explain(Image.open(images[0]), methods=("vanilla_gradient",))
    expected = ex["vanilla_gradient"].raw[0].abs().amax(0).numpy()
    stored = decode_map(rows["vanilla_gradient"]["map"], [160, 160]).astype(np.float32)
    np.testing.assert_allclose(stored, expected, rtol=2e-3, atol=1e-3 * expected.max())
    _run(images, tmp_path / "none", methods=("cam",), maps="none")
    (row,) = read_results(tmp_path / "none").to_pylist()
    assert row["map"] is None and row["status"] == "ok" and row["map_offset"] is not None


def test_refused_methods_get_a_row_with_the_reason(tmp_path, image_dir):
    _run([str(image_dir / "coffee.jpg")], tmp_path / "job", models=["test_vit"], methods=("cam", "grad_cam"))
    rows = {r["method"]: r for r in read_results(tmp_path / "job").to_pylist()}
    assert rows["cam"]["status"] == "refused" and "class-token" in rows["cam"]["error"]
    assert rows["cam"]["map"] is None and rows["cam"]["top5_class"] == rows["grad_cam"]["top5_class"]
    assert rows["grad_cam"]["status"] == "ok"


# ---------------------------------------------------------------- resuming


class Interrupt(KeyboardInterrupt):
    pass


def test_an_interrupted_run_resumes_to_the_same_table(tmp_path, image_dir, local_job, same_rows):
    _, full = local_job
    out = tmp_path / "job"
    seen = []

    def stop_after_two_batches(model: str, n: int) -> None:
        seen.append(n)
        if len(seen) == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        _run([str(image_dir)], out, progress=stop_after_two_batches)
    partial = read_results(out).to_pylist()
    assert len(partial) == sum(seen) * len(METHODS) == 6 * len(METHODS)  # finished batches were kept
    again = _run([str(image_dir)], out)
    assert again.passes == 9 - 6 and again.written == 3 * len(METHODS)
    same_rows(full, read_results(out).to_pylist())
    runs = json.loads((out / "job.json").read_text())["runs"]
    assert [r["images"] for r in runs] == [9, 3]
    assert _run([str(image_dir)], out).passes == 0  # nothing left to do


def test_a_broken_part_is_set_aside_and_recomputed(tmp_path, image_dir):
    out = tmp_path / "job"
    _run([str(image_dir / "chelsea.jpg"), str(image_dir / "coffee.jpg")], out, batch_size=1, methods=("cam",))
    parts = sorted((out / "rows").glob("*.parquet"))
    assert len(parts) == 1
    parts[0].write_bytes(parts[0].read_bytes()[:100])  # as if killed while writing
    again = _run([str(image_dir / "chelsea.jpg"), str(image_dir / "coffee.jpg")], out, methods=("cam",))
    assert again.passes == 2 and again.rows == 2
    assert len(list((out / "rows").glob("*.broken"))) == 1


def test_new_methods_and_models_extend_a_job_and_other_settings_are_refused(tmp_path, image_dir):
    out = tmp_path / "job"
    images = [str(image_dir / "chelsea.jpg")]
    _run(images, out, methods=("cam",))
    more = _run(images, out, methods=("cam", "grad_cam"), models=[MODEL, "test_efficientnet"])
    assert more.written == 3 and more.rows == 4  # grad_cam for one model, both methods for the other
    with pytest.raises(JobMismatchError, match="maps: 'full' there, 'none' now"):
        _run(images, out, methods=("cam",), maps="none")


def test_retry_errors_reads_failed_images_again(tmp_path, image_dir):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "late.jpg").write_bytes(b"not yet")
    out = tmp_path / "job"
    assert _run([str(folder)], out, methods=("cam",)).errors == 1
    (folder / "late.jpg").write_bytes((image_dir / "coffee.jpg").read_bytes())
    assert _run([str(folder)], out, methods=("cam",)).passes == 0
    fixed = _run([str(folder)], out, methods=("cam",), retry_errors=True)
    assert (fixed.passes, fixed.errors, fixed.rows) == (1, 0, 1)


# ---------------------------------------------------------------- summary


def test_t_quantiles_and_intervals():
    # Student's t 97.5% quantiles: the table's to 4 decimals, beyond it to 1e-5 (scipy.stats.t.ppf)
    for df, t in [(1, 12.7062), (10, 2.2281), (30, 2.0423)]:
        assert t975(df) == pytest.approx(t, abs=1e-4)
    for df, t in [(31, 2.0395134), (40, 2.0210754), (100, 1.9839715), (1000, 1.9623390)]:
        assert t975(df) == pytest.approx(t, abs=1e-5)
    mean, lo, hi = mean_interval([1.0, 2.0, 3.0, 4.0])
    half = 3.1824 * math.sqrt(5 / 3) / 2
    assert (mean, lo, hi) == pytest.approx((2.5, 2.5 - half, 2.5 + half), abs=1e-4)
    assert math.isnan(mean_interval([1.0])[1]) and math.isnan(mean_interval([])[0])


def test_summary_files(local_job):
    result, _ = local_job
    with (result.out / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], r["method"]) for r in rows] == [(MODEL, m) for m in sorted(METHODS)]
    assert {(r["ok"], r["errors"], r["refused"]) for r in rows} == {("7", "2", "0")}
    md = result.summary.read_text()
    assert "**Random weights** for test_resnet" in md
    assert "## Errors (2 images)" in md and "broken.jpg`: cannot read the image" in md


# ---------------------------------------------------------------- the command line


def test_batch_command(tmp_path, image_dir, capsys):
    out = tmp_path / "job"
    argv = ["batch", str(image_dir / "chelsea.jpg"), str(image_dir / "broken.jpg"), "--models", MODEL]
    argv += [
        "--methods",
        "cam,grad_cam",
        "--weights",
        "random",
        "--out",
        str(out),
        "--quiet",
        "--workers",
        "0",
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "4 new rows (2 image x model passes" in captured.out
    assert "2 rows record an unreadable image" in captured.err
    assert read_results(out).num_rows == 4
    assert main(argv) == 0 and "0 new rows (0 image x model passes" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--models", "resnet_50_typo"], "did you mean"),
        (["--models", MODEL, "--methods", "gradcam"], "Did you mean 'grad_cam'"),
        (["--models", MODEL, "--metric-param", "steps"], "expected KEY=VALUE"),
        (["--models", MODEL, "--maps", "none", "--out", "{job}"], "holds a job made with other settings"),
    ],
)
def test_batch_command_usage_errors(tmp_path, image_dir, capsys, args, message):
    job = tmp_path / "job"
    _run([str(image_dir / "chelsea.jpg")], job, methods=("cam",))
    args = [a.replace("{job}", str(job)) for a in args]
    base = [
        "batch",
        str(image_dir / "chelsea.jpg"),
        "--weights",
        "random",
        "--quiet",
        "--out",
        str(tmp_path / "new"),
    ]
    code = main([*base, *args])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("cnnviz batch: error: ") and message in err and "Traceback" not in err


def test_methods_listed_by_the_registry_are_accepted():
    assert set(METHODS) <= {m.id for m in cnnviz.list_methods()}


def test_the_command_line_builds_without_pyarrow():
    import subprocess
    import sys

    from cnnviz.batch import MAP_MODES
    from cnnviz.cli.batch import MAP_MODES as CLI_MAP_MODES

    assert CLI_MAP_MODES == MAP_MODES
    code = "import sys; from cnnviz.cli import build_parser; build_parser(); print('pyarrow' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


# ---------------------------------------------------------------- metrics


def _boxed_listing(tmp_path: Path, image_dir: Path) -> Path:
    """coffee without a box (first, so that the box metrics' rows must be put back in place),
    chelsea, rocket and astronaut with boxes, and the broken file."""
    listing = tmp_path / "boxes.csv"
    listing.write_text(
        "path,target,box\n"
        f"{image_dir / 'coffee.jpg'},,\n"
        f"{image_dir / 'chelsea.jpg'},,60 20 300 280\n"
        f"{image_dir / 'rocket.jpg'},,300 0 427 90\n"
        f"{image_dir / 'astronaut.jpg'},3,150 0 380 230\n"
        f"{image_dir / 'broken.jpg'},,\n"
    )
    return listing


METRICS = ("deletion", "insertion", "average_drop", "pointing_game", "energy_in_box")


def test_metric_columns_agree_with_evaluate_score(tmp_path, image_dir):
    from cnnviz import evaluate
    from cnnviz.batch.decode import to_input_box

    out = tmp_path / "job"
    methods = ("grad_cam", "vanilla_gradient")
    params = {"steps": 5}
    result = _run(
        [str(_boxed_listing(tmp_path, image_dir))],
        out,
        methods=methods,
        metrics=METRICS,
        metric_params=params,
    )
    rows = read_results(out).to_pylist()
    model = zoo.load_model(MODEL, weights="random")
    by_key = {(Path(r["image"]).name, r["method"]): r for r in rows}
    for name, target, box in (
        ("coffee.jpg", None, None),
        ("chelsea.jpg", None, (60, 20, 300, 280)),
        ("rocket.jpg", None, (300, 0, 427, 90)),
        ("astronaut.jpg", 3, (150, 0, 380, 230)),
    ):
        image = Image.open(image_dir / name)
        x = model.preprocess(image)
        ex = model.explain(x, methods=methods, target=target)
        plain = evaluate.score(
            model.module, x, ex, ["deletion", "insertion", "average_drop"], strict=False, **params
        )
        input_box = to_input_box(
            np.array(box or (np.nan,) * 4, dtype=float), model.seen_box(image), (160, 160)
        )
        box_metrics = ["pointing_game", "energy_in_box"]
        boxed = (
            evaluate.score(model.module, x, ex, box_metrics, torch.tensor([input_box]), strict=False)
            if box
            else {}
        )
        for method in methods:
            row = by_key[(name, method)]
            for metric in ("deletion", "insertion", "average_drop"):
                expected = plain[method].get(metric)
                got = row[f"metric_{metric}"]
                if expected is None:
                    assert got is None, (name, method, metric)  # AD is defined for CAM-family maps only
                else:
                    assert got == pytest.approx(float(expected[0]), rel=1e-4, abs=1e-9), (
                        name,
                        method,
                        metric,
                    )
            for metric in box_metrics:
                if box:
                    expected = float(boxed[method][metric][0])
                    assert row[f"metric_{metric}"] == pytest.approx(expected, abs=1e-6), (name, method)
                else:
                    assert row[f"metric_{metric}"] is None  # no box, no localization metric
    assert by_key[("broken.jpg", "grad_cam")]["status"] == "error"
    assert by_key[("chelsea.jpg", "vanilla_gradient")]["metric_average_drop"] is None
    assert by_key[("chelsea.jpg", "grad_cam")]["metric_average_drop"] is not None
    # the summary: each metric's mean and interval, and a plot per metric
    with (out / "summary.csv").open() as f:
        summary = {r["method"]: r for r in csv.DictReader(f)}
    deletions = [
        by_key[(n, "grad_cam")]["metric_deletion"]
        for n in ("chelsea.jpg", "coffee.jpg", "rocket.jpg", "astronaut.jpg")
    ]
    mean, lo, _ = mean_interval(deletions)
    assert float(summary["grad_cam"]["deletion_mean"]) == pytest.approx(mean, rel=1e-5)
    assert float(summary["grad_cam"]["deletion_lo"]) == pytest.approx(lo, rel=1e-5)
    assert (
        summary["grad_cam"]["pointing_game_n"] == "3" and summary["vanilla_gradient"]["average_drop_n"] == "0"
    )
    assert sorted(p.name for p in (out / "plots").glob("*.png")) == sorted(f"{m}.png" for m in METRICS)
    md = result.summary.read_text()
    assert (
        "deletion (mean [95% CI], n)" in md
        and "lower is better" in md
        and "![deletion](plots/deletion.png)" in md
    )


def test_boxes_are_mapped_onto_what_the_model_sees():
    from cnnviz.batch.decode import to_input_box

    seen = (40.0, 10.0, 240.0, 110.0)  # the model's view: 200 x 100 pixels of the original
    full = to_input_box(np.array(seen), seen, (50, 100))
    assert full == pytest.approx((0.0, 0.0, 100.0, 50.0))
    left_half = to_input_box(np.array([40.0, 10.0, 140.0, 110.0]), seen, (50, 100))
    assert left_half == pytest.approx((0.0, 0.0, 50.0, 50.0))
    inner = to_input_box(np.array([90.0, 35.0, 190.0, 60.0]), seen, (50, 100))
    assert inner == pytest.approx((25.0, 12.5, 75.0, 25.0))
    clipped = to_input_box(np.array([0.0, 0.0, 60.0, 500.0]), seen, (50, 100))
    assert clipped == pytest.approx((0.0, 0.0, 10.0, 50.0))
    assert all(math.isnan(v) for v in to_input_box(np.array([0.0, 0.0, 30.0, 5.0]), seen, (50, 100)))
    assert all(math.isnan(v) for v in to_input_box(np.full(4, np.nan), seen, (50, 100)))


def test_bad_metrics_and_parameters_are_refused_before_any_work(tmp_path, image_dir):
    with pytest.raises(ValueError, match="unknown metric 'delete'"):
        _run([str(image_dir / "chelsea.jpg")], tmp_path / "a", metrics=("delete",))
    with pytest.raises(ValueError, match=r"unknown \['step'\]"):
        _run(
            [str(image_dir / "chelsea.jpg")], tmp_path / "b", metrics=("deletion",), metric_params={"step": 3}
        )
    with pytest.raises(ValueError, match="steps: expected an integer"):
        _run(
            [str(image_dir / "chelsea.jpg")],
            tmp_path / "c",
            metrics=("deletion",),
            metric_params={"steps": "x"},
        )
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
