"""What a visitor sends, checked before any work starts: file references and pictures.

A public app receives every input from people it does not know. Gradio's API accepts a file
reference (``{"path": ...}``) in the request body, and Gradio's own image component opens whatever
path a reference without its ``meta`` field names. Here a reference is accepted only when it
resolves (symlinks followed, ``..`` removed) to a regular file inside the folder this server writes
visitors' uploads to (Gradio's upload cache, where Gradio also copies the shipped examples that
the page offers); everything else
gets the one sentence `REFUSED_FILE`, whether or not the path exists, so that the answer says
nothing about the server's disk. Pictures are then decoded here, not by Gradio, and brought to RGB
by the library's own `cnnviz.zoo.preprocess.to_rgb` (16-bit and float images, CMYK, palettes, alpha,
EXIF rotation).

Free of Gradio: `cnnviz.app.ui` wires these checks to its components and turns `Refused` into
`gr.Error`.
"""

from __future__ import annotations

import difflib
import io
import logging
import math
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from cnnviz.app.settings import MAX_IMAGE_SIDE
from cnnviz.zoo.preprocess import to_rgb

log = logging.getLogger(__name__)

REFUSED_FILE = (
    "This image cannot be used: send the picture itself (upload, paste or take a photo), "
    "or pick one of the examples."
)
UNREADABLE = (
    "The file sent is not an image that can be read. Upload a PNG, JPEG, WebP, BMP, GIF or TIFF picture."
)
SVG = "SVG drawings are not supported: upload a PNG, JPEG, WebP, BMP, GIF or TIFF picture."
MAX_PATH_CHARS = 1024
MAX_FILE_MB = 20  # an upload larger than this is refused before it is decoded
MAX_PIXELS = 40_000_000  # ~ 6300 x 6300: decoding is refused above this (before pixels are read)
_SVG_SNIFF = (b"<svg", b"<?xml", b"<!DOCTYPE svg")


class Refused(ValueError):
    """An input refused by a guard; its message is meant for the visitor and says nothing internal."""


class FileGate:
    """Accepts file references that resolve inside given folders, and nothing else.

    Args:
        roots: folders whose files may be read (the app gives Gradio's upload cache).
            They are resolved once, here, so a symlinked temporary folder still matches.
    """

    def __init__(self, roots: Iterable[str | os.PathLike]):
        self.roots = tuple(Path(os.path.realpath(root)) for root in roots)
        if not self.roots:
            raise ValueError("FileGate needs at least one folder to accept files from")

    def resolve(self, reference: object) -> Path:
        """The real path of an accepted reference, or `Refused` with `REFUSED_FILE`.

        `reference` is what an API request carries for an image: a mapping or an object with a
        ``path`` (Gradio's ``FileData`` / ``ImageData``), with or without ``meta``. Its ``url``
        is never read. The path must be a plain string (no URL scheme, no NUL) that resolves to
        a regular file inside one of `roots`.
        """
        path = reference.get("path") if isinstance(reference, Mapping) else getattr(reference, "path", None)
        if not isinstance(path, str) or not path or len(path) > MAX_PATH_CHARS or "\x00" in path:
            raise Refused(REFUSED_FILE)
        if "://" in path or path.lower().startswith(("data:", "file:")):
            raise Refused(REFUSED_FILE)
        real = Path(os.path.realpath(path))
        if not any(real.is_relative_to(root) and real != root for root in self.roots):
            raise Refused(REFUSED_FILE)
        try:
            if not stat.S_ISREG(real.stat().st_mode):
                raise Refused(REFUSED_FILE)
        except OSError:
            raise Refused(REFUSED_FILE) from None
        return real


