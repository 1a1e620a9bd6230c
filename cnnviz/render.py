"""Turn raw attributions into pictures: pure numpy, PIL and matplotlib colormaps.

Methods return raw tensors (see `cnnviz.types.Attribution`); everything visual lives here, so
the engine never depends on how a map is shown. Torch tensors are accepted wherever an array
is, through their ``detach().cpu().numpy()``; this module never imports torch.

Two families are drawn differently:

* CAM-family maps ``(h, w)`` are min-max normalized (or on a scale shared across a comparison
  grid), upsampled bilinearly to the image the model saw and overlaid with a colormap.
* Gradient images ``(3, H, W)`` are heavy-tailed: a few pixels carry huge values, so plain
  min-max turns them into grey noise. They are divided by a high percentile of ``|g|`` chosen
  by cumulative mass (the values above it hold only ~2% of the total), clipped, and shown
  either signed (zero is mid-grey, as in Springenberg et al., 2015, "Striving for Simplicity")
  or as an absolute-value heatmap (the saliency of Simonyan et al., 2013).
"""

from __future__ import annotations

import functools
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .common import close_matches, did_you_mean

COLORMAPS: tuple[str, ...] = ("jet", "turbo", "inferno", "viridis", "magma", "plasma", "RdBu_r")
"""Colormaps offered in the UI (any matplotlib name is accepted by the functions)."""

DIVERGING_COLORMAPS: tuple[str, ...] = ("RdBu_r", "coolwarm", "bwr", "seismic")
"""Colormaps whose middle is neutral: suitable for signed maps."""

GRADIENT_VIEWS: tuple[str, ...] = ("signed", "absolute")
"""How a gradient image is drawn: signed RGB around mid-grey, or ``max_c |g|`` as a heatmap."""

DEFAULT_CLIP_PERCENTILE = 98.0

GradientView = Literal["signed", "absolute"]


def _as_array(x: Any, name: str) -> np.ndarray:
    """A float32 numpy copy of an array or tensor (torch tensors via duck typing)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().float().numpy()
    arr = np.asarray(x, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` contains NaN or infinite values; cannot render it")
    return arr


def _as_rgb(image: Image.Image | np.ndarray, name: str = "image") -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    arr = np.asarray(image)
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4)):
        if arr.dtype != np.uint8:
            arr = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).round().astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    raise ValueError(f"`{name}` must be a PIL image or an (H, W[, 3|4]) array; got shape {arr.shape}")


def _check_ndim(arr: np.ndarray, name: str, allowed: tuple[int, ...]) -> None:
    if arr.ndim not in allowed:
        dims = " or ".join(f"{d}-D" for d in allowed)
        raise ValueError(f"`{name}` must be {dims}; got shape {tuple(arr.shape)}")


# ---------------------------------------------------------------- normalization


def normalize_cam(map2d: Any, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Min-max normalize a CAM-family map to ``[0, 1]``.

    Args:
        map2d: ``(h, w)`` map (array or tensor).
        vmin, vmax: a scale shared across several maps (see `shared_range`); by default the
            map's own minimum and maximum. Values outside are clipped.

    Returns:
        float32 ``(h, w)`` in ``[0, 1]``; all zeros for a constant map (nothing stands out).
    """
    arr = _as_array(map2d, "map2d")
    _check_ndim(arr, "map2d", (2,))
    lo = float(arr.min()) if vmin is None else float(vmin)
    hi = float(arr.max()) if vmax is None else float(vmax)
    if not hi > lo:
        return np.zeros_like(arr)
    return np.clip((arr - lo) / (hi - lo), 0.0, 1.0)


def shared_range(maps: Sequence[Any]) -> tuple[float, float]:
    """``(vmin, vmax)`` over several maps, to draw a comparison grid on one scale."""
    if len(maps) == 0:
        raise ValueError("`maps` is empty; pass at least one map")
    arrays = [_as_array(m, "maps") for m in maps]
    return min(float(a.min()) for a in arrays), max(float(a.max()) for a in arrays)


