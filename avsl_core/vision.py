"""Vision front-ends: robust image loading, the test-time transform and the SimCLR view (v_aug).

* ``load_image_rgb``   any PIL mode -> RGB, or a ``DataError`` naming the file.
* ``load_image_rgba``  any PIL mode -> RGBA (cut-outs for the AVScenes composer).
* ``to_tensor_normalized`` the peers' test transform: full-frame bicubic resize to size×size (aspect
  not kept, as EZ-VSL/SLAVC ``Resize((224, 224), BICUBIC)`` and SSLalignment's active transform),
  ImageNet mean/std normalisation.
* ``simclr_augment``   paper §3 ``v_aug``: "SimCLR image augmentation" (Chen et al. 2020, App. A):
  random resized crop, horizontal flip, colour jitter (p = 0.8), grayscale (p = 0.2), Gaussian blur.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms import InterpolationMode, v2

from avsl_core.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BACKGROUND_GREY = (128, 128, 128)   # transparent pixels are composited onto mid-grey, not black

_HIGH_DEPTH_MODES = {"I", "F", "I;16", "I;16B", "I;16L", "I;16N"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


def _open_loaded(path: str | os.PathLike) -> tuple[Path, Image.Image]:
    """Open and fully decode an image (``load()`` forces truncation/corruption errors out now)."""
    p = Path(path)
    if not p.exists():
        raise DataError(p, "image file not found")
    if not p.is_file():
        raise DataError(p, "expected an image file, found a directory or special file")
    if p.stat().st_size == 0:
        raise DataError(p, "empty file (0 bytes)")
    try:
        img = Image.open(p)
    except UnidentifiedImageError as e:
        raise DataError(p, "not a readable image (format not recognised)") from e
    except OSError as e:
        raise DataError(p, f"cannot open image ({e})") from e
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as e:   # PIL: "image file is truncated", bad chunks
        img.close()
        raise DataError(p, f"truncated or corrupt image ({e})") from e
    if img.width == 0 or img.height == 0:
        img.close()
        raise DataError(p, f"zero-size image ({img.width}x{img.height})")
    return p, img


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    """16/32-bit integer ("I;16", "I") and float ("F") gray -> 8-bit "L".

    Integer images are scaled by their actual maximum (``x * 255 / max``): 16-bit PNGs rarely use the
    full 0..65535 range, so a fixed /257 would make most of them near-black. Float images already in
    [0, 1] are multiplied by 255; other float images are scaled by their maximum too. Negative values
    clip to 0.
    """
    arr = np.asarray(img, dtype=np.float64)
    arr = np.clip(np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0), 0.0, None)
    peak = float(arr.max()) if arr.size else 0.0
    if img.mode == "F" and peak <= 1.0:
        arr = arr * 255.0
    elif peak > 0:
        arr = arr * (255.0 / peak)
    return Image.fromarray(np.round(arr).astype(np.uint8), mode="L")


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in _ALPHA_MODES or "transparency" in img.info


def _to_rgba(img: Image.Image) -> Image.Image:
    if img.mode in _HIGH_DEPTH_MODES:
        img = _high_depth_to_l(img)
    if img.mode == "P" and "transparency" not in img.info:
        img = img.convert("RGB")   # avoids PIL's palette->RGBA path for opaque palettes
    return img.convert("RGBA")


def load_image_rgb(path: str | os.PathLike, background: tuple[int, int, int] = BACKGROUND_GREY
                   ) -> Image.Image:
    """Load any image as 8-bit RGB.

    Handles every PIL mode: 1, L, P (palette, with or without a transparent index), RGB, RGBA, LA,
    CMYK (including CMYK JPEGs), YCbCr, LAB, HSV, 16-bit gray ("I;16", as 16-bit PNGs decode) and
    32-bit "I"/"F" (scaled to 8 bits by their actual maximum, see ``_high_depth_to_l``). Images with
    transparency are alpha-composited onto ``background`` (mid-grey by default, so a cut-out on a
    transparent canvas does not become a black silhouette). Multi-frame files give their first frame.
    EXIF orientation is ignored, as in every peer loader (``Image.open(p).convert('RGB')``).

    Raises ``DataError`` naming the file: missing, empty, unreadable, truncated/corrupt, zero-size.
    """
    p, img = _open_loaded(path)
    with img:   # conversions return new images; close the file (multi-frame files keep it open)
        return _rgb_from(p, img, background)


def _rgb_from(p: Path, img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    try:
        if _has_alpha(img):
            rgba = _to_rgba(img)
            canvas = Image.new("RGBA", rgba.size, (*background, 255))
            return Image.alpha_composite(canvas, rgba).convert("RGB")
        if img.mode in _HIGH_DEPTH_MODES:
            img = _high_depth_to_l(img)
        return img.convert("RGB")
    except (OSError, ValueError) as e:
        raise DataError(p, f"cannot convert image mode {img.mode!r} to RGB ({e})") from e


def load_image_rgba(path: str | os.PathLike) -> Image.Image:
    """Load any image as 8-bit RGBA (cut-outs). Images without alpha become fully opaque.

    Same modes and errors as ``load_image_rgb``; a palette's transparent index becomes alpha 0.
    """
    p, img = _open_loaded(path)
    try:
        with img:
            return _to_rgba(img)
    except (OSError, ValueError) as e:
        raise DataError(p, f"cannot convert image mode {img.mode!r} to RGBA ({e})") from e


def _size_hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def to_tensor_normalized(img: Image.Image, size: int | Sequence[int] = 224,
                         interpolation: InterpolationMode = InterpolationMode.BICUBIC) -> torch.Tensor:
    """Test-time transform: full-frame resize to ``size`` (int -> square), ImageNet normalisation.

    PIL RGB image -> float32 [3, H, W] (``(x / 255 - mean) / std`` per channel).
    Reproduces EZ-VSL/SLAVC test ``Resize((224, 224), BICUBIC) + ToTensor + Normalize``.
    """
    return eval_transform(size, interpolation)(img)


def eval_transform(size: int | Sequence[int] = 224,
                   interpolation: InterpolationMode = InterpolationMode.BICUBIC) -> Callable:
    """The transform behind ``to_tensor_normalized``, as a reusable callable (PIL -> [3, H, W])."""
    return v2.Compose([
        v2.ToImage(),
        v2.Resize(_size_hw(size), interpolation=interpolation, antialias=True),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def simclr_augment(size: int = 224, *, strength: float = 0.5,
                   scale: tuple[float, float] = (0.08, 1.0),
                   ratio: tuple[float, float] = (3 / 4, 4 / 3),
                   flip_p: float = 0.5, jitter_p: float = 0.8, grayscale_p: float = 0.2,
                   blur_p: float = 0.5, blur_sigma: tuple[float, float] = (0.1, 2.0)) -> Callable:
    """SimCLR augmentation (paper §3 ``v_aug``), PIL RGB -> float32 [3, size, size], normalised.

    SimCLR (Chen et al. 2020, App. A) defaults: RandomResizedCrop scale (0.08, 1), aspect (3/4, 4/3);
    horizontal flip p = 0.5; ColorJitter(0.8s, 0.8s, 0.8s, 0.2s) with p = 0.8; grayscale p = 0.2;
    Gaussian blur p = 0.5 with a kernel of ~10 % of the image side and sigma in [0.1, 2.0].
    ``strength`` s = 0.5 gives ColorJitter(0.4, 0.4, 0.4, 0.1) (the MoCo-v2/BYOL setting); s = 1.0 is
    SimCLR's ImageNet strength. A larger ``scale[0]`` (e.g. 0.2, MoCo v2) keeps more of the frame,
    so the sounding object is less often cropped out. Randomness comes from torch's global RNG
    (seed it per worker for reproducibility).
    """
    kernel = max(3, int(0.1 * size) // 2 * 2 + 1)   # odd, ~10 % of the side (23 at 224)
    s = strength
    return v2.Compose([
        v2.ToImage(),
        v2.RandomResizedCrop(size, scale=scale, ratio=ratio,
                             interpolation=InterpolationMode.BILINEAR, antialias=True),
        v2.RandomHorizontalFlip(p=flip_p),
        v2.RandomApply([v2.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=jitter_p),
        v2.RandomGrayscale(p=grayscale_p),
        v2.RandomApply([v2.GaussianBlur(kernel, sigma=blur_sigma)], p=blur_p),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
