"""Figures: heatmap overlays, scene montages with boxes and masks, spectrograms, loss curves."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def upsample_map(m: np.ndarray | torch.Tensor, size: int | tuple[int, int]) -> np.ndarray:
    """[h, w] map -> [H, W] by bilinear upsampling, min-max normalised to [0, 1] for display."""
    t = torch.as_tensor(np.asarray(m, dtype=np.float32))[None, None]
    size = (size, size) if isinstance(size, int) else tuple(size)
    up = F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()
    lo, hi = float(up.min()), float(up.max())
    return (up - lo) / (hi - lo) if hi > lo else np.zeros_like(up)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """uint8 [H, W, 3] image + [h, w] map -> uint8 [H, W, 3] overlay (map upsampled, colour-mapped)."""
    import matplotlib
    h, w = image.shape[:2]
    m = upsample_map(heat, (h, w))
    colour = matplotlib.colormaps[cmap](m)[..., :3]
    out = (1 - alpha) * image.astype(np.float32) / 255 + alpha * colour
    return (np.clip(out, 0, 1) * 255).astype(np.uint8)


def peak_xy(heat: np.ndarray, size: tuple[int, int]) -> tuple[float, float]:
    """Location (x, y) in pixels of the map's maximum, in an image of `size` (h, w)."""
    hh, ww = heat.shape
    iy, ix = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return (ix + 0.5) * size[1] / ww, (iy + 0.5) * size[0] / hh


def draw_boxes(ax, boxes, size: tuple[int, int], colour: str = "lime", lw: float = 1.5, labels=None):
    """Normalised x1,y1,x2,y2 boxes onto a matplotlib axis showing an image of `size` (h, w)."""
    from matplotlib.patches import Rectangle
    h, w = size
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        ax.add_patch(Rectangle((x1 * w, y1 * h), (x2 - x1) * w, (y2 - y1) * h, fill=False,
                               edgecolor=colour, linewidth=lw))
        if labels is not None:
            ax.text(x1 * w + 1, y1 * h + 1, labels[i], color=colour, fontsize=6, va="top",
                    bbox=dict(facecolor="black", alpha=0.4, pad=0.5, linewidth=0))


def scene_montage(items, root: str | Path, n: int = 8, ncols: int = 4, log_mel=None):
    """A grid of scenes: image with every object's box (sounding object in lime, others in red),
    the sounding object's mask, and the clip's log-mel spectrogram below each scene."""
    import matplotlib.pyplot as plt
    from PIL import Image

    from avsl_core.audio import LogMel, load_audio
    root = Path(root)
    items = list(items)[:n]
    nrows = 2 * int(np.ceil(len(items) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3 * ncols, 2.6 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    lm = log_mel or LogMel()
    for k, it in enumerate(items):
        r, c = 2 * (k // ncols), k % ncols
        img = np.asarray(Image.open(root / it.image).convert("RGB"))
        ax = axes[r, c]
        shown = img
        if it.mask:
            mask = np.asarray(Image.open(root / it.mask)) > 0
            shown = img.copy()
            shown[mask] = (0.6 * shown[mask] + 0.4 * np.array([0, 255, 0])).astype(np.uint8)
        ax.imshow(shown)
        objs = (it.extra or {}).get("objects", [])
        others = [o["box"] for o in objs if o.get("box") and tuple(o["box"]) not in set(map(tuple, it.boxes))]
        draw_boxes(ax, others, img.shape[:2], colour="red", lw=1.0)
        draw_boxes(ax, it.boxes, img.shape[:2], colour="lime")
        tag = "negative" if it.negative else (it.category or "")
        ax.set_title(f"{it.id}\n{tag}", fontsize=7)
        wave = load_audio(root / it.audio, allow_silent=True)
        spec = lm(wave)[0, 0].numpy()
        axes[r + 1, c].imshow(spec, origin="lower", aspect="auto", cmap="magma")
        axes[r + 1, c].set_title("log-mel of the clip", fontsize=7)
    fig.tight_layout()
    return fig


def loss_curve(steps, values, ax=None, label=None, smooth: int = 20):
    """Per-step loss with a running mean over `smooth` steps."""
    import matplotlib.pyplot as plt
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3))
    v = np.asarray(values, dtype=float)
    ax.plot(steps, v, alpha=0.3, lw=0.8)
    if len(v) >= smooth > 1:
        k = np.ones(smooth) / smooth
        ax.plot(np.asarray(steps)[smooth - 1:], np.convolve(v, k, mode="valid"), lw=1.5, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    return ax
