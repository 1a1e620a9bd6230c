"""The sweep: the checks catch wrong results, the runner survives bad models, the outcome holds.

Fake probes run in the sweep's child processes (they must be module-level functions here, so
that the child can import them); real models run in the integration tests at the end.
"""

from __future__ import annotations

import csv
import json
import mmap
import os
import re
import signal
import time
from dataclasses import replace
from pathlib import Path

import pytest
import timm
import torch
from conftest import input_for, make_model

import cnnviz
from cnnviz.sweep import Limits, run_sweep, select_names, smoke_models, summarize
from cnnviz.sweep.build import _patch_multiple, build, candidate_sizes, classifier_modules
from cnnviz.sweep.probe import CAM_TOL, SWEEP_PARAMS, Context, check, columns, probe, run_methods
from cnnviz.sweep.runner import plan_for
from cnnviz.sweep.summary import readme_excerpt
from cnnviz.sweep.table import RowWriter, method_cells, method_columns, read_header, read_rows

METHOD_IDS = [m.id for m in cnnviz.list_methods()]
SUPPORT = Path(__file__).resolve().parents[2] / "support"
FAST = Limits(timeout=60, mem_gb=4, jobs=2)


# ---------------------------------------------------------------- fakes run in child processes


def fake_ok(name: str, small: int, dtype: torch.dtype) -> dict:
    row = {"name": name, "family": "fake", "layout": "NCHW", "head_kind": "linear", "t_total": 0.01}
    for m in METHOD_IDS:
        row[m], row[f"{m}_note"] = "ok", ""
    return row


def fake_by_name(name: str, small: int, dtype: torch.dtype) -> dict:
    """'hang' sleeps, 'crash' dies by SIGKILL, 'hog' maps 2 GiB (address space, untouched), others succeed."""
    if name == "hang":
        time.sleep(600)
    if name == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    row = fake_ok(name, small, dtype)
    if name == "hog":
        try:
            with mmap.mmap(-1, 2 * 2**30) as block:
                row["error"] = f"allocated {len(block)} bytes"
        except OSError as exc:
            row["error"] = f"{type(exc).__name__} {exc.errno}: the cap held"
    return row


def _sweep(tmp_path: Path, names: list[str], probe_fn=fake_ok, limits: Limits = FAST) -> list[dict]:
    run_sweep(names=names, out=tmp_path / "s.csv", limits=limits, probe_fn=probe_fn)
    return read_rows(tmp_path / "s.csv")


# ---------------------------------------------------------------- runner


def test_resumes_skipping_names_already_written(tmp_path):
    first = run_sweep(names=["b", "a"], out=tmp_path / "s.csv", limits=FAST, probe_fn=fake_ok)
    assert (first.written, first.rows) == (2, 2)
    again = run_sweep(names=["a", "c", "b"], out=tmp_path / "s.csv", limits=FAST, probe_fn=fake_ok)
    assert (again.written, again.rows) == (1, 3)
    assert [r["name"] for r in read_rows(tmp_path / "s.csv")] == ["a", "b", "c"]  # sorted at the end


def test_a_resumed_run_is_summarized_against_what_the_csv_covers(tmp_path):
    path = tmp_path / "s.csv"
    run_sweep(names=["resnet14t"], out=path, limits=FAST, probe_fn=fake_ok)
    meta_path = path.with_suffix(".meta.json")
    # as if the first run had been `cnnviz sweep resnet10t,resnet14t,resnet18` and was interrupted
    meta_path.write_text(
        json.dumps({**json.loads(meta_path.read_text()), "pattern": "resnet10t,resnet14t,resnet18"})
    )
    run_sweep("resnet10t", out=path, limits=FAST, probe_fn=fake_ok)
    meta = json.loads(meta_path.read_text())
    assert meta["pattern"] == "resnet10t,resnet14t,resnet18" and meta["runs"][-1]["pattern"] == "resnet10t"
    assert len(meta["runs"]) == 2 and meta["runs"][0]["pattern"] is None
    assert all(f"{os.cpu_count()} cores" in run["machine"] for run in meta["runs"])  # what timed it
    assert "2 models of 3 (partial)" in (tmp_path / "s.md").read_text()
    run_sweep(names=["x"], out=tmp_path / "t.csv", limits=FAST, probe_fn=fake_ok)
    assert "1 models, random weights" in (tmp_path / "t.md").read_text()  # a list covers itself


