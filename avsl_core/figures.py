"""The paper's qualitative figures (Figures 3, 4, 5) on AVScenes test scenes, from trained checkpoints.

* Figure 3 (:func:`heatmap_grid`): test items × methods, each map overlaid on the image with its peak;
  the floors (centre prior, visual objectness) as reference columns.
* Figure 4 (:func:`heatmap_grid` with OGL columns): maps without and with object-guided localization,
  fused exactly as the evaluator fuses them (:func:`ogl_maps`, ``evaluate.score_items``).
* Figure 5 (:func:`swap_grid`): one multi-object image queried with each visible object's sound; the
  map should move to the object whose sound plays.

Every map is shown as the evaluator scores it: upsampled to 224 × 224 and normalised by the
evaluation protocol (:func:`display_maps`, ``metrics.prepare``), and the marked peak is the pixel the
pointing and swap measures read (``metrics_extended.peak_index``). A peak is a *hit* when it lies
inside the sounding (queried) object's box under the evaluator's pixel rule (``metrics.box_counts``).

Items are chosen by a seeded rule, never by hand: :func:`hash_order` sorts keys by
sha256("<seed>:<key>") and the first N are taken. Figures are ``matplotlib.figure.Figure`` objects
(no pyplot state); :func:`save_png` writes one atomically.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import torch

from avsl_core import metrics as M
from avsl_core import metrics_extended as X
from avsl_core.errors import DataError
from avsl_core.viz import draw_boxes, overlay

MAIN_METHODS = ("ours", "attention10k", "lvs", "ezvsl", "slavc")   # the paper's Table 1 / Figure 3 rows
SIZE = M.EVAL_SIZE                                                  # maps shown at the evaluator's 224 px
HIT, MISS = "lime", "red"


# ============================================================================== runs and items
def main_runs(train: dict) -> tuple[dict[str, dict], dict[str, str]]:
    """The main comparison of a training record (``results/train.json``).

    With a catalogue: runs trained on "train" whose name is their method (``ours``, ``ezvsl``, ...;
    not the ablations or k sweep). Without one (old layout): every checkpoint, method = its run's
    ``method`` or its name. Returns ({name: {"method", "checkpoint"}} with ours first, then the
    baselines in the paper's order; {name: why it is missing}) — a main run listed in ``full_only``
    or without a checkpoint is reported, never silently dropped.
    """
    ckpts = train.get("checkpoints") or {}
    cat = train.get("catalogue")
    runs, missing = {}, {}
    if cat:
        for name, c in cat.items():
            if c.get("train_set") == "train" and c.get("method") == name:
                if name in ckpts:
                    runs[name] = {"method": c["method"], "checkpoint": ckpts[name]}
                else:
                    missing[name] = "no checkpoint in train.json"
        for name, c in (train.get("full_only") or {}).items():
            if c.get("train_set") == "train" and c.get("method") == name and name not in runs:
                missing[name] = f"full profile only: {c.get('command', 'make book PROFILE=full')}"
    else:
        for name, path in ckpts.items():
            method = ((train.get("runs") or {}).get(name) or {}).get("method", name)
            runs[name] = {"method": method, "checkpoint": path}

    def order(name):
        m = runs[name]["method"]
        return (MAIN_METHODS.index(m) if m in MAIN_METHODS else len(MAIN_METHODS), name)
    return {n: runs[n] for n in sorted(runs, key=order)}, missing


def strongest_baseline(res, runs: dict, test_set: str = "test_seen") -> str | None:
    """The baseline run with the best cIoU@0.5 on ``test_set`` in the results long table
    (``book.load_results``); ties broken by AUC, then by name. None when no baseline was evaluated."""
    sel = res[(res.test_set == test_set) & (res.family == "localization")]
    scores = sel.pivot_table(index="model", columns="metric", values="value")
    cands = [n for n, r in runs.items() if r["method"] != "ours" and n in scores.index]
    if not cands:
        return None
    return sorted(cands, key=lambda n: (-scores.loc[n, "ciou@0.5"], -scores.loc[n].get("auc", 0.0), n))[0]


def hash_order(keys, seed: int = 0) -> list:
    """Keys sorted by sha256("<seed>:<key>"): a fixed, seeded, content-blind order."""
    return sorted(keys, key=lambda k: hashlib.sha256(f"{seed}:{k}".encode()).hexdigest())


def pick_items(items, n: int, seed: int = 0) -> list:
    """The first ``n`` localization items (``extra.kind == "loc"``, positive, with a box) by hash order."""
    loc = {it.id: it for it in items if not it.negative and it.boxes and (it.extra or {}).get("kind", "loc") == "loc"}
    return [loc[k] for k in hash_order(loc, seed)[:n]]


def pick_swap_groups(items, n: int, seed: int = 0) -> list[list]:
    """The first ``n`` swap images (items with ``extra.kind == "swap"`` sharing ``group``, at least two
    positive queries) by hash order of the group; each group's queries ordered by ``extra.sounding``."""
    groups: dict[str, list] = {}
    for it in items:
        if (it.extra or {}).get("kind") == "swap" and it.group and not it.negative and it.boxes:
            groups.setdefault(it.group, []).append(it)
    keep = [g for g in groups if len(groups[g]) >= 2]
    return [sorted(groups[g], key=lambda it: (it.extra.get("sounding", 0), it.id)) for g in hash_order(keep, seed)[:n]]


# ============================================================================== maps
def load_run(checkpoint):
    """A trainer checkpoint -> (evaluable model in eval mode, its training config dict)."""
    from avsl_core.baselines import load_method_checkpoint
    from avsl_core.evaluate import checkpoint_info
    return load_method_checkpoint(checkpoint), checkpoint_info(checkpoint)["train_config"]


@torch.no_grad()
def batch_maps(model, images: torch.Tensor, specs: torch.Tensor, ogl_trunk=None) -> dict[str, np.ndarray]:
    """images [B,3,S,S], specs [B,1,F,T] -> native maps [B,h,w]: "maps" (the method's localization map),
    "objectness" (its visual objectness, the floor) and, with ``ogl_trunk`` (the OGL image encoder's
    trunk), "ogl" = channel-mean |trunk(images)| as on the evaluation page."""
    def arr(t):
        return (t[:, 0] if t.ndim == 4 else t).float().cpu().numpy()
    out = {"maps": arr(model.localization_map(images, specs)), "objectness": arr(model.visual_objectness(images))}
    if ogl_trunk is not None:
        out["ogl"] = arr(ogl_trunk(images.float()).abs().mean(1))
    return out


def item_maps(model, train_config: dict, items, root, ogl_trunk=None, batch_size: int = 32) -> dict[str, np.ndarray]:
    """:func:`batch_maps` over manifest items, loaded as the evaluator loads them for this checkpoint
    (``evaluate.make_test_loader``: its training image size and audio front-end); rows follow ``items``."""
    from avsl_core.evaluate import make_test_loader
    loader, _ = make_test_loader(list(items), train_config, root, batch_size)
    parts = [batch_maps(model, b["image"], b["spec"], ogl_trunk) for b in loader]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def display_maps(maps: np.ndarray, protocol: str = "ezvsl") -> np.ndarray:
    """Native maps [N,h,w] -> [N,224,224] as the protocol scores them (upsampled, normalised)."""
    return M.prepare(torch.from_numpy(np.ascontiguousarray(maps, np.float32)), protocol).numpy()


def ogl_maps(maps: np.ndarray, obj: np.ndarray, protocol: str = "ezvsl", mode: str = "relative",
             alpha: float = 0.4) -> np.ndarray:
    """Object-guided localization of the evaluator (``evaluate.score_items``): relative =
    minmax(α·P + (1−α)·normalised objectness) (EZ-VSL, α 0.4); absolute = SLAVC's (cos+1)/2·α +
    obj/2.5·(1−α), min-max normalised for display. [N,224,224]."""
    p = M.get_protocol(protocol)
    U = M.upsample(torch.from_numpy(np.ascontiguousarray(maps, np.float32)), p.upsample, p.size)
    Uo = M.upsample(torch.from_numpy(np.ascontiguousarray(obj, np.float32)), p.upsample, p.size)
    if mode == "relative":
        P = M.normalise(M.absolute_av_score(U) if p.score_first else U, p.normalise, inplace=True)
        return M.ogl_relative(P, M.normalise(Uo, p.normalise, inplace=True), alpha).numpy()
    if mode == "absolute":
        return M.minmax(M.ogl_absolute(M.absolute_av_score(U), Uo, alpha), inplace=True).numpy()
    raise ValueError(f"ogl mode must be 'relative' or 'absolute', got {mode!r}")


def peaks(disp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of each display map's first maximum, the pixel pointing and swap read."""
    flat = X.peak_index(torch.from_numpy(np.ascontiguousarray(disp))).numpy()
    return flat // disp.shape[-1], flat % disp.shape[-1]


def peak_hits(disp: np.ndarray, box_lists) -> np.ndarray:
    """Does each map's peak lie inside its item's boxes (evaluator pixel rule)? [N] bool."""
    g = M.box_counts(*M.pad_boxes(box_lists), disp.shape[-1]) > 0
    r, c = peaks(disp)
    return g[np.arange(len(disp)), r, c]


def peak_object(disp_one: np.ndarray, objects) -> str:
    """Category of the smallest object box (``extra.objects``) holding the map's peak, else "background"."""
    inside = [o for o in objects if peak_hits(disp_one[None], [[o["box"]]])[0]]
    if not inside:
        return "background"
    return min(inside, key=lambda o: (o["box"][2] - o["box"][0]) * (o["box"][3] - o["box"][1]))["category"]


def display_image(item, root, size: int = SIZE) -> np.ndarray:
    """The item's image as uint8 [size, size, 3] (bicubic), the frame the display maps live in."""
    from PIL import Image

    from avsl_core.data.manifest import resolve
    path = resolve(root, item.image)
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC))
    except OSError as e:
        raise DataError(path, f"unreadable image ({e})") from None


