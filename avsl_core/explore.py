"""The sound-swap explorer (SPEC §4, paper Figure 5 made interactive): pick an image and a sound, see
where each trained method localizes that sound, and which test images the sound retrieves.

Everything the widget does is a plain function or method here, testable without a kernel:

* ``Explorer.maps_for(image, sound)`` -> {method: [h, w] cosine map} (paper Eq. 3 summand),
* ``Explorer.render_panel(image, sound)`` -> a figure: the image with its object boxes, then one
  overlay per method with the map's peak (lime when it falls in the sounding object's box, red if not),
* ``Explorer.retrieve(sound, k)`` -> the k test images whose s_A embedding (Eq. 4) is closest to the
  sound's, and ``render_retrieval`` the strip of them per method,
* ``Explorer.swap_grid(...)`` -> the static grid the book shows in place of a live kernel: rows are
  multi-object swap images × methods, columns each visible object's sound,
* ``load_upload(bytes, kind)`` -> an uploaded image (any PIL mode) or sound (any soundfile format).

``build_widget(explorer)`` only wires these to ipywidgets. What to look for: when the sound changes and
the image does not, a method that listens moves its peak to the object whose sound plays; a map that
stays put is driven by the image alone.
"""
from __future__ import annotations

import html
import io
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from avsl_core.audio import load_audio
from avsl_core.config import repo_root
from avsl_core.errors import DataError
from avsl_core.viz import draw_boxes, overlay, peak_xy
from avsl_core.vision import load_image_rgb, to_tensor_normalized

METHOD_ORDER = ("ours", "attention10k", "lvs", "ezvsl", "slavc")   # the main methods (contract run names)
Box = tuple[float, float, float, float]                             # normalised x1, y1, x2, y2


@dataclass
class Method:
    """A trained method and the inputs it was trained on (image size, audio front-end)."""
    name: str
    net: torch.nn.Module          # localization_map(images, specs) -> [B, h, w]; embed_image / embed_audio
    image_size: int = 96
    frontend: str = "logmel"
    audio_seconds: float = 3.0
    logmel_kwargs: dict = field(default_factory=dict)

    @classmethod
    def from_checkpoint(cls, name: str, path: str | Path) -> "Method":
        from avsl_core.baselines import load_method_checkpoint
        net = load_method_checkpoint(path)
        data = (torch.load(path, map_location="cpu", weights_only=True).get("config") or {}).get("data") or {}
        opts = data.get("options") or {}
        return cls(name, net, int(data.get("image_size", 96)), str(data.get("frontend", "logmel")),
                   float(opts.get("audio_seconds", 3.0)), dict(opts.get("logmel_kwargs") or {}))

    def spec(self, wave: np.ndarray) -> torch.Tensor:
        """wave [T] at 16 kHz -> the method's spectrogram of the fixed window  [1, F, T']."""
        from avsl_core.data.datasets import SpecFrontend
        front = SpecFrontend(self.frontend, self.audio_seconds, **self.logmel_kwargs)
        return front(front.main_window(wave))


@dataclass
class Scene:
    """A test image with its visible objects (category, box)."""
    key: str
    image: Image.Image
    objects: list[tuple[str | None, Box]] = field(default_factory=list)
    label: str = ""


@dataclass
class Sound:
    """A recording; ``scene`` and ``boxes`` say which image it was recorded for and where it sounds."""
    key: str
    wave: np.ndarray
    category: str | None = None
    scene: str | None = None
    boxes: tuple[Box, ...] = ()
    label: str = ""


def main_methods(train: dict) -> dict[str, str]:
    """{name: checkpoint} of the main methods of a train.json: catalogue runs with train_set "train"
    named after their method (not the ablations or the k sweep); without a catalogue, every checkpoint."""
    ckpts, cat = train.get("checkpoints") or {}, train.get("catalogue")
    if cat:
        on_train = [n for n in ckpts if (cat.get(n) or {}).get("train_set") == "train"]
        names = [n for n in on_train if cat[n].get("method") == n] or on_train
    else:
        names = list(ckpts)
    rank = {n: i for i, n in enumerate(METHOD_ORDER)}
    return {n: ckpts[n] for n in sorted(names, key=lambda n: (rank.get(n, len(rank)), n))}