def clip_scale(values: Any, clip_percentile: float = DEFAULT_CLIP_PERCENTILE) -> float:
    """The magnitude at which to saturate a heavy-tailed map.

    Sort ``|values|`` and return the smallest one at which the running sum reaches
    `clip_percentile` % of the total: the values above it, which hold the remaining mass
    (2% by default), are treated as outliers and clipped. This is the normalization captum's
    ``visualize_image_attr`` uses (Kokhlikyan et al., 2020); 0.0 for an all-zero input.
    """
    if not 0.0 < clip_percentile <= 100.0:
        raise ValueError(f"`clip_percentile` must be in (0, 100]; got {clip_percentile}")
    mags = np.sort(np.abs(_as_array(values, "values")).ravel())
    if mags.size == 0:
        raise ValueError("`values` is empty")
    cumulative = np.cumsum(mags, dtype=np.float64)
    total = cumulative[-1]
    if total <= 0.0:
        return 0.0
    index = int(np.searchsorted(cumulative, total * clip_percentile / 100.0, side="left"))
    return float(mags[min(index, mags.size - 1)])


def gradient_scale(grads: Sequence[Any], clip_percentile: float = DEFAULT_CLIP_PERCENTILE) -> float:
    """One `clip_scale` over several gradient images, for a comparison grid on one scale."""
    if len(grads) == 0:
        raise ValueError("`grads` is empty; pass at least one gradient")
    return clip_scale(np.concatenate([_as_array(g, "grads").ravel() for g in grads]), clip_percentile)


def normalize_gradient(
    grad: Any,
    mode: GradientView = "signed",
    clip_percentile: float = DEFAULT_CLIP_PERCENTILE,
    scale: float | None = None,
) -> np.ndarray:
    """Scale a gradient image for display, never by plain min-max.

    Args:
        grad: ``(C, H, W)`` or ``(H, W)`` signed gradient.
        mode: ``"signed"`` keeps the shape and sign, in ``[-1, 1]`` (0 stays 0);
            ``"absolute"`` reduces channels by ``max_c |g|`` to ``(H, W)`` in ``[0, 1]``.
        clip_percentile: see `clip_scale`; the scale is taken over the values shown
            (all of ``|g|`` when signed, the channel-reduced map when absolute).
        scale: a fixed saturation magnitude (e.g. `gradient_scale` over a grid) instead.

    Returns:
        float32 array; all zeros for an all-zero gradient.
    """
    arr = _as_array(grad, "grad")
    _check_ndim(arr, "grad", (2, 3))
    if mode == "absolute":
        arr = np.abs(arr).max(axis=0) if arr.ndim == 3 else np.abs(arr)
        low = 0.0
    elif mode == "signed":
        low = -1.0
    else:
        raise ValueError(_unknown("mode", mode, GRADIENT_VIEWS))
    s = clip_scale(arr, clip_percentile) if scale is None else float(scale)
    if not s > 0.0:
        return np.zeros_like(arr)
    return np.clip(arr / s, low, 1.0)


# ---------------------------------------------------------------- colour


def _unknown(name: str, value: object, allowed: Sequence[str]) -> str:
    hint = did_you_mean(close_matches(value, allowed), quote=True)
    return f"unknown `{name}` {value!r}: expected one of {', '.join(map(repr, allowed))}{hint}"


def _colormap(cmap: str) -> matplotlib.colors.Colormap:
    if cmap in matplotlib.colormaps:
        return matplotlib.colormaps[cmap]
    hint = did_you_mean(close_matches(cmap, matplotlib.colormaps), quote=True)
    offered = ", ".join(map(repr, COLORMAPS))
    raise ValueError(f"unknown `cmap` {cmap!r}: use a matplotlib colormap such as {offered}{hint}")


def colorize(map01: Any, cmap: str = "jet") -> Image.Image:
    """An RGB picture of a ``(H, W)`` map in ``[0, 1]`` through a matplotlib colormap."""
    arr = _as_array(map01, "map01")
    _check_ndim(arr, "map01", (2,))
    rgba = _colormap(cmap)(np.clip(arr, 0.0, 1.0), bytes=True)
    return Image.fromarray(np.ascontiguousarray(rgba[..., :3]))