def check_references(payload: object, gate: FileGate, limit: int = 64) -> int:
    """Check every file reference (a mapping with a ``path`` key) inside a request's input value.

    Returns how many there were; raises `Refused` for the first one `gate` refuses, and for
    values nested deeper than 16 levels or holding more than `limit` references.
    """
    found, stack = 0, [(payload, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > 16:
            raise Refused(REFUSED_FILE)
        if isinstance(value, Mapping):
            if "path" in value:
                gate.resolve(value)
                found += 1
                if found > limit:
                    raise Refused(REFUSED_FILE)
            stack.extend((v, depth + 1) for v in value.values() if isinstance(v, Mapping | list))
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value if isinstance(v, Mapping | list))
    return found


def read_image(path: str | os.PathLike) -> Image.Image:
    """Decode an accepted file into an upright 8-bit RGB picture no larger than `MAX_IMAGE_SIDE`.

    The file is opened without following a symlink (the gate resolved it already), bounded in
    bytes and in pixels before decoding, and converted by `cnnviz.zoo.preprocess.to_rgb`.

    Raises:
        Refused: not a picture PIL can read (`UNREADABLE`), an SVG drawing (`SVG`), or too large.
    """
    data = _read_bounded(path)
    head = data[:512].lstrip().lower()
    if str(path).lower().endswith(".svg") or any(head.startswith(s.lower()) for s in _SVG_SNIFF):
        raise Refused(SVG)
    try:
        with Image.open(io.BytesIO(data)) as opened:
            width, height = opened.size
            if width * height > MAX_PIXELS:
                raise Refused(
                    f"The picture is {width} x {height} pixels; pictures up to "
                    f"{MAX_PIXELS // 1_000_000} million pixels are accepted. Send a smaller one."
                )
            opened.load()
            picture = to_rgb(opened)
    except Refused:
        raise
    except Image.DecompressionBombError:
        raise Refused(
            f"The picture has more than {MAX_PIXELS // 1_000_000} million pixels. Send a smaller one."
        ) from None
    except Exception as err:  # PIL raises many types for bad data; the visitor gets one sentence
        log.info("unreadable upload %s: %s: %s", path, type(err).__name__, err)
        raise Refused(UNREADABLE) from None
    if max(picture.size) > MAX_IMAGE_SIDE:
        picture.thumbnail((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE))
    return picture


def _read_bounded(path: str | os.PathLike) -> bytes:
    limit = int(MAX_FILE_MB * 2**20)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        raise Refused(REFUSED_FILE) from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise Refused(REFUSED_FILE)
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise Refused(f"The file is larger than {MAX_FILE_MB} MB; send a smaller picture.")
    return data


# ----------------------------------------------------------------------------- fields


MAX_TEXT = 200  # characters in one text value (the longest ImageNet class line is ~120)
MAX_ITEMS = 32  # values in one list (methods, models)
ECHO_CHARS = 40  # at most this much of what a visitor sent is quoted back
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def echo(value: object) -> str:
    """A short quote of a visitor's value: at most `ECHO_CHARS` characters of text, else its type."""
    if isinstance(value, str):
        text = value if len(value) <= ECHO_CHARS else value[: ECHO_CHARS - 1] + "…"
        return repr(_CONTROL.sub("?", text))
    return f"a value of type {type(value).__name__}"


@dataclass(frozen=True)
class Field:
    """What one input of an event may hold, checked before Gradio or a handler sees the value.

    Attributes:
        label: the input's name as a visitor sees it.
        kind: ``text`` (a string), ``texts`` (a list of strings), ``number`` or ``flag``.
        choices: the values allowed, or None for free text.
        low, high: bounds of a number.
        max_items: most values in a ``texts`` list.
        optional: whether None (nothing chosen) is allowed.
    """

    label: str
    kind: str
    choices: tuple[object, ...] | None = None
    low: float | None = None
    high: float | None = None
    max_items: int = MAX_ITEMS
    optional: bool = True

    def check(self, value: object) -> None:
        """Raise `Refused` with a plain sentence unless `value` fits this field."""
        if value is None:
            if self.optional:
                return
            raise Refused(f"{self.label}: a value is needed.")
        if self.kind == "flag":
            if not isinstance(value, bool):
                raise Refused(f"{self.label}: expected true or false, got {echo(value)}.")
        elif self.kind == "number":
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise Refused(f"{self.label}: expected a number, got {echo(value)}.")
            low = -math.inf if self.low is None else self.low
            high = math.inf if self.high is None else self.high
            if not low <= value <= high:
                raise Refused(f"{self.label}: {value:g} is outside {low:g} to {high:g}.")
        elif self.kind == "texts":
            if not isinstance(value, list):
                raise Refused(f"{self.label}: expected a list, got {echo(value)}.")
            if len(value) > self.max_items:
                raise Refused(f"{self.label}: at most {self.max_items} values, got {len(value)}.")
            for item in value:
                self._check_text(item)
        else:
            self._check_text(value)

    def _check_text(self, value: object) -> None:
        if not isinstance(value, str):
            raise Refused(f"{self.label}: expected text, got {echo(value)}.")
        text = value
        if len(text) > MAX_TEXT:
            raise Refused(f"{self.label}: {echo(text)} is too long (at most {MAX_TEXT} characters).")
        if _CONTROL.search(text):
            raise Refused(f"{self.label}: {echo(text)} holds control characters.")
        if self.choices is not None and value not in self.choices:
            names = list(dict.fromkeys(c for c in self.choices if isinstance(c, str)))
            close = difflib.get_close_matches(text, names, n=3, cutoff=0.5)
            hint = f" Close matches: {', '.join(close)}." if close else ""
            raise Refused(f"{self.label}: {echo(text)} is not offered here.{hint}")


# ----------------------------------------------------------------------------- messages

FAILED = (
    "Something went wrong on the server while doing this (the details are in its log). "
    "The app is still running; try another model or picture."
)
OUT_OF_MEMORY = (
    "The server ran out of memory for this request. Try a smaller model or picture; the app is still running."
)
MAX_MESSAGE = 400
_PATH = re.compile(r"(?<![\w.])(?:[A-Za-z]:)?(?:/[\w.@+~-]+){2,}/?")
_ADDRESS = re.compile(r"\s*at 0x[0-9a-fA-F]+")


def plain(message: str) -> str:
    """A library error made fit for a visitor: no server paths, no memory addresses, bounded length."""
    text = _ADDRESS.sub("", _PATH.sub("(a server path)", message)).strip()
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def failure_message(err: BaseException) -> str:
    """The one sentence a visitor sees for an unexpected failure (the log has the rest)."""
    text = str(err).lower()
    if isinstance(err, MemoryError) or "out of memory" in text or "alloc" in text:
        return OUT_OF_MEMORY
    return FAILED
