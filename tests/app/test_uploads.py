"""Uploaded pictures of every kind reach the model as the library converts them (`to_rgb`).

Each file is written the way a camera, scanner or editor writes it; the app's reader must give an
upright 8-bit RGB picture whose values follow the file's, never PIL's clipped ``convert("RGB")``.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnviz.app import guard
from cnnviz.app import settings as core


def png16(values: np.ndarray) -> bytes:
    """A 16-bit PNG (grey, grey+alpha, RGB or RGBA by the last axis), written by hand: PIL cannot."""
    values = values if values.ndim == 3 else values[..., None]
    height, width, channels = values.shape
    rows = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    colour = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    header = struct.pack(">IIBBBBB", width, height, 16, colour, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def ramp(height: int = 48, width: int = 64) -> np.ndarray:
    """0..1 from left to right."""
    return np.tile(np.linspace(0.0, 1.0, width), (height, 1))


def write(tmp_path: Path, name: str, data: bytes | Image.Image, **save) -> Path:
    path = tmp_path / name
    if isinstance(data, Image.Image):
        data.save(path, **save)
    else:
        path.write_bytes(data)
    return path


def test_16_bit_grey_keeps_its_values(tmp_path):
    values = (1800 + ramp() * (64000 - 1800)).astype(np.uint16)  # 7..249 in 8 bits
    picture = guard.read_image(write(tmp_path, "grey16.png", png16(values)))
    rgb = np.asarray(picture)
    assert picture.mode == "RGB" and picture.size == (64, 48)
    assert rgb[..., 0].min() == 7 and rgb[..., 0].max() == 249  # PIL's convert("RGB") gives all 255
    assert (rgb[..., 0] == rgb[..., 1]).all() and (np.diff(rgb[0, :, 0].astype(int)) >= 0).all()


def test_16_bit_rgb_and_rgba(tmp_path):
    red = (ramp() * 65535).astype(np.uint16)
    rgb16 = np.stack([red, np.zeros_like(red), np.full_like(red, 32896)], axis=-1)  # blue 128
    picture = np.asarray(guard.read_image(write(tmp_path, "rgb16.png", png16(rgb16))))
    assert picture[0, 0].tolist() == [0, 0, 128] and picture[0, -1].tolist() == [255, 0, 128]
    rgba16 = np.concatenate([rgb16, np.zeros_like(red)[..., None]], axis=-1)  # fully transparent
    clear = np.asarray(guard.read_image(write(tmp_path, "rgba16.png", png16(rgba16))))
    assert (clear == 255).all()  # transparent pixels over white, not their hidden colour


def test_float_tiff(tmp_path):
    values = ramp().astype(np.float32) * 0.5 + 0.25  # 0.25..0.75
    picture = np.asarray(guard.read_image(write(tmp_path, "float.tif", Image.fromarray(values, mode="F"))))
    assert picture[0, 0, 0] == 64 and picture[0, -1, 0] == 191


def test_cmyk_palette_and_grey_alpha(tmp_path):
    cmyk = Image.new("CMYK", (32, 24), (0, 255, 255, 0))  # pure red in print colours
    red = np.asarray(guard.read_image(write(tmp_path, "cmyk.jpg", cmyk, quality=95)))
    assert abs(red[..., 0].mean() - 255) < 8 and red[..., 1:].mean() < 12
    palette = Image.fromarray((ramp() * 255).astype(np.uint8)).convert("P")
    assert palette.mode == "P"
    stepped = np.asarray(guard.read_image(write(tmp_path, "palette.png", palette)))
    assert stepped[0, 0, 0] < 10 and stepped[0, -1, 0] > 245
    la = Image.merge("LA", [Image.new("L", (16, 16), 0), Image.new("L", (16, 16), 0)])  # black, transparent
    assert (np.asarray(guard.read_image(write(tmp_path, "la.png", la))) == 255).all()


def test_exif_rotation_is_applied(tmp_path):
    image = Image.new("RGB", (60, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 10, 20))  # red on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display rotated 90 degrees clockwise
    picture = guard.read_image(write(tmp_path, "phone.jpg", image, exif=exif, quality=95))
    top = np.asarray(picture)[0, 10]
    assert picture.size == (20, 60) and top[0] > 200 and top[2] < 60  # red is now on top


def test_svg_text_and_bombs_get_plain_sentences(tmp_path):
    svg = write(tmp_path, "drawing.png", b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>')
    with pytest.raises(guard.Refused, match="SVG drawings are not supported"):
        guard.read_image(svg)
    with pytest.raises(guard.Refused) as err:
        guard.read_image(write(tmp_path, "notes.png", b"hello, not a picture\n"))
    assert str(err.value) == guard.UNREADABLE
    half = write(tmp_path, "cut.png", Image.new("RGB", (64, 64), (1, 2, 3)))
    half.write_bytes(half.read_bytes()[:60])  # a truncated download
    with pytest.raises(guard.Refused, match="not an image that can be read"):
        guard.read_image(half)
    huge = Image.new("1", (8000, 6000))  # 48 Mpx, a few kB as PNG
    with pytest.raises(guard.Refused, match="8000 x 6000 pixels"):
        guard.read_image(write(tmp_path, "huge.png", huge))


def test_large_pictures_are_shrunk_and_big_files_refused(tmp_path, monkeypatch):
    big = guard.read_image(write(tmp_path, "big.png", Image.new("RGB", (3000, 1000), (9, 9, 9))))
    assert big.size[0] == core.MAX_IMAGE_SIDE and abs(big.size[1] - core.MAX_IMAGE_SIDE / 3) < 1
    monkeypatch.setattr(guard, "MAX_FILE_MB", 0.001)
    with pytest.raises(guard.Refused, match="larger than"):
        noise = Image.fromarray(np.uint8(np.random.default_rng(0).random((64, 64)) * 255))
        guard.read_image(write(tmp_path, "noise.png", noise))


def test_the_reader_follows_no_symlink(tmp_path):
    target = write(tmp_path, "real.png", Image.new("RGB", (8, 8)))
    link = tmp_path / "link.png"
    link.symlink_to(target)
    with pytest.raises(guard.Refused) as err:
        guard.read_image(link)
    assert str(err.value) == guard.REFUSED_FILE  # the gate resolves links; the reader opens none