def resize_map(map2d: Any, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a ``(h, w)`` map to ``size = (width, height)`` (PIL's order)."""
    arr = _as_array(map2d, "map2d")
    _check_ndim(arr, "map2d", (2,))
    if (arr.shape[1], arr.shape[0]) == tuple(size):
        return arr
    resized = Image.fromarray(arr).resize((int(size[0]), int(size[1])), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def overlay(
    image: Image.Image | np.ndarray, map01: Any, cmap: str = "jet", alpha: float = 0.5
) -> Image.Image:
    """Blend a colorized ``[0, 1]`` map over `image`: ``(1 - alpha) * image + alpha * colour``.

    The map is resized bilinearly to the image when sizes differ. `alpha` 0 gives the image,
    1 the colormap alone.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"`alpha` must be in [0, 1]; got {alpha}")
    base = _as_rgb(image)
    arr = _as_array(map01, "map01")
    _check_ndim(arr, "map01", (2,))
    heat = np.asarray(colorize(resize_map(arr, base.size), cmap), dtype=np.float32)
    mixed = (1.0 - alpha) * np.asarray(base, dtype=np.float32) + alpha * heat
    return Image.fromarray(np.clip(mixed.round(), 0, 255).astype(np.uint8))


def gradient_image(
    grad: Any,
    view: GradientView = "signed",
    cmap: str = "inferno",
    clip_percentile: float = DEFAULT_CLIP_PERCENTILE,
    scale: float | None = None,
) -> Image.Image:
    """A readable picture of a ``(3, H, W)`` (or ``(H, W)``) gradient.

    ``"signed"``: each channel becomes ``0.5 + 0.5 * g / scale``, so zero is mid-grey and the
    colours show which input channel pushes the score up or down. ``"absolute"``: ``max_c |g|``
    through `cmap`. Both clip the ~2% outlier mass (see `clip_scale`).
    """
    norm = normalize_gradient(grad, view, clip_percentile, scale)
    if view == "absolute":
        return colorize(norm, cmap)
    grey = np.clip((0.5 + 0.5 * norm) * 255.0, 0, 255).round().astype(np.uint8)
    if grey.ndim == 3:
        grey = np.moveaxis(grey, 0, -1)
        if grey.shape[-1] != 3:  # not an RGB gradient: show the channel mean
            grey = grey.mean(axis=-1).round().astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(grey)).convert("RGB")


def attribution_image(
    attribution: Any,
    index: int = 0,
    base_image: Image.Image | np.ndarray | None = None,
    cmap: str = "jet",
    alpha: float = 0.5,
    vmin: float | None = None,
    vmax: float | None = None,
    *,
    view: GradientView = "signed",
    clip_percentile: float = DEFAULT_CLIP_PERCENTILE,
) -> Image.Image:
    """The picture for sample `index` of an attribution, drawn the way its family needs.

    Args:
        attribution: a `cnnviz.types.Attribution` (or its ``raw``): ``(B, h, w)`` CAM-family
            maps or ``(B, 3, H, W)`` gradient images.
        index: which sample of the batch.
        base_image: the image the model saw (``model_view``); CAM maps are upsampled to it and
            overlaid, gradient images are resized to it. Required for CAM maps.
        cmap, alpha: colormap and overlay strength (CAM maps and the absolute gradient view).
        vmin, vmax: shared scale. CAM maps: the min-max range (see `shared_range`). Gradient
            images: `vmax` is the saturation magnitude (see `gradient_scale`), `vmin` unused.
        view: gradient images only: ``"signed"`` (grey-centred RGB, `alpha` unused) or
            ``"absolute"`` (heatmap, overlaid on `base_image` when given).
        clip_percentile: gradient images only; see `clip_scale`.
    """
    raw = _as_array(getattr(attribution, "raw", attribution), "attribution")
    _check_ndim(raw, "attribution", (3, 4))
    if not -raw.shape[0] <= index < raw.shape[0]:
        raise ValueError(f"`index` {index} is out of range for a batch of {raw.shape[0]}")
    sample = raw[index]
    if raw.ndim == 3:  # CAM family: (h, w) at the map's resolution
        if base_image is None:
            raise ValueError("`base_image` is required for CAM-family maps: they are overlaid on it")
        return overlay(base_image, normalize_cam(sample, vmin, vmax), cmap, alpha)
    if view not in GRADIENT_VIEWS:
        raise ValueError(_unknown("view", view, GRADIENT_VIEWS))
    if view == "absolute" and base_image is not None:
        return overlay(base_image, normalize_gradient(sample, "absolute", clip_percentile, vmax), cmap, alpha)
    picture = gradient_image(sample, view, cmap, clip_percentile, vmax)
    if base_image is not None and _as_rgb(base_image, "base_image").size != picture.size:
        picture = picture.resize(_as_rgb(base_image, "base_image").size, Image.Resampling.BILINEAR)
    return picture


# ---------------------------------------------------------------- layout


@functools.lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """DejaVu Sans from matplotlib's own data (it covers Greek and symbols that captions use),
    else PIL's default font."""
    dejavu = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    if dejavu.is_file():
        return ImageFont.truetype(str(dejavu), size)
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed-size bitmap font
        return ImageFont.load_default()


def _wrap(text: str, font: Any, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to `width` pixels; words longer than a line are cut."""
    avg = max(font.getlength("x"), 1.0)
    lines: list[str] = []
    for paragraph in str(text).splitlines() or [""]:
        chars = max(int(width / avg), 1)
        while True:
            wrapped = textwrap.wrap(paragraph, chars, break_long_words=True) or [""]
            if chars == 1 or all(font.getlength(line) <= width for line in wrapped):
                break
            chars -= 1
        lines.extend(wrapped)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and font.getlength(last + "...") > width:
            last = last[:-1]
        lines[-1] = last + "..."
    return lines


def grid(
    images: Sequence[Image.Image | np.ndarray],
    captions: Sequence[str] | None = None,
    ncols: int = 3,
    *,
    pad: int = 8,
    font_size: int = 14,
    max_caption_lines: int = 4,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """Lay images out in rows of `ncols`, each with its caption wrapped underneath.

    Cells are as large as the largest image; smaller images are centred. Captions longer than
    `max_caption_lines` lines end with ``...``.
    """
    if len(images) == 0:
        raise ValueError("`images` is empty; pass at least one image")
    if ncols < 1:
        raise ValueError(f"`ncols` must be >= 1; got {ncols}")
    if captions is not None and len(captions) != len(images):
        raise ValueError(f"`captions` has {len(captions)} entries for {len(images)} images")
    pictures = [_as_rgb(im, "images") for im in images]
    cell_w = max(p.width for p in pictures)
    cell_h = max(p.height for p in pictures)
    font = _font(font_size)
    line_h = int(font_size * 1.3)
    wrapped = [_wrap(c, font, cell_w, max_caption_lines) for c in captions] if captions else []
    ncols = min(ncols, len(pictures))
    nrows = -(-len(pictures) // ncols)
    text_h = [
        max((len(w) for w in wrapped[r * ncols : (r + 1) * ncols]), default=0) * line_h for r in range(nrows)
    ]
    width = ncols * cell_w + (ncols + 1) * pad
    height = sum(cell_h + t + pad for t in text_h) + pad
    canvas = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(canvas)
    top = pad
    for r in range(nrows):
        for c in range(ncols):
            i = r * ncols + c
            if i >= len(pictures):
                break
            left = pad + c * (cell_w + pad)
            pic = pictures[i]
            canvas.paste(pic, (left + (cell_w - pic.width) // 2, top + (cell_h - pic.height) // 2))
            for k, line in enumerate(wrapped[i] if wrapped else []):
                draw.text((left, top + cell_h + k * line_h), line, fill=(0, 0, 0), font=font)
        top += cell_h + text_h[r] + pad
    return canvas


# ----------------------------------------------------------------------------- evaluation curves


def curves_figure(curves: dict, title: str = "", random_weights: bool = False, row: int = 0):
    """A matplotlib figure: deletion and insertion curves side by side, one line per method,
    each curve's area in the legend.

    Args:
        curves: method id -> an object with ``fractions`` (P,), ``deletion`` and ``insertion``
            ((N, P) or None) tensors or arrays (`cnnviz.evaluate.Curves`).
        title: the figure's title; random weights add a warning to it.
        row: which image of the batch to draw.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6), dpi=100)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, kind, better in ((axes[0], "deletion", "lower"), (axes[1], "insertion", "higher")):
        for method, c in curves.items():
            values = getattr(c, kind, None)
            if values is None:
                continue
            x = np.asarray(c.fractions, dtype=np.float64)
            y = np.asarray(values[row], dtype=np.float64)
            ax.plot(x, y, label=f"{method} ({np.trapezoid(y, x):.3f})", lw=1.6)
        ax.set_title(f"{kind} (area: {better} is better)", fontsize=10)
        ax.set_xlabel("fraction of pixels " + ("removed" if kind == "deletion" else "restored"))
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8, loc="best")
    axes[0].set_ylabel("probability of the class")
    full = title + ("  [RANDOM WEIGHTS: untrained model]" if random_weights else "")
    if full:
        fig.suptitle(full, fontsize=10, color="crimson" if random_weights else "black")
    fig.tight_layout()
    return fig


def curves_image(curves: dict, title: str = "", random_weights: bool = False, row: int = 0) -> Image.Image:
    """`curves_figure` as an RGB PIL image."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = curves_figure(curves, title, random_weights, row)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy())
