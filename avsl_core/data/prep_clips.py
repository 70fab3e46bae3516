"""Raw clips -> one middle frame (JPEG) + a 16 kHz mono wav per clip, with the ffmpeg binary.

    python -m avsl_core.data.prep_clips --videos DIR --out ROOT [--manifest ROOT/train.jsonl]

Writes ``ROOT/frames/<id>.jpg`` and ``ROOT/audio/<id>.wav`` (the EZ-VSL/SLAVC layout the adapters
default to; ``<id>`` = the video's file name without extension). The middle frame matches the VGG-SS
convention (boxes drawn on frame 125 of a 25-fps 10-s clip, i.e. at 5 s); the wav keeps the whole
clip as PCM16 mono at 16 kHz. Clips that fail (corrupt, no audio stream, ...) are counted and listed
in ``ROOT/failures.csv`` instead of stopping the run; clips already done are skipped; every output is
written to a temp file in its folder and moved into place only when both outputs of a clip succeeded.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import pathlib
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from avsl_core.data.manifest import ManifestItem, atomic_write_text, write_manifest
from avsl_core.errors import DataError

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".flv", ".m4v", ".mpg", ".mpeg", ".3gp")
INSTALL_HINT = "install ffmpeg (apt-get install ffmpeg)"
_DURATION = re.compile(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)")


class FFmpegNotFound(RuntimeError):
    """The ffmpeg binary is not on PATH."""


class ClipFailed(Exception):
    """One clip could not be converted; ``stage`` says which step failed."""

    def __init__(self, stage: str, message: str):
        super().__init__(message)
        self.stage = stage


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run one command (the seam unit tests replace)."""
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def find_ffmpeg(ffmpeg: str = "ffmpeg") -> tuple[str, str | None]:
    """Paths of ffmpeg and ffprobe (None if only ffmpeg exists); FFmpegNotFound with the install hint."""
    exe = shutil.which(ffmpeg)
    if exe is None:
        raise FFmpegNotFound(f"ffmpeg binary {ffmpeg!r} not found on PATH: {INSTALL_HINT}")
    probe = shutil.which(str(pathlib.Path(exe).with_name("ffprobe"))) or shutil.which("ffprobe")
    return exe, probe


def _tail(text: str, n: int = 300) -> str:
    text = " ".join((text or "").split())
    return text[-n:] if text else "no error output"


def probe_duration(video: pathlib.Path, ffmpeg: str, ffprobe: str | None, timeout: float) -> float:
    """Container duration in seconds (ffprobe, or ``ffmpeg -i``'s "Duration:" line without it)."""
    try:
        if ffprobe:
            r = _run([ffprobe, "-v", "error", "-show_entries", "format=duration",
                      "-of", "default=noprint_wrappers=1:nokey=1", str(video)], timeout)
            if r.returncode != 0:
                raise ClipFailed("probe", _tail(r.stderr))
            text = r.stdout.strip().splitlines()[0] if r.stdout.strip() else ""
            try:
                duration = float(text)
            except ValueError:
                raise ClipFailed("probe", f"no duration reported ({text or 'empty'})") from None
        else:
            r = _run([ffmpeg, "-hide_banner", "-i", str(video)], timeout)
            m = _DURATION.search(r.stderr or "")
            if not m:
                raise ClipFailed("probe", _tail(r.stderr))
            duration = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
    except subprocess.TimeoutExpired:
        raise ClipFailed("probe", f"timed out after {timeout:g} s") from None
    if not duration > 0:
        raise ClipFailed("probe", f"duration {duration!r} s")
    return duration


def _tmp(final: pathlib.Path) -> pathlib.Path:
    # same folder (os.replace stays atomic), real extension kept so ffmpeg picks the muxer
    return final.with_name(f".{final.stem}.tmp{os.getpid()}{final.suffix}")


def convert_clip(video: pathlib.Path, frame_out: pathlib.Path, audio_out: pathlib.Path, *,
                 ffmpeg: str, ffprobe: str | None, sample_rate: int = 16000, timeout: float = 120.0):
    """Middle frame + mono wav of one clip; both outputs appear together or not at all (ClipFailed)."""
    duration = probe_duration(video, ffmpeg, ffprobe, timeout)
    t_frame, t_audio = _tmp(frame_out), _tmp(audio_out)
    jobs = [
        ("frame", t_frame, [ffmpeg, "-nostdin", "-v", "error", "-y", "-ss", f"{duration / 2:.3f}",
                            "-i", str(video), "-frames:v", "1", "-q:v", "2", "-f", "image2",
                            "-update", "1", str(t_frame)]),
        ("audio", t_audio, [ffmpeg, "-nostdin", "-v", "error", "-y", "-i", str(video), "-vn",
                            "-ac", "1", "-ar", str(sample_rate), "-c:a", "pcm_s16le", "-f", "wav",
                            str(t_audio)]),
    ]
    try:
        for stage, tmp, cmd in jobs:
            tmp.parent.mkdir(parents=True, exist_ok=True)
            try:
                r = _run(cmd, timeout)
            except subprocess.TimeoutExpired:
                raise ClipFailed(stage, f"timed out after {timeout:g} s") from None
            if r.returncode != 0:
                raise ClipFailed(stage, _tail(r.stderr))
            if not tmp.is_file() or tmp.stat().st_size == 0:
                raise ClipFailed(stage, f"ffmpeg wrote no {stage} ({_tail(r.stderr)})")
        os.replace(t_audio, audio_out)
        os.replace(t_frame, frame_out)
    finally:
        for tmp in (t_frame, t_audio):
            if tmp.exists():
                tmp.unlink()


