"""Localize the sound of a user's own clip in their own photo with a trained checkpoint.

    python -m avsl_core.localize --checkpoint runs/quick/ckpt/main/last.pt \\
        --image photo.jpg --audio clip.wav --out heatmap.png

writes `heatmap.png` (the photo with the heatmap overlaid, at the photo's resolution) and
`heatmap.npy` (float32 [H, W]: the localization map cos(V[:, x, y], a) of paper Eq. 3, bilinearly
upsampled to the photo's size, in cosine units, not normalised). Any image mode PIL reads (grey,
palette, CMYK, 16-bit, with alpha: `vision.load_image_rgb`) and any audio file soundfile reads
(any channels, bit depth, sample rate: `audio.load_audio`) are accepted; anything else fails with a
message naming the file (exit status 2).

The image size and audio front-end are the ones the checkpoint was trained with (its stored
`config.data`), unless `--image-size` / `--frontend` say otherwise.
"""
from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from avsl_core.audio import load_audio
from avsl_core.errors import DataError
from avsl_core.models import AVModel
from avsl_core.provenance import atomic_write_bytes
from avsl_core.vision import load_image_rgb, to_tensor_normalized


def checkpoint_inputs(path: str | Path) -> dict:
    """Image size and front-end stored in a training checkpoint (defaults: 224 px, log-mel)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:   # missing, truncated, not a torch file, pickled objects refused
        raise DataError(path, f"not a loadable checkpoint (torch.load weights_only=True): {e}") from None
    data = (ckpt.get("config") or {}).get("data") or {} if isinstance(ckpt, dict) else {}
    return {"image_size": int(data.get("image_size", 224)), "frontend": data.get("frontend", "logmel")}


def localization_map(model: AVModel, image: Image.Image, wave: np.ndarray, image_size: int,
                     frontend: str = "logmel") -> torch.Tensor:
    """[h, w] cosine map (Eq. 3 summand) of one RGB image and one 16 kHz mono waveform."""
    from avsl_core.data.datasets import SpecFrontend
    front = SpecFrontend(frontend)
    spec = front(front.main_window(wave))[None]                   # [1, 1, F, T]
    img = to_tensor_normalized(image, image_size)[None]            # [1, 3, S, S]
    with torch.no_grad():
        return model.localization_map(img, spec)[0]                # [h, w]


def overlay(image: Image.Image, heat: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> Image.Image:
    """Blend a min-max normalised heatmap [H, W] (image size) over the RGB image."""
    import matplotlib
    lo, hi = float(heat.min()), float(heat.max())
    norm = (heat - lo) / (hi - lo) if hi > lo else np.zeros_like(heat)
    rgb = (matplotlib.colormaps[cmap](norm)[..., :3] * 255).astype(np.uint8)   # [H, W, 3]
    return Image.blend(image, Image.fromarray(rgb), alpha)


def localize(checkpoint: str | Path, image_path: str | Path, audio_path: str | Path, out: str | Path, *,
             image_size: int | None = None, frontend: str | None = None, alpha: float = 0.5) -> np.ndarray:
    """Write `out` (overlay PNG) and `out` with suffix .npy (map at the image's size); returns the map."""
    stored = checkpoint_inputs(checkpoint)
    model = AVModel.from_checkpoint(checkpoint)
    image = load_image_rgb(image_path)
    wave = load_audio(audio_path)
    m = localization_map(model, image, wave, image_size or stored["image_size"], frontend or stored["frontend"])
    full = F.interpolate(m[None, None], size=(image.height, image.width), mode="bilinear",
                         align_corners=False)[0, 0].numpy().astype(np.float32)    # [H, W]
    out = Path(out)
    buf = io.BytesIO()
    overlay(image, full, alpha).save(buf, format="PNG")
    atomic_write_bytes(out, buf.getvalue())
    buf = io.BytesIO()
    np.save(buf, full)
    atomic_write_bytes(out.with_suffix(".npy"), buf.getvalue())
    return full


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m avsl_core.localize", description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--audio", required=True)
    ap.add_argument("--out", required=True, help="overlay PNG; the map goes beside it as .npy")
    ap.add_argument("--image-size", type=int, default=None, help="default: the checkpoint's training size")
    ap.add_argument("--frontend", default=None, help="logmel | official | ezvsl (default: the checkpoint's)")
    ap.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity")
    a = ap.parse_args(argv)
    try:
        m = localize(a.checkpoint, a.image, a.audio, a.out, image_size=a.image_size, frontend=a.frontend,
                     alpha=a.alpha)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    r, c = np.unravel_index(int(m.argmax()), m.shape)
    print(f"wrote {a.out} and {Path(a.out).with_suffix('.npy')} (map {m.shape[1]}x{m.shape[0]}, "
          f"peak at x={c}, y={r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
