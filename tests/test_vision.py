"""Vision front-end: every PIL mode to RGB/RGBA, bad files, the test transform and the SimCLR view."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from avsl_core.errors import DataError
from avsl_core.vision import (IMAGENET_MEAN, IMAGENET_STD, load_image_rgb, load_image_rgba,
                              simclr_augment, to_tensor_normalized)


def save(img: Image.Image, tmp_path, name: str, **kw) -> str:
    path = tmp_path / name
    img.save(path, **kw)
    return str(path)


def mode_of(path) -> str:
    with Image.open(path) as img:
        return img.mode


def px(img: Image.Image, xy=(0, 0)) -> tuple:
    return img.getpixel(xy)


# ----------------------------------------------------------------------------- modes
def test_grayscale_L(tmp_path):
    img = load_image_rgb(save(Image.new("L", (5, 4), 77), tmp_path, "g.png"))
    assert img.mode == "RGB" and img.size == (5, 4) and px(img) == (77, 77, 77)


def test_palette_without_transparency(tmp_path):
    pal = Image.new("RGB", (4, 4), (10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE)
    path = save(pal, tmp_path, "p.png")
    assert mode_of(path) == "P"
    assert px(load_image_rgb(path)) == (10, 200, 30)
    assert px(load_image_rgba(path)) == (10, 200, 30, 255)


def test_palette_with_transparent_index(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)     # index 0 red, index 1 blue
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 1)
    path = save(img, tmp_path, "pt.png", transparency=0)   # red is transparent
    rgb = load_image_rgb(path)
    assert px(rgb, (0, 0)) == (128, 128, 128)               # composited on mid-grey
    assert px(rgb, (1, 0)) == (0, 0, 255)
    rgba = load_image_rgba(path)
    assert px(rgba, (0, 0))[3] == 0 and px(rgba, (1, 0)) == (0, 0, 255, 255)


def test_rgba_composited_on_grey(tmp_path):
    arr = np.zeros((1, 3, 4), np.uint8)
    arr[0, 0] = (255, 0, 0, 255)      # opaque red
    arr[0, 1] = (255, 0, 0, 0)        # fully transparent
    arr[0, 2] = (0, 0, 0, 128)        # half-transparent black over grey 128 -> ~64
    path = save(Image.fromarray(arr, "RGBA"), tmp_path, "rgba.png")
    rgb = load_image_rgb(path)
    assert px(rgb, (0, 0)) == (255, 0, 0)
    assert px(rgb, (1, 0)) == (128, 128, 128)
    assert all(abs(c - 64) <= 1 for c in px(rgb, (2, 0)))
    assert load_image_rgba(path).getpixel((2, 0)) == (0, 0, 0, 128)   # alpha kept for cut-outs


def test_la(tmp_path):
    path = save(Image.new("LA", (3, 3), (200, 0)), tmp_path, "la.png")
    assert px(load_image_rgb(path)) == (128, 128, 128)
    assert px(load_image_rgba(path)) == (200, 200, 200, 0)


def test_cmyk_jpeg(tmp_path):
    path = save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), tmp_path, "cmyk.jpg", quality=100)
    assert mode_of(path) == "CMYK"
    r, g, b = px(load_image_rgb(path), (8, 8))
    assert r > 240 and g < 15 and b < 15                    # C=0, M=Y=255 is red


def test_16bit_png_scaled_by_max(tmp_path):
    arr = np.array([[0, 1000], [2000, 4000]], np.uint16)
    path = save(Image.fromarray(arr), tmp_path, "depth16.png")
    assert mode_of(path).startswith("I")
    rgb = np.asarray(load_image_rgb(path))
    np.testing.assert_array_equal(rgb[..., 0], [[0, 64], [128, 255]])   # round(x * 255 / 4000)
    assert (rgb[..., 0] == rgb[..., 2]).all()
    assert load_image_rgba(path).getpixel((1, 1)) == (255, 255, 255, 255)


def test_float_mode_in_unit_range(tmp_path):
    arr = np.array([[0.0, 0.5], [1.0, 0.25]], np.float32)
    path = save(Image.fromarray(arr, "F"), tmp_path, "f.tiff")
    np.testing.assert_array_equal(np.asarray(load_image_rgb(path))[..., 1], [[0, 128], [255, 64]])


def test_rgb_without_alpha_is_opaque_rgba(tmp_path):
    path = save(Image.new("RGB", (2, 2), (1, 2, 3)), tmp_path, "rgb.png")
    assert px(load_image_rgba(path)) == (1, 2, 3, 255)


# ----------------------------------------------------------------------------- bad files
def test_missing(tmp_path):
    with pytest.raises(DataError, match="gone.jpg.*not found"):
        load_image_rgb(tmp_path / "gone.jpg")


@pytest.mark.parametrize("fmt,name", [("PNG", "cut.png"), ("JPEG", "cut.jpg")])
def test_truncated(tmp_path, fmt, name):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    path = tmp_path / name
    img.save(path, format=fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=f"{name}.*truncated or corrupt"):
        load_image_rgb(path)
    with pytest.raises(DataError, match=name):
        load_image_rgba(path)


def test_corrupt_and_empty(tmp_path):
    bad = tmp_path / "junk.png"
    bad.write_bytes(b"not an image at all" * 10)
    with pytest.raises(DataError, match="junk.png.*not a readable image"):
        load_image_rgb(bad)
    empty = tmp_path / "zero.jpg"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="zero.jpg.*0 bytes"):
        load_image_rgb(empty)


# ----------------------------------------------------------------------------- tensors
def test_normalised_constant_image():
    colour = (128, 64, 255)
    out = to_tensor_normalized(Image.new("RGB", (50, 30), colour), 32)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    for c in range(3):
        expected = (colour[c] / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        torch.testing.assert_close(out[c], torch.full((32, 32), expected), atol=1e-5, rtol=0)
    # e.g. red: (128/255 - 0.485) / 0.229 = 0.07406...
    assert out[0, 0, 0].item() == pytest.approx(0.074065, abs=1e-5)


def test_resize_is_full_frame_not_crop():
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 20))               # left quarter white
    out = to_tensor_normalized(img, (8, 8))
    white = (1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    assert out[0, :, 0].min() == pytest.approx(white, abs=1e-4)   # first column still white
    assert out[0, :, -1].max() < 0                                  # last column still black


def test_simclr_shapes_randomness_and_identity_setting():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    aug = simclr_augment(32)
    torch.manual_seed(0)
    a, b = aug(img), aug(img)
    assert a.shape == b.shape == (3, 32, 32) and a.dtype == torch.float32
    assert not torch.equal(a, b)
    torch.manual_seed(0)
    torch.testing.assert_close(aug(img), a)                   # reproducible from the torch seed
    # every random step switched off: the crop is the full (square) frame, so it equals the test view
    plain = simclr_augment(32, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0, jitter_p=0,
                           grayscale_p=0, blur_p=0)
    ref = to_tensor_normalized(img, 32, interpolation=Image.Resampling.BILINEAR)
    torch.testing.assert_close(plain(img), ref, atol=1e-5, rtol=0)
    grey = simclr_augment(32, grayscale_p=1.0, jitter_p=0, blur_p=0)(img)
    un = grey * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]
    torch.testing.assert_close(un[0], un[1], atol=1e-5, rtol=0)   # grayscale: equal channels
