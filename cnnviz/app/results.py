"""What the app runs and hands back: overlays, comparison grids, placeholder tiles and zip downloads.

Free of Gradio like `cnnviz.app.settings`; `cnnviz.app.ui` calls these under the model's lock.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

import cnnviz
from cnnviz import render
from cnnviz.app.models import ModelPool, percent, short_name, weights_note, weights_tag
from cnnviz.zoo.record import explanation_record, method_entries

if TYPE_CHECKING:
    from cnnviz.types import Explanation
    from cnnviz.zoo import Model

CELL = 224  # side of one cell of the compare grid, in pixels


def placeholder(size: tuple[int, int], title: str, reason: str) -> Image.Image:
    """A grey tile saying why a method does not apply."""
    tile = Image.new("RGB", size, (225, 225, 225))
    draw = ImageDraw.Draw(tile)
    font = ImageFont.load_default(size=max(10, size[0] // 18))
    chars = max(12, int(size[0] / (getattr(font, "size", 11) * 0.55)))
    words, lines, line = f"{title} does not apply here: {reason}".split(), [], ""
    for word in words:
        if len(line) + len(word) + 1 > chars:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    draw.multiline_text((8, 8), "\n".join(lines), fill=(60, 60, 60), font=font, spacing=4)
    return tile


ARCHIVE_PREFIX = "cnnviz-app-"


def remove_stale_folders(parent: Path, max_age_s: float = 3600.0) -> list[Path]:
    """Remove the download folders that earlier app processes left in `parent` (after a crash).

    A folder is named ``cnnviz-app-<pid>-<random>``: it is removed when that process no longer
    runs. A folder without a process id (older versions) is removed once untouched for
    `max_age_s`. Folders of running apps (other processes, other test sessions) stay.
    """
    removed, now = [], time.time()
    for folder in parent.glob(f"{ARCHIVE_PREFIX}*"):
        pid = folder.name.removeprefix(ARCHIVE_PREFIX).split("-")[0]
        try:
            stale = not _running(int(pid)) if pid.isdigit() else now - folder.stat().st_mtime > max_age_s
        except OSError:
            continue
        if stale and folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


class ArchiveDir:
    """Where downloads and pictures are written; files older than an hour are removed on each write.

    Pictures go to files of their own rather than to Gradio as PIL images: Gradio names a PIL
    image's cache file by its content and rewrites it in place, so two visitors who get the same
    picture at once could be served a half-written file. A file path is copied atomically. The
    folder is removed when the process exits, and what crashed processes left is removed when the
    next one starts (`remove_stale_folders`).
    """

    def __init__(self, max_age_s: float = 3600.0):
        parent = Path(tempfile.gettempdir())
        remove_stale_folders(parent, max_age_s)
        self.path = Path(tempfile.mkdtemp(prefix=f"{ARCHIVE_PREFIX}{os.getpid()}-", dir=parent))
        self.max_age_s = max_age_s
        atexit.register(shutil.rmtree, self.path, ignore_errors=True)

    def new_file(self, stem: str, suffix: str) -> Path:
        now = time.time()
        for old in self.path.iterdir():
            with contextlib.suppress(FileNotFoundError):  # another request may prune it first
                if now - old.stat().st_mtime > self.max_age_s:
                    old.unlink()
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem)[:80]
        fd, name = tempfile.mkstemp(prefix=f"{safe}-", suffix=suffix, dir=self.path)
        os.close(fd)
        return Path(name)

    def new_zip(self, stem: str) -> Path:
        return self.new_file(stem, ".zip")

    def save_png(self, image: Image.Image, stem: str) -> str:
        path = self.new_file(stem, ".png")
        image.save(path, format="PNG")
        return str(path)


def write_zip(
    path: Path, arrays: Mapping[str, np.ndarray], images: Mapping[str, Image.Image], meta: dict
) -> Path:
    """A zip with maps/<name>.npy, images/<name>.png and meta.json."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, array in arrays.items():
            with zf.open(f"maps/{name}.npy", "w") as fh:
                np.save(fh, np.asarray(array, dtype=np.float32))
        for name, image in images.items():
            with zf.open(f"images/{name}.png", "w") as fh:
                image.save(fh, format="PNG")
        zf.writestr("meta.json", json.dumps(meta, indent=2, default=str))
    return path


def top_k(ex: Explanation, class_names: Sequence[str], k: int = 5) -> list[tuple[int, str, float]]:
    probs = ex.probabilities[0].detach().cpu()
    values, indices = probs.topk(min(k, probs.numel()))
    return [(int(i), class_names[int(i)], float(p)) for p, i in zip(values, indices, strict=True)]


