"""Turn any PIL image into the tensor a timm model expects, using the model's own transform.

The transform comes from `timm.data.resolve_model_data_config` + `timm.data.create_transform`
(eval mode: resize, center crop, to-tensor, normalize with the model's mean/std). Images are first
brought to 8-bit RGB (`to_rgb`), the one place that knows about PIL modes. The geometric steps
(everything before the to-tensor step) are applied to PIL images, so `model_view` shows exactly the
picture the model sees, and `seen_box` maps it back onto the original image.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import timm.data
import torch
from PIL import Image, ImageOps
from timm.data.transforms import CenterCropOrPad, MaybeToTensor, ResizeKeepRatio, ToTensor
from torchvision import transforms as T

#: Colour that transparent pixels are composited over.
BACKGROUND = (255, 255, 255)

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_PLAIN_MODES = ("RGB", "L", "1", "P", "CMYK", "YCbCr", "HSV", "RGBX")
_TENSOR_STEPS = (T.ToTensor, MaybeToTensor, ToTensor, T.PILToTensor)


def to_rgb(image: Image.Image) -> Image.Image:
    """Bring any PIL image to 8-bit RGB, upright, with transparency composited over white.

    - EXIF orientation (cameras store portrait photos sideways) is applied first.
    - Transparent modes (RGBA, LA, PA, and P with a ``transparency`` entry) are alpha-composited
      over `BACKGROUND`: dropping the alpha channel would show whatever colour the transparent
      pixels happen to hold, often black.
    - 16- and 32-bit integer and float grey images are scaled to 0..255 (see `_scale_to_uint8`);
      PIL's own ``convert("L")`` clips them at 255 instead.
    - CMYK, YCbCr, HSV, L, 1 and P go through PIL's ``convert("RGB")``.

    Raises:
        TypeError: `image` is not a PIL image.
        ValueError: the mode cannot be brought to RGB.
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"image: expected a PIL.Image.Image, got {type(image).__name__}")
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_scale_to_uint8(np.asarray(image), mode), mode="L").convert("RGB")
    if mode in _PLAIN_MODES:
        return image.convert("RGB")
    raise ValueError(
        f"image: cannot convert PIL mode {mode!r} to RGB; supported modes: "
        f"{', '.join(('RGB', *_ALPHA_MODES, *_PLAIN_MODES[1:], 'I', 'I;16', 'F'))}"
    )


def _scale_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Scale a single-channel 16/32-bit integer or float image to uint8.

    ``I;16*`` images are 16-bit by storage and ``I`` images are, in practice, 16-bit PNG/TIFF data
    (non-negative values up to 65535): both are divided by 257, so 65535 -> 255 exactly and a dark
    image stays dark. ``F`` images within [0, 1] are multiplied by 255. Anything else (negative
    values, wider ranges) is min-max scaled.
    """
    values = values.astype(np.float64)
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if mode == "F" and lo >= 0.0 and hi <= 1.0:
        scaled = values * 255.0
    elif mode != "F" and lo >= 0 and hi <= 65535:
        scaled = values / 257.0
    else:
        scaled = (values - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(values)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Preprocessor:
    """A model's eval transform, split into its geometric part and its tensor part.

    Attributes:
        data_config: timm data config (``input_size``, ``interpolation``, ``mean``, ``std``,
            ``crop_pct``, ``crop_mode``).
        transform: timm's full eval transform (``create_transform(**data_config)``).
    """

    data_config: Mapping[str, Any]
    transform: Callable[[Image.Image], torch.Tensor] = field(repr=False)

    @classmethod
    def for_model(cls, module: torch.nn.Module) -> Preprocessor:
        """The preprocessing a timm model was trained/evaluated with."""
        config = dict(timm.data.resolve_model_data_config(module))
        return cls(data_config=config, transform=timm.data.create_transform(**config, is_training=False))

    @property
    def steps(self) -> tuple[Callable, ...]:
        return tuple(getattr(self.transform, "transforms", (self.transform,)))

    @property
    def _split(self) -> int:
        """Index of the first tensor step: steps before it work on PIL images."""
        for i, step in enumerate(self.steps):
            if isinstance(step, _TENSOR_STEPS):
                return i
        raise ValueError(f"transform: no to-tensor step found in {self.transform!r}")

    def model_view(self, image: Image.Image) -> Image.Image:
        """The RGB image exactly as the model sees it: resized and cropped, not normalized."""
        view = to_rgb(image)
        for step in self.steps[: self._split]:
            view = step(view)
        return view

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """(3, H, W) normalized float tensor for one image of any mode."""
        x: Any = self.model_view(image)
        for step in self.steps[self._split :]:
            x = step(x)
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"transform: its last step returned {type(x).__name__}, not a tensor")
        return x

    def seen_box(self, image: Image.Image) -> tuple[float, float, float, float]:
        """(left, top, right, bottom) of the original image that the model view covers.

        Coordinates are in pixels of the upright original (after EXIF rotation), continuous
        (pixel edges: a full view of a W x H image is (0, 0, W, H)). Resizing the original cropped
        to this box to the model's input size gives the model view; so a heatmap at input size,
        resized to the box and pasted there, lies over what the model saw. With center crops the
        box lies inside the image; with ``crop_mode="border"`` (padding) it can extend past its
        edges, over the padding.
        """
        view = to_rgb(image)
        # x_view = scale * x_orig + offset, per axis, composed over the geometric steps.
        sx, ox, sy, oy = 1.0, 0.0, 1.0, 0.0
        for step in self.steps[: self._split]:
            before = view.size
            view = step(view)
            (a_x, b_x), (a_y, b_y) = _step_map(step, before, view.size)
            sx, ox, sy, oy = a_x * sx, a_x * ox + b_x, a_y * sy, a_y * oy + b_y
        width, height = view.size
        return ((0 - ox) / sx, (0 - oy) / sy, (width - ox) / sx, (height - oy) / sy)


def _step_map(
    step: Callable, before: tuple[int, int], after: tuple[int, int]
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Per-axis (scale, offset) of one geometric step: x_after = scale * x_before + offset."""
    if isinstance(step, (T.Resize, ResizeKeepRatio)):
        return (after[0] / before[0], 0.0), (after[1] / before[1], 0.0)
    if isinstance(step, (T.CenterCrop, CenterCropOrPad)):
        return (1.0, _crop_offset(before[0], after[0])), (1.0, _crop_offset(before[1], after[1]))
    if before == after:
        return (1.0, 0.0), (1.0, 0.0)
    raise ValueError(f"transform: cannot map step {step!r} back onto the original image")


def _crop_offset(size: int, crop: int) -> float:
    """Offset of torchvision's / timm's center crop (with padding when the crop is larger)."""
    pad_before = (crop - size) // 2 if crop > size else 0
    padded = size + (crop - size if crop > size else 0)
    return float(pad_before - round((padded - crop) / 2.0))
