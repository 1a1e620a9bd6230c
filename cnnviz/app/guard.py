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

import io
import logging
import os
import stat
from collections.abc import Iterable, Mapping
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
