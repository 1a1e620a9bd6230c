"""Read, decode and preprocess images: the CPU side of a batch job, the same in both modes.

`decode_batch` turns a batch of listed items (a dict of column arrays, the format Ray Data's
``map_batches`` uses) into model inputs; locally, `DecodeDataset` runs `decode_one` in a torch
`DataLoader`'s worker processes and `collate` builds the same dict. An image that cannot be read
becomes a row with an ``error`` and a zero input, so one bad file never stops a job.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import timm.data
import torch
from PIL import Image

from ..zoo.preprocess import Preprocessor
from .inputs import NO_TARGET, Item

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
NAN_BOX = (float("nan"),) * 4


def item_columns(items: Sequence[Item]) -> dict[str, np.ndarray]:
    """Items as column arrays (``box`` as (N, 4) with NaN where there is none)."""
    return {
        "image": np.array([i.image for i in items], dtype=object),
        "path": np.array([i.path for i in items], dtype=object),
        "target": np.array([i.target for i in items], dtype=np.int64),
        "box": np.array([i.box or NAN_BOX for i in items], dtype=np.float64).reshape(-1, 4),
    }


def item_rows(items: Sequence[Item]) -> list[dict[str, Any]]:
    """Items as rows (for ``ray.data.from_items``): the same columns as `item_columns`."""
    return [
        {"image": i.image, "path": i.path, "target": i.target, "box": list(i.box or NAN_BOX)} for i in items
    ]


@functools.lru_cache(maxsize=8)
def _preprocessor(config: tuple) -> Preprocessor:
    data_config = dict(config)
    return Preprocessor(data_config, timm.data.create_transform(**data_config, is_training=False))


def preprocessor_for(data_config: Mapping[str, Any]) -> Preprocessor:
    """The model's eval transform from its timm data config (cached per process)."""
    return _preprocessor(tuple(sorted(data_config.items())))


def open_image(path: str) -> Image.Image:
    """A loaded PIL image from a local path, or a URL through fsspec (``s3://``, ``gs://``...)."""
    if _URL.match(path):
        import fsspec

        with fsspec.open(path, "rb") as f:
            image = Image.open(f)
            image.load()
            return image
    image = Image.open(path)
    image.load()
    return image


def decode_one(row: Mapping[str, Any], data_config: Mapping[str, Any]) -> dict[str, Any]:
    """One listed image -> input tensor, sizes, boxes; or a zero input and the error."""
    pre = preprocessor_for(data_config)
    _, h, w = data_config["input_size"]
    out: dict[str, Any] = {
        "image": str(row["image"]),
        "path": str(row["path"]),
        "target": int(row["target"]),
        "box": np.asarray(row["box"], dtype=np.float64).reshape(4),
        "x": np.zeros((3, h, w), dtype=np.float32),
        "image_size": np.zeros(2, dtype=np.int64),
        "input_box": np.full(4, np.nan),
        "error": "",
    }
    try:
        image = open_image(out["path"])
        x = pre(image)
        seen = pre.seen_box(image)
    except Exception as exc:  # any decoder's failure is this image's error row, never the job's
        first = (str(exc).strip().splitlines() or [""])[0]
        out["error"] = f"cannot read the image: {type(exc).__name__}: {first}"[:500]
        return out
    if tuple(x.shape) != (3, h, w):
        out["error"] = f"preprocessing gave shape {tuple(x.shape)}, expected {(3, h, w)}"
        return out
    out["x"] = x.numpy().astype(np.float32, copy=False)
    out["image_size"] = np.array(upright_size(image), dtype=np.int64)
    out["input_box"] = np.asarray(to_input_box(out["box"], seen, (h, w)), dtype=np.float64)
    return out


def upright_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) after EXIF rotation: the frame that boxes (and `seen_box`) refer to."""
    width, height = image.size
    return (height, width) if image.getexif().get(0x0112, 1) in (5, 6, 7, 8) else (width, height)


def to_input_box(
    box: np.ndarray, seen: tuple[float, float, float, float], input_hw: tuple[int, int]
) -> tuple[float, float, float, float]:
    """A box in original pixels -> pixels of the model's input, clipped; NaN when none or cut off."""
    if not np.all(np.isfinite(box)):
        return NAN_BOX
    left, top, right, bottom = seen
    h, w = input_hw
    sx, sy = w / (right - left), h / (bottom - top)
    x0, x1 = np.clip([(box[0] - left) * sx, (box[2] - left) * sx], 0, w)
    y0, y1 = np.clip([(box[1] - top) * sy, (box[3] - top) * sy], 0, h)
    if x1 <= x0 or y1 <= y0:  # the box lies outside what the model sees
        return NAN_BOX
    return (float(x0), float(y0), float(x1), float(y1))


def collate(rows: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Decoded rows -> one batch of column arrays (strings as object arrays)."""
    batch: dict[str, np.ndarray] = {}
    for key in rows[0]:
        values = [r[key] for r in rows]
        if isinstance(values[0], str):
            batch[key] = np.array(values, dtype=object)
        else:
            batch[key] = np.stack([np.asarray(v) for v in values])
    return batch


def decode_batch(batch: Mapping[str, np.ndarray], data_config: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Ray Data's ``map_batches`` step: decode and preprocess every item of `batch`."""
    n = len(batch["image"])
    rows = [{k: batch[k][i] for k in ("image", "path", "target", "box")} for i in range(n)]
    return collate([decode_one(r, data_config) for r in rows])


class DecodeDataset(torch.utils.data.Dataset):
    """Items decoded one by one in a `DataLoader`'s worker processes (local mode)."""

    def __init__(self, items: Sequence[Item], data_config: Mapping[str, Any]):
        self.items = list(items)
        self.data_config = dict(data_config)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        row = {"image": item.image, "path": item.path, "target": item.target, "box": item.box or NAN_BOX}
        return decode_one(row, self.data_config)


def has_target(batch: Mapping[str, np.ndarray]) -> np.ndarray:
    return np.asarray(batch["target"]) != NO_TARGET
