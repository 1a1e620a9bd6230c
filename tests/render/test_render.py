"""Rendering: the numbers behind each picture mean what the docstrings say."""

from __future__ import annotations

import warnings

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from cnnviz import render


def solid(size: tuple[int, int], colour: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", size, colour)


def rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


# ---------------------------------------------------------------- CAM normalization


def test_normalize_cam_puts_min_at_zero_and_max_at_one_where_they_were():
    cam = np.array([[2.0, -1.0, 0.5], [5.0, 1.0, 3.5]], dtype=np.float32)
    out = render.normalize_cam(cam)
    assert out.min() == 0.0 and out.max() == 1.0
    assert out[0, 1] == 0.0  # the minimum, -1
    assert out[1, 0] == 1.0  # the maximum, 5
    np.testing.assert_allclose(out, (cam + 1.0) / 6.0, rtol=1e-6)


def test_normalize_cam_with_a_shared_scale_keeps_maps_comparable():
    strong = np.array([[0.0, 4.0], [2.0, 1.0]])
    weak = strong / 2.0
    vmin, vmax = render.shared_range([strong, weak])
    assert (vmin, vmax) == (0.0, 4.0)
    np.testing.assert_allclose(render.normalize_cam(weak, vmin, vmax), weak / 4.0)
    # on its own scale the weak map would look as strong as the strong one
    np.testing.assert_allclose(render.normalize_cam(weak), render.normalize_cam(strong))
    # values outside a given range are clipped
    clipped = render.normalize_cam(strong, vmin=1.0, vmax=3.0)
    np.testing.assert_allclose(clipped, [[0.0, 1.0], [0.5, 0.0]])


@pytest.mark.parametrize("value", [0.0, 3.0, -7.5])
def test_constant_maps_do_not_divide_by_zero(value):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cam = render.normalize_cam(np.full((7, 7), value))
        grad = render.normalize_gradient(np.full((3, 8, 8), 0.0))
        absolute = render.normalize_gradient(np.zeros((3, 8, 8)), "absolute")
        same_bounds = render.normalize_cam(np.ones((2, 2)), vmin=1.0, vmax=1.0)
    assert np.all(cam == 0.0) and np.all(grad == 0.0) and np.all(absolute == 0.0)
    assert np.all(same_bounds == 0.0)


def test_non_finite_maps_are_refused_with_the_argument_named():
    with pytest.raises(ValueError, match="map2d"):
        render.normalize_cam(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="grad"):
        render.normalize_gradient(np.array([[np.inf, 0.0]]))


def test_tensors_are_accepted_like_arrays():
    cam = torch.tensor([[1.0, 3.0], [2.0, 5.0]], dtype=torch.float64)
    np.testing.assert_allclose(render.normalize_cam(cam), [[0.0, 0.5], [0.25, 1.0]])


# ---------------------------------------------------------------- gradient normalization


def test_clip_scale_is_the_cumulative_mass_percentile():
    # |g| = 1, 2, 3, 4 (total 10): the running sum first reaches 60% (6) at 3.
    assert render.clip_scale([1.0, -2.0, 3.0, -4.0], clip_percentile=60) == 3.0
    assert render.clip_scale([1.0, -2.0, 3.0, -4.0], clip_percentile=100) == 4.0
    assert render.clip_scale(np.zeros(5)) == 0.0
    with pytest.raises(ValueError, match="clip_percentile"):
        render.clip_scale([1.0], clip_percentile=0)


def test_gradient_normalizer_clips_the_top_2_percent_and_keeps_sign():
    # 98% of the mass in a body of +-0.5 and +-1.5, 2% in one outlier of -2.
    body = np.array([0.5, -0.5] * 26 + [1.5, -1.5] * 24, dtype=np.float32)
    assert np.abs(body).sum() == 98.0
    grad = np.concatenate([body, [-2.0]]).reshape(1, 1, -1)
    out = render.normalize_gradient(grad)  # default: 98% of the mass, signed
    assert out.shape == grad.shape
    np.testing.assert_array_equal(np.sign(out), np.sign(grad))
    assert out.ravel()[-1] == -1.0  # the outlier is clipped, keeping its sign
    body_out = out.ravel()[:-1]
    np.testing.assert_allclose(body_out, body / 1.5, rtol=1e-6)  # the body keeps its proportions
    # plain min-max would have squeezed the body towards the middle instead
    minmax = (grad - grad.min()) / (grad.max() - grad.min())
    assert np.ptp(minmax.ravel()[:-1]) < np.ptp(0.5 + 0.5 * body_out)


def test_gradient_normalizer_ignores_the_overall_scale_and_the_size_of_a_spike():
    rng = np.random.default_rng(0)
    grad = rng.laplace(size=(3, 16, 16)).astype(np.float32)  # |g| sums to about 768
    for mode in render.GRADIENT_VIEWS:
        np.testing.assert_allclose(
            render.normalize_gradient(grad * 1e-6, mode), render.normalize_gradient(grad, mode), atol=1e-5
        )
    pictures = []
    for spike in (12.0, 15.0):  # either holds under 2% of the mass
        spiked = grad.copy()
        spiked[0, 3, 3] = spike
        pictures.append(render.normalize_gradient(spiked))
        assert pictures[-1][0, 3, 3] == 1.0
    # the spike is clipped, so how large it is does not change how the rest is drawn
    np.testing.assert_array_equal(pictures[0], pictures[1])
    assert np.mean(np.abs(pictures[0]) < 1.0) > 0.95


def test_absolute_view_is_max_over_channels_of_the_magnitude():
    grad = np.zeros((3, 4, 4), dtype=np.float32)
    grad[0, 0, 0], grad[1, 0, 0], grad[2, 1, 1] = 1.0, -3.0, 1.5
    out = render.normalize_gradient(grad, "absolute", clip_percentile=100)
    assert out.shape == (4, 4)
    assert out[0, 0] == 1.0 and out[1, 1] == 0.5 and out.sum() == 1.5
    with pytest.raises(ValueError, match=r"mode.*'signed'"):
        render.normalize_gradient(grad, "absolut")


def test_signed_gradient_image_is_mid_grey_where_the_gradient_is_zero():
    grad = np.zeros((3, 6, 6), dtype=np.float32)
    grad[0, 2, 2] = 1.0  # red channel pushes the score up here
    grad[2, 4, 4] = -1.0  # blue channel pushes it down here
    picture = rgb(render.gradient_image(grad))
    assert picture.shape == (6, 6, 3)
    grey = picture[0, 0]
    assert np.all(np.abs(grey - 127.5) <= 0.5) and len(set(grey)) == 1
    assert picture[2, 2, 0] == 255 and np.array_equal(picture[2, 2, 1:], grey[1:])
    assert picture[4, 4, 2] == 0 and np.array_equal(picture[4, 4, :2], grey[:2])
    untouched = np.ones((6, 6), dtype=bool)
    untouched[2, 2] = untouched[4, 4] = False
    assert np.all(picture[untouched] == grey)
    zero = rgb(render.gradient_image(np.zeros((3, 5, 5))))
    assert np.all(zero == grey)


# ---------------------------------------------------------------- colour


@pytest.mark.parametrize("cmap", render.COLORMAPS)
def test_colormap_endpoints_match_matplotlib(cmap):
    picture = rgb(render.colorize(np.array([[0.0, 1.0]]), cmap))
    table = matplotlib.colormaps[cmap]
    np.testing.assert_array_equal(picture[0, 0], table(0.0, bytes=True)[:3])
    np.testing.assert_array_equal(picture[0, 1], table(1.0, bytes=True)[:3])


def test_jet_runs_from_blue_to_red_in_rgb_order():
    low, high = rgb(render.colorize(np.array([[0.0, 1.0]]), "jet"))[0]
    assert low[2] > 100 and low[0] == 0  # dark blue, not BGR-swapped
    assert high[0] > 100 and high[2] == 0  # dark red


def test_unknown_colormap_names_the_close_match():
    with pytest.raises(ValueError, match="'jet'"):
        render.colorize(np.zeros((2, 2)), "jett")


def test_overlay_alpha_zero_is_the_image_and_alpha_one_the_colormap():
    base = Image.fromarray(np.random.default_rng(1).integers(0, 256, (8, 10, 3), dtype=np.uint8))
    heat = np.linspace(0.0, 1.0, 80).reshape(8, 10)
    np.testing.assert_array_equal(rgb(render.overlay(base, heat, "inferno", alpha=0.0)), rgb(base))
    np.testing.assert_array_equal(
        rgb(render.overlay(base, heat, "inferno", alpha=1.0)), rgb(render.colorize(heat, "inferno"))
    )
    half = rgb(render.overlay(base, heat, "inferno", alpha=0.5))
    expected = (rgb(base) + rgb(render.colorize(heat, "inferno"))) / 2
    assert np.abs(half - expected).max() <= 0.5
    with pytest.raises(ValueError, match="alpha"):
        render.overlay(base, heat, alpha=1.5)


def test_resize_map_is_bilinear_and_keeps_the_hot_spot_in_place():
    cam = np.zeros((4, 4), dtype=np.float32)
    cam[1, 2] = 1.0
    big = render.resize_map(cam, (40, 40))
    assert big.shape == (40, 40)
    y, x = np.unravel_index(np.argmax(big), big.shape)
    assert 10 <= y < 20 and 20 <= x < 30  # inside the hot cell's footprint
    assert big.min() >= 0.0 and big.max() <= 1.0
    assert 0.0 < big[15, 19] < big[15, 25]  # smooth fall-off, not nearest-neighbour blocks


# ---------------------------------------------------------------- attribution_image


def test_attribution_image_overlays_cam_maps_of_the_chosen_sample():
    maps = np.zeros((2, 2, 2), dtype=np.float32)
    maps[0, 0, 0] = 1.0  # sample 0 hot top-left
    maps[1, 1, 1] = 1.0  # sample 1 hot bottom-right
    base = solid((64, 64), (0, 0, 0))
    top = np.asarray(matplotlib.colormaps["jet"](1.0, bytes=True)[:3], dtype=np.int16)
    picture = rgb(render.attribution_image(maps, 1, base, "jet", alpha=1.0))
    assert picture.shape == (64, 64, 3)
    np.testing.assert_array_equal(picture[63, 63], top)
    assert not np.array_equal(picture[0, 0], top)
    with pytest.raises(ValueError, match="base_image"):
        render.attribution_image(maps, 0)
    with pytest.raises(ValueError, match="index"):
        render.attribution_image(maps, 2, base)


def test_attribution_image_uses_a_shared_scale_for_cam_maps():
    maps = np.stack([np.eye(2), np.eye(2) / 2]).astype(np.float32)
    base = solid((2, 2), (0, 0, 0))
    weak_alone = rgb(render.attribution_image(maps, 1, base, "gray", alpha=1.0))
    weak_shared = rgb(render.attribution_image(maps, 1, base, "gray", alpha=1.0, vmin=0.0, vmax=1.0))
    assert weak_alone[0, 0, 0] == 255
    assert abs(weak_shared[0, 0, 0] - 127.5) <= 1


def test_attribution_image_draws_gradients_as_gradient_pictures():
    grads = torch.zeros(2, 3, 16, 16)
    grads[1, 0, 4, 4] = 2.0
    base = solid((32, 32), (10, 200, 10))
    signed = render.attribution_image(grads, 1, base)
    assert signed.size == base.size  # resized to the image the model saw
    assert rgb(signed)[0, 0].tolist() == [128, 128, 128]
    absolute = rgb(render.attribution_image(grads, 1, base, "jet", alpha=0.0, view="absolute"))
    np.testing.assert_array_equal(absolute, rgb(base))  # alpha 0: only the base image
    blank = rgb(render.attribution_image(grads, 0, None, view="absolute", cmap="inferno"))
    np.testing.assert_array_equal(blank[0, 0], matplotlib.colormaps["inferno"](0.0, bytes=True)[:3])
    with pytest.raises(ValueError, match="view"):
        render.attribution_image(grads, 0, base, view="rgb")


# ---------------------------------------------------------------- layout


def test_grid_has_the_expected_size_and_places_images_in_order():
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
    images = [solid((30, 20), c) for c in colours]
    out = render.grid(images, ncols=2, pad=4)
    assert out.size == (2 * 30 + 3 * 4, 3 * 20 + 4 * 4)
    pixels = rgb(out)
    for i, colour in enumerate(colours):
        row, col = divmod(i, 2)
        y, x = 4 + row * (20 + 4) + 10, 4 + col * (30 + 4) + 15
        assert tuple(pixels[y, x]) == colour


def test_grid_captions_wrap_and_long_text_does_not_crash():
    images = [solid((60, 40), (0, 0, 0)), solid((60, 40), (0, 0, 0))]
    short = render.grid(images, ["a", "b"], ncols=2)
    long = render.grid(images, ["Grad-CAM · tabby cat · α×β " * 40, "x" * 500], ncols=2, max_caption_lines=3)
    assert long.width == short.width
    assert short.height < long.height <= short.height + 3 * 20
    # the caption is drawn below the image, inside the cell
    caption_band = rgb(long)[8 + 40 :, 8 : 8 + 60]
    assert (caption_band < 128).any()


def test_grid_rejects_mismatched_captions():
    with pytest.raises(ValueError, match="captions"):
        render.grid([solid((4, 4), (0, 0, 0))], ["a", "b"])
    with pytest.raises(ValueError, match="ncols"):
        render.grid([solid((4, 4), (0, 0, 0))], ncols=0)
