"""prep_clips: clear error without ffmpeg; failures listed, not fatal; idempotent; atomic outputs.

Without an ffmpeg binary the subprocess seam (``prep_clips._run``) is replaced by a fake that plays
ffprobe/ffmpeg; with one, a tiny real clip made by ffmpeg itself goes through the real thing.
"""
from __future__ import annotations

import csv
import shutil
import subprocess

import pytest

from avsl_core.data import prep_clips as P
from avsl_core.data.manifest import read_manifest


def test_missing_ffmpeg_gives_the_install_hint(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(P.shutil, "which", lambda name: None)
    (tmp_path / "v").mkdir()
    with pytest.raises(P.FFmpegNotFound, match=r"install ffmpeg \(apt-get install ffmpeg\)"):
        P.prep_clips(tmp_path / "v", tmp_path / "out")
    assert P.main(["--videos", str(tmp_path / "v"), "--out", str(tmp_path / "out")]) == 2
    assert "install ffmpeg (apt-get install ffmpeg)" in capsys.readouterr().err


class FakeFFmpeg:
    """Plays ffprobe + ffmpeg from the video file's first bytes: OK, CORRUPT, NOAUDIO, HANG."""

    def __init__(self):
        self.calls = []

    def __call__(self, cmd, timeout):
        self.calls.append(cmd)
        exe = cmd[0].rsplit("/", 1)[-1]
        video = cmd[cmd.index("-i") + 1] if "-i" in cmd else cmd[-1]
        kind = open(video, "rb").read(8)
        if exe == "ffprobe":
            if kind.startswith(b"CORRUPT"):
                return subprocess.CompletedProcess(cmd, 1, "", f"{video}: Invalid data found when processing input\n")
            return subprocess.CompletedProcess(cmd, 0, "8.000000\n", "")
        out = cmd[-1]
        if "-vn" in cmd:  # audio extraction
            if kind.startswith(b"NOAUDIO"):
                open(out, "wb").write(b"partial")  # a half-written temp file must not survive
                return subprocess.CompletedProcess(cmd, 1, "", "Output file #0 does not contain any stream\n")
            if kind.startswith(b"HANG"):
                raise subprocess.TimeoutExpired(cmd, timeout)
            assert cmd[cmd.index("-ar") + 1] == "16000" and cmd[cmd.index("-ac") + 1] == "1"
            open(out, "wb").write(b"RIFF....WAVE")
        else:
            assert cmd[cmd.index("-ss") + 1] == "4.000"  # the middle of an 8-s clip
            open(out, "wb").write(b"\xff\xd8\xff fake jpeg")
        return subprocess.CompletedProcess(cmd, 0, "", "")


@pytest.fixture
def fake(monkeypatch):
    f = FakeFFmpeg()
    monkeypatch.setattr(P, "_run", f)
    monkeypatch.setattr(P.shutil, "which", lambda name: f"/usr/bin/{str(name).rsplit('/', 1)[-1]}")
    return f


def _videos(tmp_path, **clips):
    d = tmp_path / "videos"
    d.mkdir()
    for name, content in clips.items():
        (d / name.replace("__", ".")).write_bytes(content)
    (d / "notes.txt").write_text("not a video")
    return d


def test_failures_are_listed_not_fatal_and_outputs_atomic(tmp_path, fake):
    vids = _videos(tmp_path, a__mp4=b"OK", b__mkv=b"CORRUPT", c__webm=b"NOAUDIO", d__mp4=b"OK", e__avi=b"HANG")
    out = tmp_path / "root"
    rep = P.prep_clips(vids, out, manifest=out / "train.jsonl")
    assert (rep["videos"], rep["converted"], rep["failed"], rep["skipped_existing"]) == (5, 2, 3, 0)
    assert sorted(p.name for p in (out / "frames").iterdir()) == ["a.jpg", "d.jpg"]
    assert sorted(p.name for p in (out / "audio").iterdir()) == ["a.wav", "d.wav"]  # no temp files left
    rows = list(csv.DictReader(open(out / "failures.csv")))
    assert [(r["id"], r["stage"]) for r in rows] == [("b", "probe"), ("c", "audio"), ("e", "audio")]
    assert "Invalid data" in rows[0]["error"] and "does not contain any stream" in rows[1]["error"]
    assert "timed out" in rows[2]["error"] and rows[0]["video"].endswith("b.mkv")
    assert [i.id for i in read_manifest(out / "train.jsonl", out, check_files=True)] == ["a", "d"]

    n_calls = len(fake.calls)
    rep = P.prep_clips(vids, out)  # idempotent: done clips are skipped, failed ones retried
    assert (rep["converted"], rep["skipped_existing"], rep["failed"]) == (0, 2, 3)
    retried = {c[c.index("-i") + 1].rsplit("/", 1)[-1] if "-i" in c else c[-1].rsplit("/", 1)[-1]
               for c in fake.calls[n_calls:]}
    assert retried == {"b.mkv", "c.webm", "e.avi"}


def test_duplicate_stems_and_cli(tmp_path, fake, capsys):
    vids = _videos(tmp_path, x__mp4=b"OK", x__mkv=b"OK")
    rc = P.main(["--videos", str(vids), "--out", str(tmp_path / "root")])
    assert rc == 1 and "1 converted" in capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp_path / "root" / "failures.csv")))
    assert [(r["id"], r["stage"]) for r in rows] == [("x", "id")]
    assert P.main(["--videos", str(tmp_path / "nope"), "--out", str(tmp_path / "root")]) == 2


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed (unit tests above use a fake)")
def test_real_ffmpeg_on_a_generated_clip(tmp_path):
    import soundfile as sf
    from PIL import Image

    vids = tmp_path / "videos"
    vids.mkdir()
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=duration=2:size=64x48:rate=10",
                    "-f", "lavfi", "-i", "sine=frequency=440:duration=2:sample_rate=44100", "-ac", "2",
                    "-shortest", "-pix_fmt", "yuv420p", str(vids / "clip.mp4")], check=True, timeout=60)
    (vids / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    out = tmp_path / "root"
    rep = P.prep_clips(vids, out)
    assert (rep["converted"], rep["failed"]) == (1, 1)
    assert Image.open(out / "frames" / "clip.jpg").size == (64, 48)
    wave, sr = sf.read(out / "audio" / "clip.wav")
    assert sr == 16000 and wave.ndim == 1 and abs(len(wave) - 32000) < 1600
    assert [r["id"] for r in csv.DictReader(open(out / "failures.csv"))] == ["broken"]
    assert P.prep_clips(vids, out)["skipped_existing"] == 1