def test_retry_failed_reruns_only_failed_rows(tmp_path):
    path = tmp_path / "s.csv"
    run_sweep(names=["crash", "fine"], out=path, limits=FAST, probe_fn=fake_by_name)
    assert {r["name"]: r["grad_cam"] for r in read_rows(path)} == {"crash": "failed", "fine": "ok"}
    again = run_sweep(names=["crash", "fine"], out=path, limits=FAST, probe_fn=fake_ok, retry_failed=True)
    assert again.written == 1  # only "crash"
    assert {r["name"]: r["grad_cam"] for r in read_rows(path)} == {"crash": "ok", "fine": "ok"}


def test_hang_and_crash_cost_one_row_each(tmp_path):
    limits = Limits(timeout=5, mem_gb=4, jobs=2)
    t0 = time.monotonic()
    rows = {r["name"]: r for r in _sweep(tmp_path, ["crash", "fine", "hang"], fake_by_name, limits)}
    assert time.monotonic() - t0 < 60
    assert rows["fine"]["grad_cam"] == "ok"
    assert rows["hang"]["grad_cam"] == "failed" and "timeout after 5 s" in rows["hang"]["error"]
    assert rows["crash"]["grad_cam"] == "failed" and "SIGKILL" in rows["crash"]["error"]
    # Killed by SIGKILL may be the kernel's OOM killer: rerun once alone, then written as failed.
    assert rows["crash"]["error"].startswith("ran out of the 4 GiB cap (crashed: killed by SIGKILL")
    assert all(rows[n][f"{m}_note"] for n in ("hang", "crash") for m in METHOD_IDS)


@pytest.mark.parametrize(
    ("mem_gb", "expected"), [(1.75, "OSError 12: the cap held"), (6, "allocated 2147483648 bytes")]
)
def test_memory_cap_is_enforced_in_the_child(tmp_path, mem_gb, expected):
    # A cap of 1.75 GiB still fits the plan's 1 GiB overhead for a model of 0 parameters.
    rows = _sweep(tmp_path, ["hog"], fake_by_name, Limits(timeout=60, mem_gb=mem_gb, big_mem_gb=8))
    assert rows[0]["error"] == expected


def fake_greedy(name: str, small: int, dtype: torch.dtype, methods: list[str] | None = None) -> dict:
    """'greedy*' needs 2 GiB of address space (MemoryError under a lower cap); others need none."""
    row = fake_some(name, small, dtype, methods)
    if name.startswith("greedy"):
        try:
            with mmap.mmap(-1, 2 * 2**30) as block:
                row["error"] = f"{row['error']}, mapped {len(block)} bytes"
        except OSError as exc:
            raise MemoryError(f"cannot map 2 GiB: {exc}") from exc
    return row


def test_a_model_out_of_memory_is_rerun_alone_under_the_big_cap(tmp_path):
    path = tmp_path / "s.csv"
    run_sweep(names=["greedy", "fine"], out=path, limits=Limits(60, 1.75, 4, 2), probe_fn=fake_greedy)
    rows = {r["name"]: r for r in read_rows(path)}
    assert rows["fine"]["error"] == "ran all"
    greedy = rows["greedy"]
    assert all(greedy[m] == "ok" for m in METHOD_IDS)
    assert greedy["error"].startswith("ran out of the 1.75 GiB cap (probe raised MemoryError: cannot map")
    assert greedy["error"].endswith("rerun alone under --big-mem-gb 4; ran all, mapped 2147483648 bytes")
    # A top-up that runs out of memory keeps to its methods on the rerun.
    _drop_method(path, "score_cam")
    run_sweep(names=["greedy", "fine"], out=path, limits=Limits(60, 1.75, 4, 2), probe_fn=fake_greedy)
    rows = {r["name"]: r for r in read_rows(path)}
    assert rows["greedy"]["score_cam"] == "ok" and rows["fine"]["score_cam"] == "ok"
    assert rows["greedy"]["error"].endswith(
        "rerun alone under --big-mem-gb 4; ran score_cam, mapped 2147483648 bytes"
    )