# ============================================================================== figures
def _objects(item) -> list[dict]:
    return [o for o in (item.extra or {}).get("objects", []) if o.get("box")]


def _short(item) -> str:
    return f"{item.id.split('-', 1)[-1]}\n{item.category or ''}"


def _panel(ax, image, heat=None, sounding=(), others=(), labels=None, title="", hit=None, peak=None,
           other_colour="red"):
    """One image (or overlay) with boxes: sounding in lime (white on overlays), others in `other_colour`."""
    ax.imshow(image if heat is None else overlay(image, heat, alpha=0.5))
    h, w = image.shape[:2]
    draw_boxes(ax, others, (h, w), colour=other_colour, lw=0.8, labels=labels)
    draw_boxes(ax, sounding, (h, w), colour="lime" if heat is None else "white", lw=1.2)
    if peak is not None:   # drawn unclipped: a peak on the border stays visible
        ax.plot(peak[1], peak[0], marker="+" if hit else "x", ms=9, mew=2, color=HIT if hit else MISS,
                clip_on=False)
    ax.set_xlim(-0.5, w - 0.5)   # boxes touching the border must not widen the axes
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_title(title, fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])


def heatmap_grid(images, items, columns, title: str | None = None, cell: float = 1.6):
    """Figure 3 / 4: rows = items, first column = the image with the sounding box (lime) and the other
    objects (red), then one overlay per (label, display maps [N,224,224]) column with its peak marked
    (lime + inside the sounding box, red × outside). Returns a matplotlib Figure."""
    from matplotlib.figure import Figure
    n, k = len(items), 1 + len(columns)
    fig = Figure(figsize=(cell * k, cell * n + (0.4 if title else 0.1)))
    axes = np.atleast_2d(fig.subplots(n, k, squeeze=False))
    hits = {label: peak_hits(d, [it.boxes for it in items]) for label, d in columns}
    for i, it in enumerate(items):
        others = [o["box"] for o in _objects(it) if tuple(o["box"]) not in set(map(tuple, it.boxes))]
        _panel(axes[i, 0], images[i], sounding=it.boxes, others=others, title=_short(it))
        for j, (label, d) in enumerate(columns, start=1):
            r, c = peaks(d[i:i + 1])
            _panel(axes[i, j], images[i], d[i], sounding=it.boxes, peak=(r[0], c[0]), hit=hits[label][i],
                   title=label if i == 0 else "")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def swap_grid(scenes, maps: dict[str, list[np.ndarray]], cell: float = 1.8):
    """Figure 5: rows = (swap image, method); first column = the image with every object's box and
    category (yellow), then one overlay per query (the image with one visible object's sound), the queried
    object's box in white, the peak marked (lime + on the queried object, red × elsewhere) and titled
    with the object the peak lies on. ``scenes``: [(image uint8 [224,224,3], query items)];
    ``maps``: {method label: [display maps [k,224,224] per scene]}. Returns (Figure, per-query hits
    {label: [bool array per scene]})."""
    from matplotlib.figure import Figure
    ncol = 1 + max(len(q) for _, q in scenes)
    rows = [(s, label) for s in range(len(scenes)) for label in maps]
    fig = Figure(figsize=(cell * ncol, (cell + 0.25) * len(rows)))
    axes = np.atleast_2d(fig.subplots(len(rows), ncol, squeeze=False))
    hits = {label: [peak_hits(maps[label][s], [q.boxes for q in scenes[s][1]]) for s in range(len(scenes))]
            for label in maps}
    for row, (s, label) in enumerate(rows):
        image, queries = scenes[s]
        objs = _objects(queries[0])
        _panel(axes[row, 0], image, others=[o["box"] for o in objs], labels=[o["category"] for o in objs],
               other_colour="yellow", title=f"{queries[0].group.split('-', 1)[-1]}\n{label}")
        for j, q in enumerate(queries, start=1):
            d = maps[label][s][j - 1]
            r, c = peaks(d[None])
            on = peak_object(d, objs)
            _panel(axes[row, j], image, d, sounding=q.boxes, peak=(r[0], c[0]), hit=hits[label][s][j - 1],
                   title=f"sound: {q.category}\npeak on {on}")
        for j in range(1 + len(queries), ncol):
            axes[row, j].axis("off")
    fig.tight_layout()
    return fig, hits


def save_png(fig, path, dpi: int = 100) -> Path:
    """Write a Figure as PNG atomically; returns the path."""
    from avsl_core.provenance import atomic_write_bytes
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def ogl_verdict(res, test_set: str, model: str, metric: str = "ciou@0.5") -> str:
    """Figure 4's claim "OGL degrades the method's maps" from the results' bootstrap intervals:
    'reproduced' when the with-OGL interval lies below the without-OGL one, 'not reproduced' when
    above, else 'inconclusive'."""
    from avsl_core.book import pick
    a, b = pick(res, test_set, "localization", metric), pick(res, test_set, "ogl_localization", metric)
    if model not in a.index or model not in b.index:
        return "inconclusive (no OGL results for this model)"
    a, b = a.loc[model], b.loc[model]
    if b["hi"] < a["lo"]:
        return "reproduced"
    if b["lo"] > a["hi"]:
        return "not reproduced"
    return "inconclusive"