def label_dict(top: Sequence[tuple[int, str, float]]) -> dict[str, float]:
    """gr.Label's {short name: probability}; a repeated name (ImageNet has two 'crane') gets its index."""
    names = [short_name(n) for _, n, _ in top]
    return {(s if names.count(s) == 1 else f"{s} (#{i})"): p for s, (i, _, p) in zip(names, top, strict=True)}


@dataclass(frozen=True)
class ExplainResult:
    top: tuple[tuple[int, str, float], ...]
    gallery: tuple[tuple[Image.Image, str], ...]
    archive: Path
    notes: str


def explain_one(
    model: Model,
    image: Image.Image,
    methods: Sequence[str],
    target: int | None,
    layer: str | None,
    cmap: str,
    alpha: float,
    archive: Path,
    params: Mapping[str, Mapping[str, object]] | None = None,
) -> ExplainResult:
    """Run the chosen methods on one image and render one overlay per method (refused ones as tiles).

    `params`: method id -> parameter values (checked by the registry before any work)."""
    if not methods:
        raise ValueError("choose at least one method")
    view = model.model_view(image)
    ex = model.explain(
        model.preprocess(image), list(methods), target=target, layer=layer, strict=False, params=params
    )
    tidx = int(ex.targets[0])
    tname = model.class_names[tidx]
    caption_name = short_name(tname)
    gallery, pictures, arrays, notes = [], {}, {}, {}
    for mid, att in ex.attributions.items():
        label = cnnviz.get_method(mid).label
        picture = render.attribution_image(att, 0, view, cmap=cmap, alpha=alpha)
        gallery.append((picture, f"{label} · {caption_name} · {att.layer or ex.layer}{weights_note(model)}"))
        pictures[mid], arrays[mid], notes[mid] = picture, att.raw[0].detach().cpu().numpy(), list(att.notes)
    for mid, reason in ex.refused.items():
        label = cnnviz.get_method(mid).label
        gallery.append((placeholder(view.size, label, reason), f"{label} · not applicable"))
    top = top_k(ex, model.class_names)
    bound = cnnviz.methods.resolve_params([cnnviz.get_method(m) for m in methods], params)
    meta = explanation_record(
        model,
        ex,
        image,
        source="upload",
        target_chosen="top-1" if target is None else "chosen",
        methods=method_entries(
            ex, bound, files=lambda mid: {"overlay": f"images/{mid}.png", "raw": f"maps/{mid}.npy"}
        ),
        render={"cmap": cmap, "alpha": alpha},
    )
    write_zip(archive, arrays, pictures, meta)
    text = "\n".join(f"- **{cnnviz.get_method(m).label}**: {'; '.join(n)}" for m, n in notes.items() if n)
    return ExplainResult(tuple(top), tuple(gallery), archive, text)


@dataclass(frozen=True)
class CompareRow:
    model: Model
    explanation: Explanation
    view: Image.Image


def shared_scales(rows: Sequence[CompareRow], methods: Sequence[str]) -> dict[str, tuple[Any, Any]]:
    """Per method, one (vmin, vmax) over all models, so that a column is drawn on one colour scale.

    CAM-family maps share their min-max range; gradient images share one saturation magnitude.
    """
    scales: dict[str, tuple[Any, Any]] = {}
    for mid in methods:
        raws = [
            r.explanation[mid].raw[0].detach().cpu().numpy()
            for r in rows
            if mid in r.explanation.attributions
        ]
        if raws:
            scales[mid] = (
                render.shared_range(raws) if raws[0].ndim == 2 else (None, render.gradient_scale(raws))
            )
    return scales


def compare_grid(
    rows: Sequence[CompareRow], methods: Sequence[str], cmap: str, alpha: float, shared: bool
) -> tuple[Image.Image, dict[str, Image.Image], dict[str, np.ndarray]]:
    """Rows are models, columns methods; each cell captioned with the model's top-1 prediction."""
    ranges = shared_scales(rows, methods) if shared else {}
    cells, captions, pictures, arrays = [], [], {}, {}
    for row in rows:
        ex, m = row.explanation, row.model
        tidx = int(ex.targets[0])
        prob = float(ex.probabilities[0, tidx])
        top1 = f"{short_name(m.class_names[tidx])} {percent(prob)} · {weights_tag(m)}"
        for mid in methods:
            label = cnnviz.get_method(mid).label
            if mid in ex.attributions:
                vmin, vmax = ranges.get(mid, (None, None))
                cell = render.attribution_image(
                    ex[mid], 0, row.view, cmap=cmap, alpha=alpha, vmin=vmin, vmax=vmax
                )
                key = f"{m.name}__{mid}"
                pictures[key], arrays[key] = cell, ex[mid].raw[0].detach().cpu().numpy()
            else:
                cell = placeholder(row.view.size, label, ex.refused.get(mid, "not computed"))
            cells.append(cell.resize((CELL, CELL)))
            captions.append(f"{m.label or m.name} · {label}\n{top1}")
    picture = render.grid(cells, captions, ncols=len(methods))
    legend = scale_legend(ranges, methods, cmap, picture.width)
    return (picture if legend is None else stack(picture, legend)), pictures, arrays


