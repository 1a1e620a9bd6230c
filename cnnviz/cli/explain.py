"""``cnnviz explain``: overlays, raw maps and a JSON manifest per image."""

from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

import cnnviz
from cnnviz import render, zoo
from cnnviz.zoo.record import RANDOM_WEIGHTS_NOTE, explanation_record, method_entries

from .util import UsageError, fail, load, params_help, parse_methods, parse_params

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def add_explain(sub: argparse._SubParsersAction) -> None:
    ids = ", ".join(m.id for m in cnnviz.list_methods())
    p = sub.add_parser(
        "explain",
        help="explain images with one model: overlays (PNG), raw maps (.npy), a JSON manifest",
        description="Explain each image (files, folders or globs) with one model. Per image, OUT/<stem>/ "
        "gets <method>.png (overlay on what the model saw), <method>.npy (the raw map) and "
        "manifest.json. Methods that do not apply to the model are reported, not fatal.",
        epilog="Methods: "
        + "; ".join(f"{m.id} ({m.label})" for m in cnnviz.list_methods())
        + ". Papers, costs and requirements: cnnviz methods.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, folders or glob patterns")
    p.add_argument(
        "--model", required=True, metavar="NAME", help="a curated id (cnnviz models) or any timm name"
    )
    p.add_argument("--methods", default="all", help=f"comma-separated, from: {ids}; or 'all' (default)")
    p.add_argument(
        "--param",
        action="append",
        metavar="[METHOD.]NAME=VALUE",
        help="a method parameter (repeatable); a bare NAME sets it for every chosen method that has "
        f"it. Parameters: {params_help()}",
    )
    p.add_argument(
        "--target", type=int, metavar="N", help="class index to explain (default: each image's top-1)"
    )
    p.add_argument(
        "--layer", metavar="NAME", help="layer for CAM-family methods (default: the model's final map)"
    )
    p.add_argument("--out", default="cnnviz-out", metavar="DIR", help="output folder (default cnnviz-out)")
    p.add_argument(
        "--weights",
        choices=zoo.WEIGHTS_POLICIES,
        help="hub (trained weights, the default; or CNNVIZ_WEIGHTS), packaged (trained weights from a pip "
        "package, for the models that have them), random, or auto (hub, else packaged, else random)",
    )
    p.add_argument(
        "--device", help="torch device (default CNNVIZ_DEVICE, else cuda when available, else cpu)"
    )
    p.add_argument(
        "--cmap", choices=render.COLORMAPS, default="jet", help="colormap for overlays (default jet)"
    )
    p.add_argument("--alpha", type=_unit_float, default=0.5, help="overlay strength in [0, 1] (default 0.5)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _unit_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value}")
    return value


def expand_images(items: list[str]) -> list[Path]:
    """Files as given, folders to their image files, glob patterns expanded; sorted, unique.

    Raises:
        UsageError: an argument that names nothing, or no image at all.
    """
    found: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            matches = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif glob.has_magic(item):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
        elif path.is_file():
            matches = [path]
        else:
            raise UsageError(f"IMAGE: {item!r} is neither a file, a folder nor a glob that matches")
        if not matches:
            raise UsageError(f"IMAGE: {item!r} contains or matches no image ({', '.join(IMAGE_SUFFIXES)})")
        found.extend(m for m in matches if m not in found)
    return found


def _out_dirs(images: list[Path], out: Path) -> list[Path]:
    """OUT/<stem>, with -2, -3... when two images share a stem."""
    dirs: list[Path] = []
    seen: dict[str, int] = {}
    for image in images:
        n = seen.get(image.stem, 0) + 1
        seen[image.stem] = n
        dirs.append(out / (image.stem if n == 1 else f"{image.stem}-{n}"))
    return dirs


def run_explain(args: argparse.Namespace) -> int:

    methods = parse_methods(args.methods)
    params = parse_params(args.param, methods)
    images = expand_images(args.images)
    model = load(args.model, args.weights, args.device)
    if model.random_weights:
        print(f"cnnviz explain: note: {model.display_name}: {RANDOM_WEIGHTS_NOTE}", file=sys.stderr)
    from tqdm import tqdm

    failures = 0
    reported = False
    bar = tqdm(
        list(zip(images, _out_dirs(images, Path(args.out)), strict=True)),
        file=sys.stderr,
        unit="image",
        desc="explain",
        disable=args.quiet,
    )
    for image_path, out_dir in bar:
        try:
            image = Image.open(image_path)
            image.load()
        except (OSError, UnidentifiedImageError) as exc:
            failures += 1
            bar.write(f"cnnviz explain: error: {image_path}: cannot read the image ({exc})", file=sys.stderr)
            continue
        try:
            ex = model.explain(
                image, methods=methods, target=args.target, layer=args.layer, strict=False, params=params
            )
        except ValueError as exc:  # a wrong --target or --layer: the same for every image
            raise UsageError(str(exc)) from None
        if not reported:
            reported = True
            for mid, reason in ex.refused.items():
                bar.write(f"cnnviz explain: {mid} does not apply to {model.name}: {reason}", file=sys.stderr)
            if not ex.attributions:
                bar.close()
                return fail("explain", f"none of the requested methods applies to {model.name}", 2)
        write_outputs(model, image, image_path, ex, out_dir, args)
    bar.close()
    print(f"wrote {len(images) - failures} result folder(s) under {args.out}")
    return 1 if failures else 0


def write_outputs(
    model: zoo.Model, image: Image.Image, image_path: Path, ex: cnnviz.Explanation, out_dir: Path, args
) -> Path:
    """Overlays, raw maps and manifest.json for one image; returns the manifest's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    view = model.model_view(image)
    view.save(out_dir / "input.png")
    requested = [cnnviz.get_method(m) for m in [*ex.attributions, *ex.refused]]
    bound = cnnviz.methods.resolve_params(
        requested, parse_params(getattr(args, "param", None), [m.id for m in requested])
    )
    for mid, att in ex.attributions.items():
        render.attribution_image(att, 0, view, cmap=args.cmap, alpha=args.alpha).save(out_dir / f"{mid}.png")
        np.save(out_dir / f"{mid}.npy", att.raw[0].cpu().numpy().astype(np.float32))
    manifest = explanation_record(
        model,
        ex,
        image,
        source=str(image_path),
        target_chosen="--target" if args.target is not None else "top-1",
        methods=method_entries(ex, bound, files=lambda mid: {"overlay": f"{mid}.png", "raw": f"{mid}.npy"}),
        render={"cmap": args.cmap, "alpha": args.alpha},
    )
    path = out_dir / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path
