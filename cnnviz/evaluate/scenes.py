"""Scenes with known boxes for the meaning benchmark: objects pasted onto textures.

The pictures are scikit-image's public-domain samples (``chelsea``, ``coffee``, ``rocket``, the left view of
``stereo_motorcycle`` as
objects; ``grass``, ``gravel``, ``brick`` as backgrounds), so the benchmark needs no download;
scikit-image is a test and benchmark dependency, imported only here. A scene is kept for a
model only when the model still names the object in its top 5 (`recognized`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

# object -> (scikit-image sample, crop box (left, top, right, bottom), ImageNet classes that name it)
OBJECTS: dict[str, tuple[str, tuple[int, int, int, int], tuple[int, ...]]] = {
    "cat": ("chelsea", (30, 0, 420, 300), (281, 282, 285, 287)),  # tabby, tiger cat, Egyptian cat, lynx
    "espresso": ("coffee", (70, 10, 490, 395), (967, 968, 504)),  # espresso, cup, coffee mug
    "rocket": ("rocket", (255, 110, 390, 420), (657, 744, 812)),  # missile, projectile, space shuttle
    "motorcycle": ("stereo_motorcycle", (90, 60, 700, 450), (665, 670)),  # moped, motor scooter
}
TEXTURES = ("grass", "gravel", "brick")


@dataclass(frozen=True)
class Scene:
    """A picture at the model's input size with the box of each object in it.

    Attributes:
        name: e.g. ``cat@grass:left``.
        image: RGB, `size` x `size`.
        boxes: object -> (x0, y0, x1, y1) in pixels (x1, y1 exclusive).
    """

    name: str
    image: Image.Image = field(repr=False)
    boxes: dict[str, tuple[int, int, int, int]]

    def classes(self, obj: str) -> tuple[int, ...]:
        return OBJECTS[obj][2]


def _data():
    try:
        import skimage.data
    except ImportError as exc:  # pragma: no cover - the message is the point
        raise ImportError(
            "the benchmark scenes need scikit-image (pip install scikit-image): its sample images "
            "are the pictures"
        ) from exc
    return skimage.data


def _object(name: str) -> Image.Image:
    sample, crop, _ = OBJECTS[name]
    arr = getattr(_data(), sample)()
    arr = arr[0] if isinstance(arr, tuple) else arr  # stereo_motorcycle: (left, right, disparity)
    return Image.fromarray(arr).convert("RGB").crop(crop)


def _texture(name: str, size: int) -> Image.Image:
    arr = getattr(_data(), name)()
    return (
        Image.fromarray(np.asarray(arr, dtype=np.uint8))
        .convert("RGB")
        .resize((size, size), Image.Resampling.BICUBIC)
    )


def _paste(
    canvas: Image.Image, obj: Image.Image, left: int, top: int, side: int
) -> tuple[int, int, int, int]:
    w, h = obj.size
    scale = side / max(w, h)
    obj = obj.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)
    canvas.paste(obj, (left, top))
    return (left, top, left + obj.size[0], top + obj.size[1])


def single_scenes(size: int = 224, fraction: float = 0.55) -> list[Scene]:
    """Each object on each texture at two places (top-left, bottom-right): 18 scenes."""
    side = round(size * fraction)
    margin = round(size * 0.04)
    places = {"top-left": (margin, margin), "bottom-right": (size - side - margin, size - side - margin)}
    scenes = []
    for obj in OBJECTS:
        picture = _object(obj)
        for tex in TEXTURES:
            for where, (left, top) in places.items():
                canvas = _texture(tex, size)
                box = _paste(canvas, picture, left, top, side)
                scenes.append(Scene(f"{obj}@{tex}:{where}", canvas, {obj: box}))
    return scenes


def pair_scenes(size: int = 224, fraction: float = 0.46) -> list[Scene]:
    """Two objects of different classes side by side on each texture, in both orders: 18 scenes."""
    side = round(size * fraction)
    margin = round(size * 0.03)
    top = (size - side) // 2
    scenes = []
    names = list(OBJECTS)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            for tex in TEXTURES:
                for left_obj, right_obj in ((a, b), (b, a)):
                    canvas = _texture(tex, size)
                    boxes = {
                        left_obj: _paste(canvas, _object(left_obj), margin, top, side),
                        right_obj: _paste(canvas, _object(right_obj), size - side - margin, top, side),
                    }
                    scenes.append(Scene(f"{left_obj}+{right_obj}@{tex}", canvas, boxes))
    return scenes


def to_tensor(images: list[Image.Image], mean, std) -> torch.Tensor:
    """(B, 3, H, W) normalized batch of same-size RGB images (no resize, no crop: boxes stay true)."""
    arr = np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in images])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


def recognized(logits: torch.Tensor, classes: tuple[int, ...], k: int = 5) -> torch.Tensor:
    """(B,) True where one of `classes` is in the top `k`."""
    top = logits.topk(k, dim=1).indices
    return torch.isin(top, torch.tensor(classes, device=top.device)).any(1)


def best_class(logits: torch.Tensor, classes: tuple[int, ...]) -> torch.Tensor:
    """(B,) the highest-scoring of `classes` for each image (the class to explain)."""
    idx = torch.tensor(classes, device=logits.device)
    return idx[logits[:, idx].argmax(1)]


def recognized_batch(model, scenes: list[Scene], k: int = 5):
    """The scenes a model recognizes, ready to explain.

    Args:
        model: a `cnnviz.zoo.Model` (its data config gives the input size and normalization).
        scenes: scenes at the model's input size.
        k: an object counts as recognized when one of its classes is in the top `k`.

    Returns:
        (x, targets, kept): the (N, 3, H, W) batch of the kept scenes, for each the class to
        explain per object (the best-scoring of the object's classes), and the kept scenes.
    """
    cfg = model.data_config
    size = cfg["input_size"][-1]
    if scenes and scenes[0].image.size != (size, size):
        raise ValueError(f"the scenes are {scenes[0].image.size}, the model takes {size}x{size}")
    x = to_tensor([s.image for s in scenes], cfg["mean"], cfg["std"]).to(model.device)
    with torch.inference_mode():
        logits = model.module(x).float()
    kept, targets = [], []
    for i, s in enumerate(scenes):
        row = logits[i : i + 1]
        if all(bool(recognized(row, s.classes(o), k)[0]) for o in s.boxes):
            kept.append(i)
            targets.append([int(best_class(row, s.classes(o))[0]) for o in s.boxes])
    return x[kept], targets, [scenes[i] for i in kept]