LEGEND_ROW = 28  # pixels per method in the colour-scale legend


def scale_legend(
    scales: Mapping[str, tuple[Any, Any]], methods: Sequence[str], cmap: str, width: int
) -> Image.Image | None:
    """One line per method drawn on a shared scale: a colour bar from its lowest to highest value.

    CAM-family columns share a (low, high) range, shown as a bar of `cmap` with both values;
    gradient columns share one saturation magnitude, stated in words. None when nothing is shared.
    """
    lines = [(cnnviz.get_method(m).label, scales[m]) for m in methods if m in scales]
    if not lines:
        return None
    width = max(width, 480)
    font = ImageFont.load_default(size=13)
    legend = Image.new("RGB", (width, 6 + LEGEND_ROW * len(lines)), (255, 255, 255))
    draw = ImageDraw.Draw(legend)
    label_w = max(int(draw.textlength(label, font=font)) for label, _ in lines) + 16
    for i, (label, (low, high)) in enumerate(lines):
        y = 6 + i * LEGEND_ROW
        draw.text((8, y + 2), label, fill=(40, 40, 40), font=font)
        if low is None:
            text = f"grey at 0, full colour at ±{float(high):.3g} (all models)"
            draw.text((label_w, y + 2), text, fill=(40, 40, 40), font=font)
            continue
        lo_text, hi_text = f"{float(low):.3g}", f"{float(high):.3g}"
        x0 = label_w + int(draw.textlength(lo_text, font=font)) + 6
        x1 = width - int(draw.textlength(hi_text, font=font)) - 14
        bar = render.colorize(np.tile(np.linspace(0.0, 1.0, max(x1 - x0, 10)), (14, 1)), cmap)
        legend.paste(bar, (x0, y + 3))
        draw.text((label_w, y + 2), lo_text, fill=(40, 40, 40), font=font)
        draw.text((x1 + 6, y + 2), hi_text, fill=(40, 40, 40), font=font)
    return legend


def stack(top: Image.Image, bottom: Image.Image) -> Image.Image:
    """`top` above `bottom` on white, left-aligned."""
    out = Image.new("RGB", (max(top.width, bottom.width), top.height + bottom.height), (255, 255, 255))
    out.paste(top, (0, 0))
    out.paste(bottom, (0, top.height))
    return out


def compare_table(rows: Sequence[CompareRow]) -> str:
    """One line per model: its top-1 class and probability, whether CAM is exact, its weights'
    origin (Hub repository, pip package and version, or random)."""
    lines = ["| model | top-1 | p | CAM | weights |", "|---|---|---|---|---|"]
    for row in rows:
        m, ex = row.model, row.explanation
        t = int(ex.targets[0])
        cam = "exact" if m.anatomy.cam_exact else "not exact"
        weights = m.weights_origin
        p = float(ex.probabilities[0, t])
        lines.append(f"| `{m.name}` | {short_name(m.class_names[t])} | {percent(p)} | {cam} | {weights} |")
    return "\n".join(lines)


def run_compare(
    pool: ModelPool,
    names: Sequence[str],
    image: Image.Image,
    methods: Sequence[str],
    step: Callable[[float, str], Any],
    params: dict[str, dict[str, object]] | None = None,
) -> list[CompareRow]:
    """Load and explain each model in turn (top-1 target, final map), reporting progress;
    `params`: the methods' parameters (`cnnviz.explain`'s)."""
    rows = []
    for i, name in enumerate(names):
        step(i / len(names), f"loading {name}")
        model, lock = pool.get(name)
        step((i + 0.5) / len(names), f"explaining with {name}")
        with lock:
            ex = model.explain(model.preprocess(image), list(methods), strict=False, params=params)
        rows.append(CompareRow(model, ex, model.model_view(image)))
    step(1.0, "rendering")
    return rows
