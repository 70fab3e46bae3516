"""The AVScenes fetch step (avsl_core.data.fetch) on a generated package set, plus the committed manifests.

The fixture packages (a .deb holding a PNG, a WAV, a JPEG, a Qt .rcc, an OpenSFX .cat and a SoundFont, and
a wheel holding FLACs) are built in tmp_path with the builders of test_containers.py; their sha256s are
computed here, so every expected value is known by construction. The last test checks the real cache and
is skipped when ``data/assets`` has not been fetched.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from avsl_core.config import repo_root
from avsl_core.data import fetch as F
from avsl_core.errors import DataError
from test_containers import make_cat, make_deb, make_rcc, make_sf2, make_wav

SR_IN = 44100


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _write_csv(path: Path, fields, rows) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def _png() -> bytes:
    img = Image.new("RGBA", (40, 30), (0, 0, 0, 0))
    img.paste(Image.new("RGBA", (20, 10), (200, 30, 30, 255)), (10, 12))    # the object: 20 x 10
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _jpg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _flac(seconds: float, rate: int = 48000) -> bytes:
    buf = io.BytesIO()
    t = np.arange(int(seconds * rate)) / rate
    sf.write(buf, 0.3 * np.sin(2 * np.pi * 440 * t), rate, format="FLAC")
    return buf.getvalue()


@pytest.fixture
def pkgset(tmp_path):
    """(manifests dir, debs dir, {asset_id: original bytes}) for two fake packages."""
    t = np.arange(SR_IN // 2) / SR_IN
    stereo = np.stack([np.sin(2 * np.pi * 1000 * t), np.sin(2 * np.pi * 1000 * t)], 1).ravel() * 12000
    sine = (np.sin(np.arange(400) * 2 * np.pi / 50) * 9000).astype(np.int16)
    orig = {"c1-img": _png(), "c1-snd": make_wav(stereo, SR_IN, channels=2),
            "c1-rcc": make_wav(np.arange(800) % 200 * 50, 8000), "c2-cat": make_wav(np.arange(2205) % 100 * 90, 22050),
            "bg": _jpg(), "c2-whl": _flac(0.25), "amb": _flac(1.0)}
    inner = {"usr/share/f/img.png": orig["c1-img"], "usr/share/f/snd.wav": orig["c1-snd"],
             "usr/share/f/bg.jpg": orig["bg"],
             "usr/share/f/res.rcc": make_rcc({"g/s/tone.wav": orig["c1-rcc"]}, compress={"g/s/tone.wav"}),
             "usr/share/f/sfx.cat": make_cat([('"Cow". By someone. License: CC0.', orig["c2-cat"])]),
             "usr/share/f/font.sf2": make_sf2(sine, rate=8000, loop=(100, 300), program=7)}
    orig["c2-sf2"] = sine.tobytes()                       # an SF2 row hashes the raw sample PCM
    debs = tmp_path / "debs"
    debs.mkdir()
    make_deb(debs / "fake-data_1%3a1.0_all.deb", inner)
    whl = debs / "fake_wheel-0.1-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr("fake_wheel/sounds/a.flac", orig["c2-whl"])
        z.writestr("fake_wheel/sounds/amb.flac", orig["amb"])
    mdir = tmp_path / "manifests"
    mdir.mkdir()
    _write_csv(mdir / "packages.csv", F.PKG_FIELDS, [
        dict(package="fake-data", version="1:1.0", registry="apt", filename="fake-data_1%3a1.0_all.deb",
             sha256=F.sha256_file(debs / "fake-data_1%3a1.0_all.deb")),
        dict(package="fake-wheel", version="0.1", registry="pypi", filename=whl.name, sha256=F.sha256_file(whl))])
    rows = [("c1-img", "c1", "image", "photo_cutout", "fake-data", "usr/share/f/img.png", "test", "g1"),
            ("c1-snd", "c1", "audio", "recording", "fake-data", "usr/share/f/snd.wav", "train", "g2"),
            ("c1-rcc", "c1", "audio", "recording", "fake-data", "usr/share/f/res.rcc::g/s/tone.wav", "test", "g3"),
            ("c2-cat", "c2", "audio", "recording", "fake-data", "usr/share/f/sfx.cat::Cow", "test", "g4"),
            ("c2-sf2", "c2", "audio", "instrument_sample", "fake-data", "usr/share/f/font.sf2::7/Tone C4", "train",
             "g5"),
            ("c2-whl", "c2", "audio", "recording", "fake-wheel", "fake_wheel/sounds/a.flac", "train", "g6"),
            ("bg", "", "background", "photo_background", "fake-data", "usr/share/f/bg.jpg", "train", "g7"),
            ("amb", "", "ambience", "ambience", "fake-wheel", "fake_wheel/sounds/amb.flac", "test", "g8")]
    ver = {"fake-data": "1:1.0", "fake-wheel": "0.1"}
    _write_csv(mdir / "assets.csv", F.ASSET_FIELDS, [
        dict(asset_id=a, category=c, modality=m, kind=k, package=p, package_version=ver[p], path_in_package=q,
             sha256=_sha(orig[a]), licence="CC0-1.0", split=s, group=g) for a, c, m, k, p, q, s, g in rows])
    return mdir, debs, orig


def _fetch(tmp_path, mdir, debs, **kw):
    logs = []
    dest = F.fetch(tmp_path / "assets", tmp_path / "dl", debs, mdir, workers=1, log=logs.append, **kw)
    return dest, logs


def test_fetch_extracts_checks_and_converts(tmp_path, pkgset):
    mdir, debs, orig = pkgset
    dest, _ = _fetch(tmp_path, mdir, debs)
    df = F.load_asset_index(dest)
    assert list(df.columns) == list(F.INDEX_FIELDS) and len(df) == 8
    p = dict(zip(df["asset_id"], df["path"]))
    assert p["c1-img"] == "images/c1-img.png" and p["bg"] == "backgrounds/bg.jpg" and p["amb"] == "ambience/amb.wav"
    img = Image.open(dest / p["c1-img"])
    assert img.mode == "RGBA" and img.size == (20, 10)            # cropped to the opaque object
    assert (dest / p["bg"]).read_bytes() == orig["bg"]            # an RGB JPEG background is kept byte for byte
    frames = {}
    for a in ("c1-snd", "c1-rcc", "c2-cat", "c2-sf2", "c2-whl", "amb"):
        info = sf.info(dest / p[a])
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16"), a
        frames[a] = info.frames
    # 0.5 s at 44.1 kHz, 0.1 s at 8 kHz and 22.05 kHz, 0.25 s at 48 kHz -> exact 16 kHz lengths;
    # the 0.05 s SoundFont sample is looped to 1.5 s
    assert frames == {"c1-snd": 8000, "c1-rcc": 1600, "c2-cat": 1600, "c2-sf2": 24000, "c2-whl": 4000, "amb": 16000}
    y, _ = sf.read(dest / p["c1-snd"])
    spec = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    assert abs(np.argmax(spec) * 16000 / len(y) - 1000) <= 2      # the 1 kHz tone survives resampling


def test_second_run_is_a_noop_and_memo_rebuild_skips_extraction(tmp_path, pkgset, monkeypatch):
    mdir, debs, _ = pkgset
    dest, _ = _fetch(tmp_path, mdir, debs)
    stamp = (dest / F.STAMP).stat().st_mtime_ns
    _, logs = _fetch(tmp_path, mdir, debs)
    assert logs == [f"asset cache {dest} is up to date"]
    assert (dest / F.STAMP).stat().st_mtime_ns == stamp
    # --force rebuilds from the converted-file memo without opening any package
    monkeypatch.setattr(F, "extract_members", lambda *a: (_ for _ in ()).throw(AssertionError("extracted")))
    _fetch(tmp_path, mdir, debs, force=True)
    assert len(F.load_asset_index(dest)) == 8


def test_hash_mismatch_names_the_file_and_leaves_nothing_half_written(tmp_path, pkgset):
    mdir, debs, _ = pkgset
    dest, _ = _fetch(tmp_path, mdir, debs)
    index_before = (dest / "index.csv").read_bytes()
    rows = list(csv.DictReader(open(mdir / "assets.csv")))
    rows[2]["sha256"] = "0" * 64                                   # the .rcc member
    _write_csv(mdir / "assets.csv", F.ASSET_FIELDS, rows)
    where = r"fake-data_1%3a1\.0_all\.deb:usr/share/f/res\.rcc::g/s/tone\.wav"
    with pytest.raises(DataError, match=where + ": sha256 mismatch"):
        _fetch(tmp_path, mdir, debs)
    assert (dest / "index.csv").read_bytes() == index_before       # the previous cache is untouched
    assert not list(tmp_path.glob(".assets.*")) and not list(tmp_path.glob(".assets*"))
    other = tmp_path / "fresh"
    with pytest.raises(DataError, match="sha256 mismatch"):
        F.fetch(other / "assets", tmp_path / "dl2", debs, mdir, workers=1, memo=False, log=lambda *a: None)
    assert not other.exists() or not any(other.iterdir())


def test_missing_package_is_a_clear_error(tmp_path, pkgset, monkeypatch):
    mdir, debs, _ = pkgset
    (debs / "fake-data_1%3a1.0_all.deb").unlink()
    monkeypatch.setattr(F.shutil, "which", lambda name: None)    # a machine without apt-get
    with pytest.raises(DataError, match=r"fake-data_1%3a1\.0_all\.deb: package fake-data=1:1\.0 not found .*--debs"):
        _fetch(tmp_path, mdir, debs)
    assert not (tmp_path / "assets").exists()


def test_a_download_with_the_wrong_hash_is_rejected_and_removed(tmp_path, pkgset, monkeypatch):
    mdir, debs, _ = pkgset
    (debs / "fake-data_1%3a1.0_all.deb").unlink()
    calls = []

    def fake_run(cmd, what, cwd=None):                             # 'apt-get download' fetching a wrong file
        calls.append(cmd)
        Path(cwd, "fake-data_1%3a1.0_all.deb").write_bytes(b"not the pinned package")

    monkeypatch.setattr(F.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(F, "prepare_apt", lambda downloads, log: ["-o", "X=1"])
    monkeypatch.setattr(F, "_run", fake_run)
    with pytest.raises(DataError, match=r"fake-data_1%3a1\.0_all\.deb: sha256 mismatch for fake-data=1:1\.0"):
        _fetch(tmp_path, mdir, debs)
    assert calls == [["apt-get", "download", "-o", "X=1", "fake-data=1:1.0"]]
    assert not list((tmp_path / "dl").iterdir())                  # neither the file nor a temp folder stays


def test_host_debian_source_reads_one_line_and_deb822(tmp_path, monkeypatch):
    monkeypatch.delenv("AVSL_APT_URI", raising=False)
    d = tmp_path / "apt"
    (d / "sources.list.d").mkdir(parents=True)
    (d / "sources.list.d" / "other.sources").write_text(
        "Types: deb\nURIs: https://vendor.invalid/node\nSuites: nodistro\nComponents: main\n\n"
        "Types: deb\nURIs: http://disabled.invalid/debian\nSuites: trixie\nComponents: main\nEnabled: no\n\n"
        "Types: deb\nURIs: http://sec.invalid/debian-security\nSuites: trixie-security\nComponents: main\n\n"
        "Types: deb deb-src\nURIs: http://archive.invalid/debian/\nSuites: trixie trixie-updates\n"
        "Components: main contrib\nSigned-By: /nonexistent/keyring.gpg\n")
    assert F.host_debian_source((str(d),)) == ("http://archive.invalid/debian", None)
    (d / "sources.list").write_text(
        "# comment\ndeb http://sec.invalid/debian-security bookworm-security main\n"
        f"deb [arch=amd64 signed-by={d / 'sources.list'}] http://one.invalid/debian bookworm main\n")
    assert F.host_debian_source((str(d),)) == ("http://one.invalid/debian", str(d / "sources.list"))
    for f in [d / "sources.list", *(d / "sources.list.d").iterdir()]:
        f.unlink()
    with pytest.raises(DataError, match="no Debian archive"):
        F.host_debian_source((str(d),))


def test_load_asset_index_rejects_bad_caches(tmp_path):
    with pytest.raises(DataError, match="asset index not found"):
        F.load_asset_index(tmp_path)
    (tmp_path / "a.wav").write_bytes(b"x")
    rows = [dict(asset_id="a", category="c", modality="audio", kind="recording", path="a.wav", split="train",
                 group="g", licence="CC0"),
            dict(asset_id="b", category="c", modality="audio", kind="recording", path="a.wav", split="test",
                 group="g", licence="CC0")]
    _write_csv(tmp_path / "index.csv", F.INDEX_FIELDS, rows)
    with pytest.raises(DataError, match="dedup group 'g' spans train and test"):
        F.load_asset_index(tmp_path)
    rows[1].update(group="h", path="missing.wav")
    _write_csv(tmp_path / "index.csv", F.INDEX_FIELDS, rows)
    with pytest.raises(DataError, match=r"missing\.wav row 3: listed in index\.csv but missing"):
        F.load_asset_index(tmp_path)


# ----------------------------------------------------------------------------------------- committed manifests

MDIR = repo_root() / "data_manifests" / "avscenes"


def _check_split_table(rows, heard):
    """Per heard category: >= 3 images and >= 3 recordings, each modality with train and test files."""
    by = {}
    for r in rows:
        by.setdefault((r["category"], r["modality"]), []).append(r["split"])
    for c in heard:
        for m in ("image", "audio"):
            s = by.get((c, m), [])
            assert len(s) >= 3 and "train" in s and "test" in s, (c, m, s)
    groups = {}
    for r in rows:
        groups.setdefault(r["group"], set()).add(r["split"])
    assert all(len(v) == 1 for v in groups.values())               # no dedup group on both sides


def test_committed_manifests_are_consistent():
    pins = {p.package: p.version for p in F.read_packages(MDIR / "packages.csv")}
    rows = F.read_assets(MDIR / "assets.csv")
    assert all(pins.get(r["package"]) == r["package_version"] for r in rows)
    assert not any(r["path_in_package"].lower().endswith((".svg", ".svgz")) for r in rows)
    splits = json.loads((MDIR / "category_splits.json").read_text())
    for k in ("split1", "split2"):
        heard, unheard = set(splits[k]["heard"]), set(splits[k]["unheard"])
        assert heard and unheard and not heard & unheard
    assert set(splits["split1"]["heard"]) != set(splits["split2"]["heard"])
    assert len(splits["split1"]["heard"]) >= 23
    _check_split_table(rows, splits["split1"]["heard"])
    cats = {r["category"] for r in rows if r["modality"] in ("image", "audio")}
    assert cats == set(splits["split1"]["heard"]) | set(splits["split1"]["unheard"])
    mods = {(r["modality"], r["split"]) for r in rows}
    assert {("background", "train"), ("background", "test"), ("ambience", "train"), ("ambience", "test")} <= mods


@pytest.mark.skipif(not (repo_root() / "data" / "assets" / "index.csv").is_file(),
                    reason="real asset cache not fetched (python -m avsl_core.data.fetch)")
def test_real_asset_cache():
    df = F.load_asset_index(repo_root() / "data" / "assets")
    rows = df.to_dict("records")
    assert df["asset_id"].is_unique and df["path"].is_unique      # no file in both splits
    counts = df[df.modality.isin(["image", "audio"])].groupby(["category", "modality"]).size().unstack(fill_value=0)
    assert ((counts["image"] >= 3) & (counts["audio"] >= 3)).sum() >= 23
    splits = json.loads((MDIR / "category_splits.json").read_text())
    _check_split_table(rows, splits["split1"]["heard"])
    committed = {r["asset_id"]: r["split"] for r in F.read_assets(MDIR / "assets.csv")}
    assert dict(zip(df["asset_id"], df["split"])) == committed
    for r in df[df.modality.isin(["audio", "ambience"])].head(20).itertuples():
        info = sf.info(repo_root() / "data" / "assets" / r.path)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