def find_videos(videos_dir) -> list[pathlib.Path]:
    """Video files directly inside ``videos_dir`` (by extension), sorted by name."""
    d = pathlib.Path(videos_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: videos folder not found")
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)


def prep_clips(videos_dir, out_root, *, ffmpeg: str = "ffmpeg", sample_rate: int = 16000,
               jobs: int = 1, timeout: float = 120.0, manifest=None, split: str = "train") -> dict:
    """Convert every clip of ``videos_dir`` into ``out_root`` (see module docstring); returns a report.

    Report keys: ``videos``, ``converted``, ``skipped_existing``, ``failed``, ``failures`` (a list of
    ``{id, video, stage, error}``, also written to ``out_root/failures.csv``). With ``manifest``, the
    clips that have both outputs are written there as ``ManifestItem`` rows of ``split``.
    """
    exe, probe = find_ffmpeg(ffmpeg)
    out = pathlib.Path(out_root)
    (out / "frames").mkdir(parents=True, exist_ok=True)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    videos = find_videos(videos_dir)
    report = {"videos": len(videos), "converted": 0, "skipped_existing": 0, "failed": 0, "failures": []}
    todo, seen = [], {}
    for v in videos:
        cid = v.stem
        if cid in seen:
            report["failures"].append({"id": cid, "video": str(v), "stage": "id",
                                       "error": f"duplicate id (also {seen[cid].name})"})
            continue
        seen[cid] = v
        frame, audio = out / "frames" / f"{cid}.jpg", out / "audio" / f"{cid}.wav"
        if frame.is_file() and audio.is_file() and frame.stat().st_size and audio.stat().st_size:
            report["skipped_existing"] += 1
        else:
            todo.append((cid, v, frame, audio))

    def work(job):
        cid, v, frame, audio = job
        try:
            convert_clip(v, frame, audio, ffmpeg=exe, ffprobe=probe, sample_rate=sample_rate,
                         timeout=timeout)
            return None
        except ClipFailed as e:
            return {"id": cid, "video": str(v), "stage": e.stage, "error": str(e)}

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for res in pool.map(work, todo):
            if res is None:
                report["converted"] += 1
            else:
                report["failures"].append(res)
    report["failed"] = len(report["failures"])
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["id", "video", "stage", "error"], lineterminator="\n")
    w.writeheader()
    w.writerows(report["failures"])
    atomic_write_text(out / "failures.csv", buf.getvalue())
    if manifest is not None:
        done = [ManifestItem(id=cid, image=f"frames/{cid}.jpg", audio=f"audio/{cid}.wav", split=split)
                for cid in sorted(seen) if (out / "frames" / f"{cid}.jpg").is_file()
                and (out / "audio" / f"{cid}.wav").is_file()]
        write_manifest(manifest, done)
        report["manifest_items"] = len(done)
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m avsl_core.data.prep_clips",
                                description="folder of videos -> middle frame + 16 kHz mono wav per clip")
    p.add_argument("--videos", required=True, help="folder holding the video files")
    p.add_argument("--out", required=True, help="data root: writes frames/, audio/, failures.csv")
    p.add_argument("--manifest", help="also write a manifest (JSONL) of the converted clips")
    p.add_argument("--split", default="train", help="split label for --manifest rows")
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--jobs", type=int, default=1, help="clips converted in parallel")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per ffmpeg call")
    p.add_argument("--ffmpeg", default="ffmpeg", help="ffmpeg binary")
    a = p.parse_args(argv)
    try:
        rep = prep_clips(a.videos, a.out, ffmpeg=a.ffmpeg, sample_rate=a.sample_rate, jobs=a.jobs,
                         timeout=a.timeout, manifest=a.manifest, split=a.split)
    except (FFmpegNotFound, FileNotFoundError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{rep['videos']} videos: {rep['converted']} converted, {rep['skipped_existing']} already done, "
          f"{rep['failed']} failed (listed in {pathlib.Path(a.out) / 'failures.csv'})")
    return 0 if rep["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
