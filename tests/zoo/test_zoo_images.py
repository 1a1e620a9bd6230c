"""Preprocessing (image modes, the model's own transform, model view and seen box) and class names."""

from __future__ import annotations

import io

import numpy as np
import pytest
import timm
import torch
from PIL import Image, ImageOps
from timm.data import ImageNetInfo, create_transform
from torchvision.transforms import functional as TF

from cnnviz.zoo.labels import class_names
from cnnviz.zoo.preprocess import BACKGROUND, Preprocessor, to_rgb

CFG = {
    "input_size": (3, 224, 224),
    "interpolation": "bicubic",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "crop_pct": 0.875,
    "crop_mode": "center",
}


def preprocessor(**changes) -> Preprocessor:
    cfg = {**CFG, **changes}
    return Preprocessor(cfg, create_transform(**cfg, is_training=False))


def smooth_image(width: int, height: int) -> Image.Image:
    """A smooth colour ramp: resampling it with different filters gives nearly the same pixels."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin(x / 17.0 + y / 23.0)], axis=-1)
    return Image.fromarray((rgb * 255).astype(np.uint8), "RGB")


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


# ----------------------------------------------------------------------------- modes


def test_rgb_matches_timms_own_pipeline():
    image = Image.open("examples/chelsea.jpg")
    image.load()
    for changes in ({}, {"crop_pct": 1.0, "interpolation": "bilinear"}, {"crop_mode": "squash"}):
        pre = preprocessor(**changes)
        manual = create_transform(**{**CFG, **changes}, is_training=False)(image.convert("RGB"))
        assert torch.equal(pre(image), manual)


def test_model_view_is_the_unnormalized_input():
    pre = preprocessor()
    image = smooth_image(300, 200)
    view = pre.model_view(image)
    assert view.mode == "RGB" and view.size == (224, 224)
    normalized = TF.normalize(TF.to_tensor(view), CFG["mean"], CFG["std"])
    assert torch.allclose(pre(image), normalized, atol=1e-6)


def test_rgba_is_composited_over_white():
    rgba = np.zeros((4, 6, 4), dtype=np.uint8)
    rgba[:, :2] = (200, 0, 0, 255)  # opaque red
    rgba[:, 2:4] = (0, 0, 0, 0)  # fully transparent black: must not show as black
    rgba[:, 4:] = (0, 0, 255, 128)  # half-transparent blue
    rgb = pixels(to_rgb(Image.fromarray(rgba, "RGBA")))
    assert (rgb[:, :2] == (200, 0, 0)).all()
    assert (rgb[:, 2:4] == BACKGROUND).all()
    a = 128 / 255
    expected = np.array([(1 - a) * 255, (1 - a) * 255, 255])
    assert np.abs(rgb[:, 4:] - expected).max() <= 1


def test_la_and_palette_transparency():
    la = Image.fromarray(np.array([[[50, 255], [50, 0]]], dtype=np.uint8), "LA")
    assert pixels(to_rgb(la)).tolist() == [[[50, 50, 50], [255, 255, 255]]]
    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    pal.info["transparency"] = 0
    assert pixels(to_rgb(pal)).tolist() == [[[255, 255, 255], [10, 200, 30]]]
    del pal.info["transparency"]
    assert pixels(to_rgb(pal)).tolist() == [[[0, 0, 0], [10, 200, 30]]]


def test_grey_and_cmyk():
    grey = Image.fromarray(np.array([[0, 77, 255]], dtype=np.uint8), "L")
    assert pixels(to_rgb(grey)).tolist() == [[[0, 0, 0], [77, 77, 77], [255, 255, 255]]]
    cyan = Image.new("CMYK", (1, 1), (255, 0, 0, 0))
    assert pixels(to_rgb(cyan)).tolist() == [[[0, 255, 255]]]


def test_16_bit_images_are_scaled_not_clipped():
    values = np.array([[0, 257 * 100, 65535, 200]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    rgb = pixels(to_rgb(image))[..., 0]
    assert rgb.tolist() == [[0, 100, 255, 1]]  # 200/257 rounds to 1: a dark pixel stays dark
    assert np.asarray(image.convert("L")).max() == 255  # what naive conversion would do instead
    as_i = Image.fromarray(values.astype(np.int32))
    assert as_i.mode == "I"
    assert pixels(to_rgb(as_i))[..., 0].tolist() == [[0, 100, 255, 1]]
    floats = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert pixels(to_rgb(floats))[..., 0].tolist() == [[0, 128, 255]]


def test_exif_orientation_is_applied():
    array = np.zeros((40, 60, 3), dtype=np.uint8)
    array[:, :30] = (255, 0, 0)  # left half red
    array[:, 30:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", exif=exif, quality=95)
    stored = Image.open(io.BytesIO(buffer.getvalue()))
    assert stored.size == (60, 40)
    upright = to_rgb(stored)
    assert upright.size == (40, 60)
    top, bottom = pixels(upright)[:25].mean((0, 1)), pixels(upright)[35:].mean((0, 1))
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]  # the left side is now on top
    assert pixels(preprocessor().model_view(stored))[:100].mean((0, 1))[0] > 200


def test_bad_inputs():
    with pytest.raises(TypeError, match=r"image: expected a PIL\.Image\.Image, got ndarray"):
        to_rgb(np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match="cannot convert PIL mode 'LAB'"):
        to_rgb(Image.new("LAB", (2, 2)))


# ----------------------------------------------------------------------------- seen box


def test_seen_box_center_crop_geometry():
    image = smooth_image(400, 300)
    box = preprocessor().seen_box(image)
    # Resize: shorter side 300 -> int(224 / 0.875) = 256, longer 400 -> int(256 * 400 / 300) = 341;
    # center crop 224: left round(117 / 2) = 58, top round(32 / 2) = 16.
    sx, sy = 341 / 400, 256 / 300
    assert box == pytest.approx((58 / sx, 16 / sy, (58 + 224) / sx, (16 + 224) / sy))


@pytest.mark.parametrize(
    ("size", "changes"),
    [
        ((400, 300), {}),
        ((300, 500), {"crop_pct": 0.95}),
        ((640, 427), {"crop_mode": "squash"}),
        ((500, 300), {"crop_mode": "border", "crop_pct": 1.0}),
        ((150, 100), {"input_size": (3, 160, 192)}),
    ],
)
def test_seen_box_maps_the_model_view_back(size, changes):
    """Cropping the original to the box and resizing it gives back the model view."""
    pre = preprocessor(**changes)
    image = smooth_image(*size)
    left, top, right, bottom = pre.seen_box(image)
    view = pre.model_view(image)
    # A margin coloured like the padding of crop_mode="border" (timm fills with the mean colour);
    # it also lets PIL resize from a box that reaches past the image.
    pad = 256
    padded = ImageOps.expand(image, pad, fill=tuple(round(255 * m) for m in CFG["mean"]))

    def redo(box):
        return pixels(padded.resize(view.size, Image.Resampling.BICUBIC, box=[v + pad for v in box]))

    assert np.abs(redo((left, top, right, bottom)) - pixels(view)).mean() < 3
    assert np.abs(redo((left + 8, top + 8, right, bottom)) - pixels(view)).mean() > 3  # tells 8 px apart
    if changes.get("crop_mode") == "border":
        assert left < 0 or top < 0  # the view includes padding beyond the image
    else:
        assert 0 <= left < right <= size[0] and 0 <= top < bottom <= size[1]


# ----------------------------------------------------------------------------- class names


def test_imagenet_1k_names_are_timms():
    model = timm.create_model("test_resnet.r160_in1k", pretrained=False)
    names = class_names(model)
    assert names == tuple(ImageNetInfo("imagenet-1k").label_descriptions())
    assert len(names) == 1000 and names[0].startswith("tench")


@pytest.mark.parametrize(
    ("num_classes", "subset"),
    [
        (21843, "imagenet-21k-goog"),
        (11221, "imagenet-21k-miil"),
        (11821, "imagenet-12k"),
        (21841, "imagenet-22k"),
    ],
)
def test_larger_imagenet_heads_get_their_own_names(num_classes, subset):
    model = timm.create_model("test_vit", pretrained=False, num_classes=num_classes)
    names = class_names(model)
    assert len(names) == num_classes
    assert names == tuple(ImageNetInfo(subset).label_descriptions())


def test_unknown_heads_fall_back_and_cfg_labels_win():
    model = timm.create_model("test_resnet", pretrained=False, num_classes=7)
    assert class_names(model) == tuple(f"class {i}" for i in range(7))
    model.pretrained_cfg = {**model.pretrained_cfg, "label_names": [f"n{i}" for i in range(7)]}
    assert class_names(model) == tuple(f"n{i}" for i in range(7))
    model.pretrained_cfg = {**model.pretrained_cfg, "label_names": ["too", "few"]}
    assert class_names(model)[6] == "class 6"
    assert class_names(timm.create_model("test_resnet", pretrained=False, num_classes=0)) == ()
