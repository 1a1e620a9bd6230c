"""What a batch job reads: image files from folders, globs, or a CSV/Parquet listing.

A listing has a ``path`` column and, optionally, ``target`` (the class to explain, e.g. the
ground-truth label; empty for each model's top-1) and ``box`` (``x0 y0 x1 y1`` in pixels of the
original image, for localization metrics; separated by spaces, commas or semicolons, or a list
of four numbers in Parquet). Relative paths are read from the listing's own folder.
"""

from __future__ import annotations

import glob
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
LISTING_SUFFIXES = (".csv", ".parquet", ".pq")
NO_TARGET = -1


class InputError(ValueError):
    """The inputs cannot be listed: the message names the argument, the file and the line."""


@dataclass(frozen=True)
class Item:
    """One image of the job.

    Attributes:
        image: the row key in the output: the path as listed (``path#2``, ``#3``... when a listing
            names the same path more than once, e.g. to explain two classes of one image).
        path: where to read it (a local or shared path, or a URL that fsspec can open).
        target: the class to explain, or `NO_TARGET` for each model's top-1.
        box: (x0, y0, x1, y1) in pixels of the original image, or None.
    """

    image: str
    path: str
    target: int = NO_TARGET
    box: tuple[float, float, float, float] | None = None


def list_items(sources: Sequence[str]) -> list[Item]:
    """Folders (recursively), globs, image files and listings, in order, without repeats.

    Raises:
        InputError: a source that names nothing, a listing with a bad row, or no image at all.
    """
    raw: list[tuple[str, int, tuple[float, float, float, float] | None]] = []
    for source in sources:
        path = Path(source)
        if path.is_file() and path.suffix.lower() in LISTING_SUFFIXES:
            raw.extend(read_listing(path))
            continue
        if path.is_dir():
            found = sorted(str(p) for p in path.rglob("*") if _is_image(p))
        elif glob.has_magic(source):
            found = sorted(p for p in glob.glob(source, recursive=True) if _is_image(Path(p)))
        elif path.is_file():
            found = [source]
        else:
            raise InputError(f"IMAGES: {source!r} is neither a file, a folder, a listing nor a matching glob")
        if not found:
            raise InputError(f"IMAGES: {source!r} contains or matches no image ({', '.join(IMAGE_SUFFIXES)})")
        seen = {p for p, _, _ in raw}
        raw.extend((p, NO_TARGET, None) for p in found if p not in seen)
    if not raw:
        raise InputError("IMAGES: no image listed")
    return _keyed(raw)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def _keyed(raw: Iterable[tuple[str, int, tuple | None]]) -> list[Item]:
    """Items with unique keys: a path listed again becomes ``path#2``, ``path#3``..."""
    count: dict[str, int] = {}
    items = []
    for path, target, box in raw:
        n = count[path] = count.get(path, 0) + 1
        items.append(Item(path if n == 1 else f"{path}#{n}", path, target, box))
    return items


def read_listing(path: Path) -> list[tuple[str, int, tuple[float, float, float, float] | None]]:
    """(path, target, box) per row of a CSV or Parquet listing.

    Raises:
        InputError: no ``path`` column, unknown columns, or a bad value (with its row number).
    """
    if path.suffix.lower() == ".csv":
        import csv

        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            columns = list(reader.fieldnames or [])
            rows = [(i + 2, row) for i, row in enumerate(reader)]  # line numbers, after the header
        where = "line"
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        columns = table.column_names
        rows = [(i, row) for i, row in enumerate(table.to_pylist())]
        where = "row"
    if "path" not in columns:
        raise InputError(f"{path}: a listing needs a 'path' column; found {columns}")
    unknown = sorted(set(columns) - {"path", "target", "box"})
    if unknown:
        raise InputError(f"{path}: unknown columns {unknown}; a listing has path[, target][, box]")
    out = []
    for n, row in rows:
        at = f"{path}, {where} {n}"
        name = str(row.get("path") or "").strip()
        if not name:
            raise InputError(f"{at}: empty path")
        if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", name) and not Path(name).is_absolute():
            name = str(path.parent / name)
        out.append((name, parse_target(row.get("target"), at), parse_box(row.get("box"), at)))
    if not out:
        raise InputError(f"{path}: the listing has no rows")
    return out


def parse_target(value: object, at: str) -> int:
    if value is None or (isinstance(value, str) and not value.strip()):
        return NO_TARGET
    if isinstance(value, float) and math.isnan(value):
        return NO_TARGET
    try:
        target = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise InputError(f"{at}: target {value!r} is not a class index (an integer >= 0)") from None
    if target < 0:
        raise InputError(f"{at}: target {target} is negative; class indices start at 0")
    return target


def parse_box(value: object, at: str) -> tuple[float, float, float, float] | None:
    """(x0, y0, x1, y1) from ``"x0 y0 x1 y1"`` (spaces, commas or semicolons) or a list of four."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        parts: list = re.split(r"[\s,;]+", value.strip().strip("[]()"))
    elif isinstance(value, list | tuple):
        parts = list(value)
    else:
        raise InputError(f"{at}: box {value!r} is not four numbers x0 y0 x1 y1")
    try:
        box = tuple(float(v) for v in parts if v != "")
    except (TypeError, ValueError):
        raise InputError(f"{at}: box {value!r} is not four numbers x0 y0 x1 y1") from None
    if len(box) != 4 or not all(math.isfinite(v) for v in box):
        raise InputError(f"{at}: box {value!r} is not four finite numbers x0 y0 x1 y1")
    x0, y0, x1, y1 = box
    if not (x0 < x1 and y0 < y1):
        raise InputError(f"{at}: box {value!r} is empty: it needs x0 < x1 and y0 < y1 (pixels)")
    return (x0, y0, x1, y1)
