"""Benchmark Score-CAM against its floor (plain forwards of the masks it needs) and the references.

Score-CAM's work is one forward per channel of the map. cnnviz scores each distinct mask once
(constant maps share the zero mask, identical maps their twin's), so its floor is a plain
``model(batch)`` for that many masked inputs, in batches of the same size; pytorch-grad-cam's and
torchcam's ScoreCAM forward every channel. All run in the same process, interleaved round by
round, medians reported. A smaller input than 224 px keeps a run short (the references take
about 42 s per image on resnet18 at 224 px, one thread); the ratios hardly depend on it.

    .venv/bin/python bench/bench_score_cam.py --size 112 --rounds 3 --threads 1

With ``--trained`` it also reports how many forwards the skipping saves on the packaged trained
EfficientNet-Lite0 (examples/chelsea.jpg), where ReLU6 leaves whole channels at zero.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam's progress bars

import timm
import torch
from _timing import interleaved_medians

import cnnviz

ROOT = Path(__file__).resolve().parents[1]


def _forwards_note(ex: cnnviz.Explanation) -> tuple[int, int]:
    note = next(n for n in ex["score_cam"].notes if "masked forwards" in n)
    done, rest = note.split(" masked forwards for ", 1)
    return int(done), int(rest.split(" ", 1)[0])


def bench(name: str, size: int, rounds: int, batch: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    x = torch.randn(1, 3, size, size)
    ex = cnnviz.explain(model, x, ["score_cam"], params={"batch_size": batch})
    distinct, channels = _forwards_note(ex)
    target = int(ex.targets[0])
    masked = x.expand(distinct, -1, -1, -1).contiguous() * 0.5

    def floor():
        with torch.inference_mode():
            for i in range(0, distinct, batch):
                model(masked[i : i + batch])

    runs = {
        "cnnviz score_cam": lambda: cnnviz.explain(model, x, ["score_cam"], params={"batch_size": batch}),
        f"floor: {distinct} plain forwards": floor,
    }
    try:
        from pytorch_grad_cam import ScoreCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        def pgc():
            with ScoreCAM(model, [model.layer4]) as cam:
                cam.batch_size = batch
                cam(x, [ClassifierOutputTarget(target)])
            model.zero_grad(set_to_none=True)

        runs["pytorch-grad-cam ScoreCAM"] = pgc
    except ImportError:
        print("grad-cam not installed: its row is left out", file=sys.stderr)
    try:
        from torchcam.methods import ScoreCAM as TorchcamScoreCAM

        def tc():
            with TorchcamScoreCAM(model, "layer4", batch_size=batch, input_shape=(3, size, size)) as cam:
                with torch.no_grad():
                    out = model(x)
                cam(target, out)

        runs["torchcam ScoreCAM"] = tc
    except ImportError:
        print("torchcam not installed: its row is left out", file=sys.stderr)
    med = interleaved_medians(runs, rounds, warm_up=False)  # the references take ~40 s a call
    print(
        f"{name} at {size} px, batch {batch}, {rounds} rounds: {channels} channels, {distinct} distinct masks"
    )
    floor_s = med[f"floor: {distinct} plain forwards"]
    print("| | seconds (median) | x floor |\n| --- | ---: | ---: |")
    for k, v in med.items():
        print(f"| {k} | {v:.2f} | {v / floor_s:.2f}x |")
    return med


def trained_savings() -> None:
    from PIL import Image

    model = cnnviz.load_model("tf_efficientnet_lite0.in1k", weights="packaged", device="cpu")
    image = Image.open(ROOT / "examples" / "chelsea.jpg")
    ex = model.explain(image, ["score_cam"], params={"batch_size": 64})
    distinct, channels = _forwards_note(ex)
    print(
        f"trained EfficientNet-Lite0, chelsea.jpg: {distinct} forwards for {channels} channels "
        f"({channels - distinct} saved, {100 * (channels - distinct) / channels:.0f}%)"
    )
    print(next(n for n in ex["score_cam"].notes if "masked forwards" in n))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--trained", action="store_true", help="also report the saving on trained weights")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    bench(args.model, args.size, args.rounds, args.batch)
    if args.trained:
        trained_savings()
    return 0


if __name__ == "__main__":
    sys.exit(main())