def _resolve(path: str | Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() or p.exists() else repo_root() / p


def load_upload(data: bytes, kind: str, name: str = "upload"):
    """Uploaded bytes -> PIL RGB image (``kind="image"``, any PIL mode) or float32 16 kHz mono wave
    (``kind="audio"``, any format soundfile reads). Unreadable, empty or silent uploads raise DataError
    naming the upload; the decoding is ``vision.load_image_rgb`` / ``audio.load_audio``."""
    if kind not in ("image", "audio"):
        raise ValueError(f"kind must be 'image' or 'audio', got {kind!r}")
    if not data:
        raise DataError(name, "empty upload (0 bytes)")
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / (Path(name).name or "upload")
        p.write_bytes(bytes(data))
        try:
            return load_image_rgb(p) if kind == "image" else load_audio(p)
        except DataError as e:
            raise DataError(name, e.problem) from None


def figure_png(fig, dpi: int = 100) -> bytes:
    """A matplotlib figure as PNG bytes (for ipywidgets.Image)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def _in_box(xy: tuple[float, float], size: tuple[int, int], boxes) -> bool | None:
    if not boxes:
        return None
    x, y = xy[0] / size[1], xy[1] / size[0]
    return any(x1 <= x <= x2 and y1 <= y <= y2 for x1, y1, x2, y2 in boxes)


class Explorer:
    """Methods, test images and recordings, with the tensors and retrieval embeddings cached."""

    def __init__(self, methods: Sequence[Method], scenes: Sequence[Scene], sounds: Sequence[Sound]):
        if not methods:
            raise ValueError("Explorer needs at least one trained method")
        self.methods = {m.name: m for m in methods}
        self.scenes = {s.key: s for s in scenes}
        self.sounds = {s.key: s for s in sounds}
        self._specs: dict[tuple[str, str], torch.Tensor] = {}
        self._images: dict[tuple[str, int], torch.Tensor] = {}
        self._emb: dict[str, dict[str, torch.Tensor]] = {m.name: {} for m in methods}

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_manifest(cls, methods: Sequence[Method], manifest: str | Path, root: str | Path | None = None,
                      max_items: int | None = None) -> "Explorer":
        """Scenes = the manifest's distinct images, sounds = its recordings (negatives included)."""
        from avsl_core.data.manifest import read_manifest, resolve
        manifest = Path(manifest)
        root = Path(root) if root is not None else manifest.parent
        items = read_manifest(manifest, root)[:max_items]
        scenes: dict[str, Scene] = {}
        by_image: dict[str, str] = {}
        sounds = []
        for it in items:
            ex = it.extra or {}
            if it.image not in by_image:
                key = ex.get("scene") or it.group or it.id
                objs = [(o.get("category"), tuple(o["box"])) for o in ex.get("objects", []) if o.get("box")]
                objs = objs or [(it.category, b) for b in it.boxes]
                cats = ", ".join(sorted({c for c, _ in objs if c}))
                scenes[key] = Scene(key, load_image_rgb(resolve(root, it.image)), objs, f"{key} ({cats})")
                by_image[it.image] = key
            kind = ex.get("kind", "negative" if it.negative else "loc")
            tag = it.category or "silence"
            sounds.append(Sound(it.id, load_audio(resolve(root, it.audio), allow_silent=it.negative), it.category,
                                by_image[it.image], tuple(it.boxes),
                                f"{tag} — {it.id}" + (f" ({kind})" if it.negative else "")))
        return cls(methods, list(scenes.values()), sounds)

    @classmethod
    def from_runs(cls, runs_dir: str | Path, test_set: str = "test_seen", data_dir: str | Path | None = None,
                  names: Sequence[str] | None = None, max_items: int | None = None) -> "Explorer":
        """The main methods of ``runs_dir/results/train.json`` on ``data/avscenes/<profile>/<test_set>``."""
        path = Path(runs_dir) / "results" / "train.json"
        if not path.exists():
            raise DataError(path, "no training results (run the training page first)")
        train = json.loads(path.read_text())
        ckpts = main_methods(train)
        if names is not None:
            ckpts = {n: train["checkpoints"][n] for n in names}
        methods = [Method.from_checkpoint(n, _resolve(p)) for n, p in ckpts.items()]
        data_dir = Path(data_dir) if data_dir else Path("data/avscenes") / str(train.get("profile")) / test_set
        return cls.from_manifest(methods, data_dir / "manifest.jsonl", data_dir, max_items)

    def add_image(self, key: str, image: Image.Image) -> str:
        self.scenes[key] = Scene(key, image.convert("RGB"), [], f"{key} (uploaded)")
        return key

    def add_sound(self, key: str, wave: np.ndarray, category: str | None = None) -> str:
        self.sounds[key] = Sound(key, np.asarray(wave, np.float32), category, label=f"{key} (uploaded)")
        return key

    def categories(self) -> list[str]:
        return sorted({s.category for s in self.sounds.values() if s.category})

    def sound_for_category(self, category: str, scene: str | None = None) -> str:
        """A recording of ``category``: the one recorded for ``scene`` when it has one (a swap query)."""
        keys = [k for k, s in self.sounds.items() if s.category == category]
        if not keys:
            raise ValueError(f"no test recording of category {category!r}; known: {self.categories()}")
        return next((k for k in keys if self.sounds[k].scene == scene), keys[0])

    def swap_scenes(self) -> list[str]:
        """Images recorded with two or more different sounding objects (the swap sets)."""
        n: dict[str, int] = {}
        for s in self.sounds.values():
            if s.scene is not None and s.boxes:
                n[s.scene] = n.get(s.scene, 0) + 1
        return sorted(k for k, c in n.items() if c >= 2)

    # -- inputs --------------------------------------------------------------------------------------
    def _scene(self, image) -> Scene:
        if isinstance(image, Scene):
            return image
        if isinstance(image, Image.Image):
            return Scene("<image>", image.convert("RGB"))
        if image not in self.scenes:
            raise KeyError(f"unknown image {image!r}")
        return self.scenes[image]

    def _sound(self, sound) -> Sound:
        if isinstance(sound, Sound):
            return sound
        if isinstance(sound, np.ndarray):
            return Sound("<wave>", sound.astype(np.float32))
        if sound not in self.sounds:
            raise KeyError(f"unknown sound {sound!r}")
        return self.sounds[sound]

    def _image_tensor(self, m: Method, sc: Scene) -> torch.Tensor:
        key = (sc.key, m.image_size)
        if key not in self._images or sc.key.startswith("<"):
            self._images[key] = to_tensor_normalized(sc.image, m.image_size)       # [3, S, S]
        return self._images[key]

    def _spec(self, m: Method, snd: Sound) -> torch.Tensor:
        key = (snd.key, f"{m.frontend}/{m.audio_seconds}/{sorted(m.logmel_kwargs.items())}")
        if key not in self._specs or snd.key.startswith("<"):
            self._specs[key] = m.spec(snd.wave)                                      # [1, F, T]
        return self._specs[key]

    def expected_boxes(self, image, sound) -> tuple[Box, ...]:
        """Where the sound should be in the image: its own box when it was recorded for this image,
        else the boxes of the image's objects of the sound's category (empty when unknown)."""
        sc, snd = self._scene(image), self._sound(sound)
        if snd.scene == sc.key and snd.boxes:
            return tuple(snd.boxes)
        return tuple(b for c, b in sc.objects if snd.category and c == snd.category)

    # -- callbacks -----------------------------------------------------------------------------------
    @torch.inference_mode()
    def maps_for(self, image, sound) -> dict[str, np.ndarray]:
        """{method: cosine map [h, w]} of one image (key, Scene or PIL) and one sound (key, Sound, wave)."""
        sc, snd = self._scene(image), self._sound(sound)
        return {n: m.net.localization_map(self._image_tensor(m, sc)[None], self._spec(m, snd)[None])[0]
                .float().numpy() for n, m in self.methods.items()}

    def peaks(self, image, sound, maps=None) -> dict[str, dict]:
        """{method: {"x", "y" (pixels of the shown image), "in_box" (None when the box is unknown), "max"}}."""
        sc = self._scene(image)
        maps = maps if maps is not None else self.maps_for(image, sound)
        boxes, size = self.expected_boxes(image, sound), (sc.image.height, sc.image.width)
        out = {}
        for n, m in maps.items():
            xy = peak_xy(m, size)
            out[n] = {"x": xy[0], "y": xy[1], "in_box": _in_box(xy, size, boxes), "max": float(m.max())}
        return out

    def _draw(self, ax, sc: Scene, heat, boxes, peak=None, hit=None):
        img = np.asarray(sc.image)
        ax.imshow(overlay(img, heat) if heat is not None else img)
        ax.set_xticks([]), ax.set_yticks([])
        if heat is None:
            draw_boxes(ax, [b for _, b in sc.objects], img.shape[:2], colour="red", lw=1.0,
                       labels=[c or "?" for c, _ in sc.objects])
        draw_boxes(ax, boxes, img.shape[:2], colour="lime")
        if peak is not None:   # peak_xy gives pixel-edge coordinates; imshow centres pixel i at i
            ax.plot(peak[0] - 0.5, peak[1] - 0.5, marker="X", ms=11, mfc="lime" if hit else "red",
                    mec="black", mew=1.2)
        ax.set_xlim(-0.5, img.shape[1] - 0.5), ax.set_ylim(img.shape[0] - 0.5, -0.5)  # boxes on the edge

    def render_panel(self, image, sound, maps=None):
        """Figure: the image with its objects (sounding box in lime), then each method's overlay with
        its peak (lime marker = inside the sounding box, red = outside or box unknown)."""
        from matplotlib.figure import Figure
        sc, snd = self._scene(image), self._sound(sound)
        maps = maps if maps is not None else self.maps_for(sc, snd)
        peaks, boxes = self.peaks(sc, snd, maps), self.expected_boxes(sc, snd)
        n = 1 + len(maps)
        fig = Figure(figsize=(2.3 * n, 2.8), layout="constrained")
        axes = fig.subplots(1, n, squeeze=False)[0]
        self._draw(axes[0], sc, None, boxes)
        axes[0].set_title(sc.key, fontsize=8)
        for ax, (name, m) in zip(axes[1:], maps.items()):
            p = peaks[name]
            self._draw(ax, sc, m, boxes, (p["x"], p["y"]), p["in_box"])
            where = {True: "in box", False: "outside box", None: "box unknown"}[p["in_box"]]
            ax.set_title(f"{name}\npeak ({p['x']:.0f}, {p['y']:.0f}) px, {where}", fontsize=8)
        fig.suptitle(f"sound: {snd.label or snd.key}", fontsize=9)
        return fig

    @torch.inference_mode()
    def retrieve(self, sound, k: int = 5, method: str | None = None) -> list[dict]:
        """Top-k test images for the sound by cosine of s_A embeddings (Eq. 4; audio -> image retrieval):
        [{"scene", "score", "categories", "match" (the sound's category is among them)}], best first."""
        name = method or next(iter(self.methods))
        m, snd = self.methods[name], self._sound(sound)
        cache = self._emb[name]
        todo = [k_ for k_ in self.scenes if k_ not in cache]
        for i in range(0, len(todo), 64):
            batch = torch.stack([self._image_tensor(m, self.scenes[k_]) for k_ in todo[i:i + 64]])
            for k_, e in zip(todo[i:i + 64], m.net.embed_image(batch).float()):
                cache[k_] = e                                                         # [d]
        keys = list(self.scenes)
        img = torch.stack([cache[k_] for k_ in keys])                                 # [N, d]
        aud = m.net.embed_audio(self._spec(m, snd)[None]).float()[0]                   # [d]
        scores = img @ aud                                                            # [N]
        top = torch.topk(scores, min(k, len(keys))).indices.tolist()
        out = []
        for i in top:
            cats = sorted({c for c, _ in self.scenes[keys[i]].objects if c})
            out.append({"scene": keys[i], "score": float(scores[i]), "categories": cats,
                        "match": snd.category in cats if snd.category else None})
        return out

    def render_retrieval(self, sound, k: int = 5):
        """Figure: one row per method, its top-k images (green title = the sound's category is in it)."""
        from matplotlib.figure import Figure
        rows = {n: self.retrieve(sound, k, n) for n in self.methods}
        ncols = max(len(r) for r in rows.values())
        fig = Figure(figsize=(1.5 * ncols + 0.6, 1.7 * len(rows)), layout="constrained")
        axes = fig.subplots(len(rows), ncols, squeeze=False)
        for r, (name, hits) in enumerate(rows.items()):
            for c, ax in enumerate(axes[r]):
                ax.set_xticks([]), ax.set_yticks([])
                if c >= len(hits):
                    ax.axis("off")
                    continue
                h = hits[c]
                ax.imshow(np.asarray(self.scenes[h["scene"]].image))
                ax.set_title(f"{', '.join(h['categories']) or '?'}\ncos {h['score']:.2f}", fontsize=7,
                             color={True: "green", False: "red", None: "black"}[h["match"]])
            axes[r, 0].set_ylabel(name, fontsize=8)
        fig.suptitle(f"images retrieved by: {self._sound(sound).label}", fontsize=9)
        return fig

    def swap_grid(self, scenes: Sequence[str] | None = None, n: int = 4, seed: int = 0):
        """Figure 5 as a grid: for each multi-object image (``scenes``, else ``n`` swap images drawn with
        ``seed``), one row per method, one column per recording made for that image (each visible
        object's sound in turn); sounding box in lime, peak marker lime when inside it."""
        from matplotlib.figure import Figure
        if scenes is None:
            pool = self.swap_scenes()
            rng = np.random.default_rng(seed)
            scenes = sorted(rng.choice(pool, size=min(n, len(pool)), replace=False).tolist()) if pool else []
        if not scenes:
            raise ValueError("no multi-object swap images in this test set")
        sounds = {s: [k for k, v in self.sounds.items() if v.scene == s and v.boxes] for s in scenes}
        ncols, nm = max(len(v) for v in sounds.values()), len(self.methods)
        fig = Figure(figsize=(1.7 * ncols + 0.8, 1.75 * nm * len(scenes)), layout="constrained")
        axes = fig.subplots(nm * len(scenes), ncols, squeeze=False)
        for b, sc_key in enumerate(scenes):
            for c in range(ncols):
                if c >= len(sounds[sc_key]):
                    for r in range(nm):
                        axes[b * nm + r, c].axis("off")
                    continue
                snd = self.sounds[sounds[sc_key][c]]
                maps, sc = self.maps_for(sc_key, snd), self.scenes[sc_key]
                peaks = self.peaks(sc, snd, maps)
                for r, (name, m) in enumerate(maps.items()):
                    ax = axes[b * nm + r, c]
                    p = peaks[name]
                    self._draw(ax, sc, m, snd.boxes, (p["x"], p["y"]), p["in_box"])
                    if r == 0:
                        ax.set_title(f"sound: {snd.category}", fontsize=8)
                    if c == 0:
                        ax.set_ylabel((f"{sc_key}\n" if r == 0 else "") + name, fontsize=7)
        return fig


def peaks_html(peaks: dict[str, dict]) -> str:
    """The peak table under the panel."""
    said = {True: "yes", False: "no", None: "unknown"}
    rows = "".join(f"<tr><td>{html.escape(n)}</td><td>({p['x']:.0f}, {p['y']:.0f})</td>"
                   f"<td>{said[p['in_box']]}</td><td>{p['max']:.3f}</td></tr>" for n, p in peaks.items())
    return ("<table><tr><th>method</th><th>peak (x, y) px</th><th>in the sounding box</th>"
            f"<th>max cos</th></tr>{rows}</table>")


def build_widget(ex: Explorer, image: str | None = None, sound: str | None = None, k: int = 5):
    """ipywidgets view: image / sound / category dropdowns, image and sound uploads, the panel, the peak
    table and the retrieval strip. Returns the VBox (its ``.children`` are the controls and outputs)."""
    import ipywidgets as W
    img_dd = W.Dropdown(options=[(s.label, k_) for k_, s in ex.scenes.items()], description="image",
                        layout=W.Layout(width="48%"))
    snd_dd = W.Dropdown(options=[(s.label, k_) for k_, s in ex.sounds.items()], description="sound",
                        layout=W.Layout(width="48%"))
    cat_dd = W.Dropdown(options=[("(pick a category)", "")] + [(c, c) for c in ex.categories()],
                        description="category")
    up_img = W.FileUpload(accept="image/*", multiple=False, description="upload image")
    up_snd = W.FileUpload(accept="audio/*,.wav,.flac,.ogg", multiple=False, description="upload sound")
    panel, strip, info = W.Image(format="png"), W.Image(format="png"), W.HTML()
    swaps = ex.swap_scenes()      # open on a swap image and its first sound: the static book shows that
    image = image or (swaps[0] if swaps else None)
    if image is not None:
        img_dd.value = image
    sound = sound or next((k_ for k_, s in ex.sounds.items() if s.scene == image and s.boxes), None)
    if sound is not None:
        snd_dd.value = sound

    def refresh(*_):
        try:
            maps = ex.maps_for(img_dd.value, snd_dd.value)
            panel.value = figure_png(ex.render_panel(img_dd.value, snd_dd.value, maps))
            info.value = peaks_html(ex.peaks(img_dd.value, snd_dd.value, maps))
            strip.value = figure_png(ex.render_retrieval(snd_dd.value, k))
        except (DataError, KeyError, ValueError) as e:
            info.value = f"<b>error:</b> {html.escape(str(e))}"

    def on_category(change):
        if change["new"]:
            snd_dd.value = ex.sound_for_category(change["new"], img_dd.value)

    def on_upload(widget, dd, kind):
        def handler(change):
            for f in change["new"] or ():
                try:
                    data = load_upload(bytes(f["content"]), kind, f["name"])
                except DataError as e:
                    info.value = f"<b>upload refused:</b> {html.escape(str(e))}"
                    continue
                key = (ex.add_image if kind == "image" else ex.add_sound)(f"upload: {f['name']}", data)
                dd.options = [o for o in dd.options if o[1] != key] + [(f"{key} (uploaded)", key)]
                dd.value = key
        widget.observe(handler, names="value")

    img_dd.observe(refresh, names="value")
    snd_dd.observe(refresh, names="value")
    cat_dd.observe(on_category, names="value")
    on_upload(up_img, img_dd, "image")
    on_upload(up_snd, snd_dd, "audio")
    refresh()
    return W.VBox([W.HBox([img_dd, snd_dd]), W.HBox([cat_dd, up_img, up_snd]), panel, info,
                   W.HTML("<b>Images this sound retrieves</b> (top-k by s_A cosine, per method)"), strip])
