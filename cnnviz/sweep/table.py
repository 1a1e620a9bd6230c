"""The sweep's CSV: columns, reading (partial files included), appending, sorting; timm families."""

from __future__ import annotations

import csv
import functools
import os
from collections.abc import Iterable
from pathlib import Path

import timm

MODEL_COLUMNS = (
    "name",
    "family",
    "params_m",
    "head_added",
    "native_size",
    "input_size",
    "size_note",
    "dtype",
    "init_note",
)
ANATOMY_COLUMNS = (
    "layout",
    "map_shape",
    "prefix_tokens",
    "source",
    "head_kind",
    "head",
    "num_classes",
    "cam_exact",
    "cam_reason",
    "activations",
)
TAIL_COLUMNS = ("error", "t_build", "t_inspect", "t_explain", "t_total", "peak_rss_mb")
STATUSES = ("ok", "refused", "failed")


def method_columns(method_ids: Iterable[str]) -> list[str]:
    """All columns: a status and a note column per method, then the measurements each method's
    check reports (`Method.measures`, from the registry)."""
    import cnnviz  # the registry (here, not at import: the sweep's worker preloads this module)

    ids = list(method_ids)
    cols = [*MODEL_COLUMNS, *ANATOMY_COLUMNS]
    for m in ids:
        cols += [m, f"{m}_note"]
    for m in ids:
        cols += list(cnnviz.get_method(m).measures)
    return cols + list(TAIL_COLUMNS)


@functools.cache
def families() -> dict[str, str]:
    """timm model name -> the timm module it is registered in (``resnet``, ``vision_transformer``...)."""
    return {name: module for module in timm.list_modules() for name in timm.list_models(module=module)}


def family_of(name: str) -> str:
    """The timm module `name` is registered in ('' for an unknown name)."""
    arch = name.split(".", 1)[0]
    if not timm.is_model(arch):
        return ""
    return timm.models.model_entrypoint(arch).__module__.rsplit(".", 1)[-1]


def read_rows(path: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of a sweep CSV ([] when the file does not exist); a partial file is fine."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def read_header(path: str | os.PathLike) -> list[str]:
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return []
    with path.open(newline="") as f:
        return next(csv.reader(f), [])


class RowWriter:
    """Append rows to a CSV as they arrive, flushed one by one (the sweep is resumable from it).

    Raises:
        ValueError: the file exists with other columns (e.g. written before a method was added).
    """

    def __init__(self, path: str | os.PathLike, columns: list[str]):
        self.path = Path(path)
        header = read_header(self.path)
        if header and set(header) == set(columns):
            columns = header  # the file's order of the same columns
        self.columns = columns
        if header and header != columns:
            missing = sorted(set(columns) - set(header))
            extra = sorted(set(header) - set(columns))
            raise ValueError(
                f"--out {self.path}: its columns differ from this version's (missing {missing}, "
                f"unexpected {extra}); resume into a new file or delete it to start over"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=columns, extrasaction="raise")
        if not header:
            self._writer.writeheader()
            self._file.flush()

    def write(self, row: dict[str, object]) -> None:
        self._writer.writerow({k: _cell(v) for k, v in row.items()})
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _cell(value: object) -> object:
    if isinstance(value, str):
        return " ".join(value.split())  # one line per row, whatever the message held
    return value


def widen(path: str | os.PathLike, columns: list[str]) -> list[str]:
    """Give an existing CSV the columns it lacks (a method added since it was written), empty.

    Rows are kept as they are; the file is rewritten, the new columns inserted before the
    timings, only when its own header is a proper subset of `columns`. Returns the columns added.
    """
    header = read_header(path)
    added = [c for c in columns if c not in header]
    if not header or not added or set(header) - set(columns):
        return []
    tail = [c for c in header if c in TAIL_COLUMNS]
    at = header.index(tail[0]) if tail else len(header)
    columns = [*header[:at], *added, *header[at:]]  # the new ones before the timings
    rows = read_rows(path)
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
    tmp.replace(path)
    return added


def method_cells(method_id: str) -> list[str]:
    """The columns a method's result fills: status, note and its check's measurements."""
    import cnnviz

    return [method_id, f"{method_id}_note", *cnnviz.get_method(method_id).measures]


def sort_file(path: str | os.PathLike, columns: list[str]) -> int:
    """Rewrite the CSV sorted by name, keeping the last row of a name; returns the row count."""
    rows = {r["name"]: r for r in read_rows(path)}
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for name in sorted(rows):
            writer.writerow(rows[name])
    tmp.replace(path)
    return len(rows)