def test_out_of_memory_is_read_from_failed_methods_only():
    from cnnviz.sweep.runner import out_of_memory

    oom = "all methods together: RuntimeError: DefaultCPUAllocator: can't allocate memory; one by one"
    passed = {"error": oom, **{m: "ok" for m in METHOD_IDS}}
    assert out_of_memory(passed, METHOD_IDS) == ""  # every method passed one by one: nothing to rerun
    assert out_of_memory({**passed, "cam": "failed", "cam_note": "check: not finite"}, METHOD_IDS) == oom
    note = "RuntimeError: CUDA out of memory. Tried to allocate 2 GiB"
    assert out_of_memory({**passed, "error": "", "cam": "failed", "cam_note": note}, METHOD_IDS) == note
    other = {**passed, "error": "", "cam": "failed", "cam_note": "check: constant"}
    assert out_of_memory(other, METHOD_IDS) == ""


def test_out_of_memory_with_no_bigger_cap_is_written_as_failed(tmp_path):
    rows = _sweep(tmp_path, ["greedy"], fake_greedy, Limits(60, 1.75, 1.75, 2))
    assert all(rows[0][m] == "failed" for m in METHOD_IDS)
    assert rows[0]["error"].startswith("probe raised MemoryError: cannot map 2 GiB")


def fake_some(name: str, small: int, dtype: torch.dtype, methods: list[str] | None = None) -> dict:
    """Like `fake_ok`, for the methods asked (all by default); says which it ran in ``error``."""
    row = {"name": name, "family": "fake", "layout": "NCHW", "head_kind": "linear", "t_total": 0.01}
    for m in methods or METHOD_IDS:
        row[m], row[f"{m}_note"] = "ok", f"new {m}"
    row["error"] = f"ran {','.join(methods) if methods else 'all'}"
    # as if b's top-up had run on a machine without a bfloat16 matmul
    row["dtype"] = "bfloat16 (float32 compute)" if methods and name == "b" else "float32"
    return row


def _drop_method(path: Path, method: str) -> None:
    """The CSV as an older version wrote it, before `method` was registered."""
    gone = set(method_cells(method))
    rows = read_rows(path)
    cols = [c for c in read_header(path) if c not in gone]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def test_a_new_method_adds_its_columns_and_runs_only_itself(tmp_path):
    path = tmp_path / "s.csv"
    run_sweep(names=["a", "b"], out=path, limits=FAST, probe_fn=fake_some)
    new = METHOD_IDS[-1]
    _drop_method(path, new)
    assert new not in read_header(path)
    # A run stopped after one model: the other still lacks the new method (resumable per method).
    run_sweep(names=["a"], out=path, limits=FAST, probe_fn=fake_some)
    rows = {r["name"]: r for r in read_rows(path)}
    assert rows["a"][new] == "ok" and rows["a"]["error"] == f"ran all ran {new}"
    assert rows["b"][new] == "" and rows["b"]["error"] == "ran all"
    summary = summarize(path)
    assert re.search(rf"\| `{new}` \| 1 \| 0 \| 0 \| 1 \|", summary), summary  # ok 1, not run 1
    assert "row lacks methods added since it was written: 1 (b);" in summary
    again = run_sweep(names=["a", "b", "c"], out=path, limits=FAST, probe_fn=fake_some)
    assert again.written == 2  # b (the new method only) and c (everything)
    rows = {r["name"]: r for r in read_rows(path)}
    assert rows["b"][new] == "ok" and rows["b"]["error"] == f"ran all ran {new}"
    assert rows["b"][f"{METHOD_IDS[0]}_note"] == f"new {METHOD_IDS[0]}"  # the old cells kept
    assert rows["c"]["error"] == "ran all"
    assert rows["a"]["dtype"] == rows["c"]["dtype"] == "float32"  # topped up as it first ran
    assert rows["b"]["dtype"] == "float32, then bfloat16 (float32 compute) for 1 method"
    assert read_header(path) == columns()
    assert "lacks methods" not in summarize(path)


@pytest.mark.slow
def test_adding_a_method_to_a_real_csv_probes_only_that_method(tmp_path):
    path = tmp_path / "s.csv"
    run_sweep(names=["test_resnet", "test_vit"], out=path, limits=FAST)
    before = {r["name"]: r for r in read_rows(path)}
    new = "grad_cam"
    _drop_method(path, new)
    run_sweep(names=["test_resnet", "test_vit"], out=path, limits=FAST)
    after = {r["name"]: r for r in read_rows(path)}
    for name in before:
        assert after[name][new] == "ok" and after[name][f"{new}_note"] == before[name][f"{new}_note"]
        assert after[name]["t_total"] == before[name]["t_total"]  # the row's other cells as they were


def test_resuming_into_a_csv_with_other_columns_is_refused(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("name,grad_cam\nx,ok\n")
    with pytest.raises(ValueError, match="columns differ"):
        RowWriter(path, columns())


def test_memory_plan():
    lim = Limits(mem_gb=8, big_mem_gb=16)
    small = plan_for("m", 25_000_000, lim)
    assert (small.dtype, small.exclusive, small.mem_gb) == ("float32", False, 8)
    giant = plan_for("m", 1_850_000_000, lim)  # 6.9 GiB of float32 parameters
    assert (giant.dtype, giant.exclusive, giant.mem_gb, giant.timeout) == (
        "float32",
        True,
        16,
        4 * lim.timeout,
    )
    bigger = plan_for("m", 4_350_000_000, lim)  # 16 GiB in float32, 8 GiB in bfloat16
    assert (bigger.dtype, bigger.exclusive, bigger.refusal) == ("bfloat16", True, "")
    too_big = plan_for("m", 9_000_000_000, lim)
    assert "--big-mem-gb" in too_big.refusal and "GiB" in too_big.refusal


def test_select_names():
    assert select_names("resnet18,resnet10t") == ["resnet10t", "resnet18"]
    assert len(select_names()) == len(timm.list_models())
    with pytest.raises(ValueError, match="resnet18"):
        select_names("resnett18")
    smoke = select_names(families_smoke=True)
    assert smoke == sorted(smoke_models())
    assert select_names("resnet*", families_smoke=True) == [n for n in smoke if n.startswith("resnet")]


def test_smoke_list_has_one_model_per_family():
    from cnnviz.sweep.table import family_of

    names = smoke_models()
    families = [family_of(n) for n in names]
    assert sorted(families) == sorted(timm.list_modules())


# ---------------------------------------------------------------- summary


def test_summary_of_a_partial_csv(tmp_path):
    path = tmp_path / "s.csv"
    with RowWriter(path, columns()) as w:
        ok = {"name": "net_a", "family": "fam1", "layout": "NCHW", "head_kind": "linear", "t_total": 3}
        for m in METHOD_IDS:
            ok[m], ok[f"{m}_note"] = "ok", ""
        bad = {**ok, "name": "net_b", "family": "fam2", "layout": "tokens", "head_kind": "token"}
        bad["grad_cam"] = "failed"
        bad["grad_cam_note"] = "check: constant map (every value 0)"
        bad["cam"], bad["cam_note"] = "refused", "class-token pooling"
        odd = {
            **ok,
            "name": "net_c",
            "error": "all methods together: RuntimeError: boom; methods run one by one",
            "dtype": "bfloat16 (float32 compute)",
            "cam_err": 3e-3,
        }
        w.write(ok)
        w.write(bad)
        w.write(odd)
    runs = [{"models": 2, "jobs": 2}, {"models": 1, "jobs": 1}]
    md = summarize(path, expected=10, meta={"wall_s": 90, "jobs": 2, "runs": runs})
    assert "3 models of 10 (partial)" in md
    assert "Wall time 1.5 min over 2 resumed runs, with --jobs 1 or 2." in md
    assert "| `grad_cam` | 2 | 0 | 1 |" in md
    assert "| `cam` | 2 | 1 | 0 |" in md
    assert "| net_c | (model) | all methods together: RuntimeError: boom; methods run one by one |" in md
    assert "| net_b | `grad_cam` | check: constant map (every value 0) |" in md
    assert "| 1 | class-token pooling |" in md
    assert "| fam1 | 2 | NCHW 2 | 2 | 2 | 0 |" in md
    assert "| fam2 | 1 | tokens 1 | 0 | 0 | 1 |" in md
    assert "largest relative error 3.0e-03 in bfloat16;" in md  # with float32 arithmetic too
    assert "- Run in bfloat16 (too large for the memory cap in float32): net_c;" in md
    assert "bfloat16 matmul of its own (`cnnviz/sweep/upcast.py`): net_c (their `dtype` cell" in md


# ---------------------------------------------------------------- building and checking one model


def test_candidate_sizes():
    assert candidate_sizes("resnet18")[0] == [(3, 160, 160), (3, 224, 224)]
    assert candidate_sizes("mixer_s32_224")[0] == [(3, 160, 160), (3, 224, 224)]  # "fixed", built smaller
    assert candidate_sizes("test_resnet")[0] == [(3, 160, 160)]  # native is already small
    sizes, note = candidate_sizes("vit_base_patch16_sapiens2")  # 1024x768 native
    assert sizes == [(3, 256, 192), (3, 1024, 768)] and "aspect ratio" in note  # min_input_size 256x192


def test_build_defeats_random_init_quirks():
    mixer = build("mixer_s32_224")  # zero-initialised classifier
    (head,) = classifier_modules(mixer.module, "mixer_s32_224")
    assert float(head.weight.detach().abs().min()) > 0 and float(head.bias.detach().abs().max()) > 0
    assert mixer.module.pretrained_cfg["input_size"] == mixer.input_size == (3, 160, 160)
    resnet = build("resnet10t")
    bns = [m for m in resnet.module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(float((bn.running_var - 1).abs().max()) > 1e-3 for bn in bns)  # not the identity
    assert all(float(bn.weight.detach().abs().min()) > 0.05 for bn in bns)  # zero-init residual BN woken
    convnext = build("convnext_atto")
    assert float(convnext.module.stages[0].blocks[0].gamma.detach().min()) >= 0.1  # layer scale was 1e-6
    eva = build("eva02_tiny_patch14_224")  # a feature tower: num_classes=0 by default
    assert eva.head_added and eva.module.num_classes == 1000


def test_patch_multiple_after_a_failed_small_size():
    from timm.layers import PatchEmbed

    nested = torch.nn.Sequential(torch.nn.Sequential(PatchEmbed(224, 14, 3, 8)))
    assert _patch_multiple(nested, (3, 160, 160), (3, 546, 546)) == (3, 168, 168)
    assert _patch_multiple(nested, (3, 160, 160), (3, 168, 168)) is None  # no smaller than native
    assert _patch_multiple(torch.nn.Conv2d(3, 3, 3), (3, 160, 160), (3, 224, 224)) is None
    gemma = "Image size (160, 160) must be divisible by (patch_size * pooling_kernel_size) = (48, 48)"
    assert _patch_multiple(nested, (3, 160, 160), (3, 768, 768), gemma) == (3, 192, 192)


def test_probe_passes_a_healthy_model():
    row = probe("resnet10t")
    assert all(row[m] == "ok" for m in METHOD_IDS), {m: row[f"{m}_note"] for m in METHOD_IDS}
    assert float(row["cam_err"]) <= CAM_TOL
    assert row["input_size"] == "160x160" and row["layout"] == "NCHW" and row["cam_exact"] is True


def test_checks_catch_wrong_results():
    from cnnviz.sweep.build import build as build_model

    built = build_model("resnet10t")
    anatomy = cnnviz.inspect(built.module)
    x = torch.randn(1, *built.input_size)
    ex = cnnviz.explain(built.module, x, methods=METHOD_IDS)
    plain = ex["vanilla_gradient"].raw

    def verdict(method: str, **changes) -> str:
        att = ex[method]
        fake = cnnviz.Explanation(
            attributions={method: type(att)(**{**att.__dict__, **changes})},
            logits=ex.logits,
            targets=ex.targets,
            anatomy=anatomy,
            layer=ex.layer,
        )
        return check(
            method, fake, Context(x, anatomy, CAM_TOL, {"vanilla_gradient": ex["vanilla_gradient"]}, {})
        )

    assert verdict("cam") == ""
    assert "mean(CAM) + offset != logit" in verdict("cam", offset=ex["cam"].offset + 0.01)
    assert "constant" in verdict("grad_cam", raw=torch.zeros_like(ex["grad_cam"].raw))
    assert "not finite" in verdict("grad_cam", raw=ex["grad_cam"].raw / 0)
    assert "shape" in verdict("grad_cam", raw=ex["grad_cam"].raw[:, :-1])
    assert "equals the plain gradient" in verdict("guided_backprop", raw=plain.clone())
    assert verdict("guided_backprop") == ""


def test_a_blank_grad_cam_is_ok_with_its_reason_and_a_fake_one_is_not():
    # Every class weight negative on a map that follows a ReLU: Grad-CAM's ReLU leaves a blank map
    # for the top class, which is the method as defined (the row says why), not a failure.
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=5).eval()
    with torch.no_grad():
        model.fc.weight.copy_(-model.fc.weight.abs() - 1e-3)
    anatomy = cnnviz.inspect(model)
    x = torch.randn(1, 3, anatomy.shape[1] * 32, anatomy.shape[2] * 32)
    out = run_methods(model, x, anatomy)
    assert out["grad_cam"] == "ok" and out["grad_cam_note"].startswith("blank map: sample 0: ")
    assert out["guided_grad_cam"] == "ok" and "negative at every position" in out["guided_grad_cam_note"]
    assert out["vanilla_gradient"] == "ok" and out["vanilla_gradient_note"] == ""
    ex = cnnviz.explain(model, x, ["grad_cam"])
    fake = cnnviz.Explanation(
        attributions={"grad_cam": replace(ex["grad_cam"], notes=ex["grad_cam"].notes[:1])},
        logits=ex.logits,
        targets=ex.targets,
        anatomy=anatomy,
        layer=ex.layer,
    )
    assert "constant map" in check("grad_cam", fake, Context(x, anatomy, CAM_TOL, {}, {}))


# ---------------------------------------------------------------- integration: real models


def _assert_expected_outcome(rows: list[dict[str, str]]) -> None:
    failed = [(r["name"], m, r[f"{m}_note"]) for r in rows for m in METHOD_IDS if r.get(m) == "failed"]
    assert not failed, "failures:\n" + "\n".join(map(str, failed))
    for r in rows:
        has_classifier = r["num_classes"] not in ("", "0")
        if has_classifier:
            assert r["grad_cam"] == "ok", (r["name"], r["grad_cam_note"])
        if r["cam"] == "ok":
            assert r["cam_exact"] == "True" and float(r["cam_err"]) <= (
                CAM_TOL if r["dtype"] == "float32" else 2e-2
            ), r["name"]
        else:
            assert r["cam"] == "refused" and r["cam_note"].strip(), (r["name"], r["cam_note"])
            assert r["cam_exact"] != "True", r["name"]


def test_sweep_command_end_to_end(tmp_path, capsys):
    from cnnviz.cli import main

    out = tmp_path / "s.csv"
    assert main(["sweep", "resnet10t,mobilenetv3_small_050", "--out", str(out), "--quiet"]) == 0
    rows = {r["name"]: r for r in read_rows(out)}
    assert set(rows) == {"resnet10t", "mobilenetv3_small_050"}
    _assert_expected_outcome(list(rows.values()))
    assert rows["resnet10t"]["cam"] == "ok"
    assert rows["mobilenetv3_small_050"]["cam"] == "refused"  # pool -> conv -> hardswish -> linear
    summary = (tmp_path / "s.md").read_text()
    assert "2 models" in summary and "No failures." in summary
    meta = json.loads((tmp_path / "s.meta.json").read_text())
    assert meta["pattern"] == meta["runs"][0]["pattern"] == "resnet10t,mobilenetv3_small_050"
    # The light setting of the costly methods is part of what the matrix says.
    assert meta["method_params"] == SWEEP_PARAMS and "light setting" in summary
    assert "score_cam max_channels = 8" in summary


def test_the_sweep_runs_costly_methods_light(monkeypatch):
    """Score-CAM on every channel of efficientnet_b0 takes 90 s on two cores; the sweep asks
    only whether a method works, so it scores SWEEP_PARAMS' 8 maps (and few IG/SmoothGrad
    samples), in the all-together call and in the one-by-one fallback alike."""
    from cnnviz.sweep import probe as module

    model = make_model("test_resnet")
    x = input_for(model, batch=1)
    anatomy = cnnviz.inspect(model)
    calls = []
    explain = cnnviz.explain

    def spying(*args, **kwargs):
        calls.append(kwargs.get("params"))
        if len(calls) == 1:
            raise RuntimeError("all together fails: the sweep retries one by one")
        return explain(*args, **kwargs)

    monkeypatch.setattr(module.cnnviz, "explain", spying)
    out = run_methods(model, x, anatomy)
    assert calls[0] == SWEEP_PARAMS
    one_by_one = {k: v for p in calls[1:] for k, v in (p or {}).items()}
    assert one_by_one == SWEEP_PARAMS
    assert all(out[m] == "ok" for m in SWEEP_PARAMS), {m: out[f"{m}_note"] for m in SWEEP_PARAMS}


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_families_smoke(tmp_path):
    """One small model per timm family, as CI runs it: the expected outcome, on real models.

    All 17 methods, the costly ones light (SWEEP_PARAMS): 9.8 minutes with 2 jobs on 2 shared
    cores at load 3.5 (at their defaults it passed the 30-minute timeout in CI).
    """
    jobs = int(os.environ.get("CNNVIZ_SWEEP_JOBS", "0")) or max(1, min(2, os.cpu_count() or 1))
    result = run_sweep(out=tmp_path / "smoke.csv", limits=Limits(jobs=jobs), families_smoke=True)
    rows = read_rows(tmp_path / "smoke.csv")
    assert len(rows) == result.selected == len(smoke_models())
    _assert_expected_outcome(rows)


# Methods registered after the committed sweep ran (issue 12); their columns come with the next
# sweep. Any other registered method without columns fails the test below.
NOT_YET_SWEPT: set[str] = set()  # methods allowed to have no columns yet (none: every method has them)


def test_committed_sweep_csv():
    """The committed support matrix shows the expected outcome on every model it holds, and says
    plainly, in the summary that the README and the app show, when it does not yet hold all of timm."""
    path = SUPPORT / "sweep.csv"
    assert path.exists(), f"{path} is missing: run `cnnviz sweep --jobs 2` and commit support/"
    rows = read_rows(path)
    names = set(timm.list_models())
    have = {r["name"] for r in rows}
    header = list(rows[0])
    swept = [m.id for m in cnnviz.list_methods() if m.id in header]
    missing = {m.id for m in cnnviz.list_methods()} - set(swept)
    assert missing <= NOT_YET_SWEPT, f"no columns for {sorted(missing - NOT_YET_SWEPT)}: rerun the sweep"
    assert header == method_columns(swept), "the CSV's columns are out of date: rerun the sweep"
    rows = [r for r in rows if r["name"] in names]
    _assert_expected_outcome(rows)
    summary = (SUPPORT / "summary.md").read_text()
    assert f"{len(rows)} models" in summary, "support/summary.md is stale: rerun `cnnviz sweep` to rewrite it"
    if have >= names:
        assert sum(r["grad_cam"] == "ok" for r in rows) >= 1364
    else:  # an unfinished run (resumable): the matrix must say it is partial, and how far it got
        assert f"{len(rows)} models of {len(names)} (partial)" in summary
    with path.open(newline="") as f:
        assert [r["name"] for r in csv.DictReader(f)] == sorted(have)
    readme = (SUPPORT.parent / "README.md").read_text()
    block = readme.split("<!-- sweep:begin -->\n", 1)[1].split("<!-- sweep:end -->", 1)[0]
    assert block.strip() == readme_excerpt(summary).strip(), (
        "README.md's sweep numbers differ from support/summary.md: run scripts/update_readme.py"
    )
