"""Readers for the container formats the AVScenes assets ship in (SPEC §3; notes/asset_sources.md appendix).

All readers are pure Python (struct, zlib, tarfile, lzma) so the fetch step runs on machines without
dpkg. Each reader extracts only the members it is asked for; anything malformed raises ``DataError``
naming the container.

- Debian ``.deb``: an ``ar`` archive whose ``data.tar.{xz,gz,bz2,zst}`` member holds the files.
- Qt ``.rcc`` resource archives (gcompris-qt-data): big-endian tree of names, nodes and data.
- OpenSFX ``opensfx.cat`` (openttd-opensfx): little-endian table of (offset, size), name, RIFF WAV.
- SoundFont 2 (fluid-soundfont-gm): ``sdta/smpl`` 16-bit PCM + ``pdta`` preset/instrument/sample tables.
"""
from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import tarfile
import wave
import zlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from avsl_core.errors import DataError

__all__ = [
    "ar_members", "iter_deb_files", "list_deb", "read_rcc", "CatEntry", "read_opensfx_cat", "SF2Sample", "SoundFont",
    "sample_to_wav_bytes",
]


# ----------------------------------------------------------------------------------------- .deb

def ar_members(path: str | os.PathLike) -> list[tuple[str, int, int]]:
    """List an ``ar`` archive's members as (name, data offset, size)."""
    out = []
    with open(path, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise DataError(path, "not an ar archive (bad magic); is it a .deb?")
        pos = 8
        size_total = os.fstat(f.fileno()).st_size
        while pos + 60 <= size_total:
            f.seek(pos)
            hdr = f.read(60)
            if hdr[58:60] != b"`\n":
                raise DataError(path, f"corrupt ar header at byte {pos}")
            name = hdr[:16].decode("ascii", "replace").strip().rstrip("/")
            try:
                size = int(hdr[48:58].decode("ascii").strip())
            except ValueError:
                raise DataError(path, f"corrupt ar member size at byte {pos}") from None
            if pos + 60 + size > size_total:
                raise DataError(path, f"truncated: member {name!r} runs past the end of the file")
            out.append((name, pos + 60, size))
            pos += 60 + size + (size & 1)
    return out


class _Window(io.RawIOBase):
    """A read-only view of bytes [start, start+size) of an open file."""

    def __init__(self, f, start: int, size: int):
        self._f, self._start, self._size, self._pos = f, start, size, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), self._size - self._pos)
        if n <= 0:
            return 0
        self._f.seek(self._start + self._pos)
        data = self._f.read(n)
        b[: len(data)] = data
        self._pos += len(data)
        return len(data)


def _norm(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")


def iter_deb_files(path: str | os.PathLike, wanted: set[str] | None = None) -> Iterator[tuple[str, bytes]]:
    """Yield (path inside the package, bytes) for the regular files of a .deb's data member.

    ``wanted``: package paths without a leading ``./`` (``usr/share/...``); None yields every file.
    A wanted path that is a link or missing raises DataError, so a manifest never silently loses files.
    zstd members go through ``dpkg-deb --fsys-tarfile`` when dpkg-deb exists, else the ``zstandard``
    module when importable, else DataError.
    """
    members = {n: (o, s) for n, o, s in ar_members(path)}
    data_names = [n for n in members if n.startswith("data.tar")]
    if not data_names:
        raise DataError(path, "no data.tar.* member in the .deb")
    name = data_names[0]
    off, size = members[name]
    remaining = None if wanted is None else set(wanted)
    proc = None
    with open(path, "rb") as f:
        raw = io.BufferedReader(_Window(f, off, size), buffer_size=1 << 20)
        if name.endswith(".zst"):
            if shutil.which("dpkg-deb"):
                proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(path)], stdout=subprocess.PIPE)
                stream, mode = proc.stdout, "r|"
            else:
                try:
                    import zstandard  # type: ignore
                except ImportError:
                    raise DataError(path, "data.tar.zst needs dpkg-deb or the python 'zstandard' module") from None
                stream, mode = zstandard.ZstdDecompressor().stream_reader(raw), "r|"
        elif name.endswith((".xz", ".gz", ".bz2")):
            stream, mode = raw, "r|" + name.rsplit(".", 1)[1]
        elif name == "data.tar":
            stream, mode = raw, "r|"
        else:
            raise DataError(path, f"unsupported data member {name!r}")
        try:
            with tarfile.open(fileobj=stream, mode=mode) as tar:
                for m in tar:
                    p = _norm(m.name)
                    if remaining is not None and p not in remaining:
                        continue
                    if remaining is None and not m.isreg():
                        continue
                    if not m.isreg():
                        raise DataError(path, f"{p} is not a regular file in the package (link or directory)")
                    fo = tar.extractfile(m)
                    data = fo.read() if fo is not None else b""
                    if remaining is not None:
                        remaining.discard(p)
                    yield p, data
                    if remaining is not None and not remaining:
                        break
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            raise DataError(path, f"corrupt {name}: {e}") from e
        finally:
            if proc is not None:
                proc.stdout.close()
                proc.kill()
                proc.wait()
    if remaining:
        raise DataError(path, f"{len(remaining)} listed file(s) missing from the package, e.g. {sorted(remaining)[0]}")


def list_deb(path: str | os.PathLike) -> dict[str, str | None]:
    """{package path: None for a regular file, or the resolved target path of a symlink/hardlink}."""
    members = {n: (o, s) for n, o, s in ar_members(path)}
    name = next((n for n in members if n.startswith("data.tar")), None)
    if name is None or name.endswith(".zst"):
        raise DataError(path, "list_deb needs a data.tar.{xz,gz,bz2} member")
    out: dict[str, str | None] = {}
    with open(path, "rb") as f:
        raw = io.BufferedReader(_Window(f, *members[name]), buffer_size=1 << 20)
        mode = "r|" + name.rsplit(".", 1)[1] if name != "data.tar" else "r|"
        with tarfile.open(fileobj=raw, mode=mode) as tar:
            for m in tar:
                p = _norm(m.name)
                if m.isreg():
                    out[p] = None
                elif m.issym():
                    out[p] = os.path.normpath(os.path.join(os.path.dirname(p), m.linkname))
                elif m.islnk():
                    out[p] = _norm(m.linkname)
    for p, target in list(out.items()):     # follow chains of links
        seen = 0
        while target is not None and out.get(target) is not None and seen < 16:
            target, seen = out[target], seen + 1
        out[p] = target
    return out


# ----------------------------------------------------------------------------------------- .rcc

def read_rcc(data: bytes, wanted: set[str] | None = None, *, source: str = "<rcc>") -> dict[str, bytes]:
    """Unpack a Qt resource archive (format versions 1-3) into {inner path: bytes}.

    Layout: b"qres", u32 version, u32 tree offset, u32 data offset, u32 names offset (big-endian).
    Tree nodes are 14 bytes (v1) or 22 bytes (v2+, adds a u64 mtime): u32 name offset, u16 flags, then
    for a directory (flag 2) u32 child count + u32 first child index, else u16 country, u16 language,
    u32 data offset. File data: u32 size + bytes; flag 1 = zlib with a 4-byte size prefix, 4 = zstd.
    """
    if data[:4] != b"qres" or len(data) < 20:
        raise DataError(source, "not a Qt rcc archive (bad magic)")
    version, tree, dat, names = struct.unpack(">4I", data[4:20])
    if version not in (1, 2, 3):
        raise DataError(source, f"unsupported rcc version {version}")
    node_size = 14 if version == 1 else 22
    out: dict[str, bytes] = {}

    def name_at(off: int) -> str:
        (n,) = struct.unpack_from(">H", data, names + off)
        return data[names + off + 6: names + off + 6 + 2 * n].decode("utf-16-be")

    def walk(index: int, prefix: str, depth: int) -> None:
        if depth > 64:
            raise DataError(source, "rcc tree too deep (corrupt?)")
        base = tree + index * node_size
        name_off, flags = struct.unpack_from(">IH", data, base)
        name = name_at(name_off) if index else ""
        path = f"{prefix}/{name}" if prefix else name
        if flags & 2:
            count, first = struct.unpack_from(">II", data, base + 6)
            for child in range(first, first + count):
                walk(child, path, depth + 1)
            return
        if wanted is not None and path not in wanted:
            return
        (doff,) = struct.unpack_from(">I", data, base + 10)
        (size,) = struct.unpack_from(">I", data, dat + doff)
        blob = data[dat + doff + 4: dat + doff + 4 + size]
        if flags & 1:
            try:
                blob = zlib.decompress(blob[4:])
            except zlib.error as e:
                raise DataError(source, f"{path}: corrupt zlib data ({e})") from e
        elif flags & 4:
            try:
                import zstandard  # type: ignore
            except ImportError:
                raise DataError(source, f"{path} is zstd-compressed; install 'zstandard'") from None
            blob = zstandard.ZstdDecompressor().decompress(blob)
        out[path] = blob

    try:
        walk(0, "", 0)
    except struct.error as e:
        raise DataError(source, f"truncated or corrupt rcc ({e})") from e
    if wanted is not None and set(wanted) - set(out):
        raise DataError(source, f"listed entries missing from the rcc, e.g. {sorted(set(wanted) - set(out))[0]}")
    return out


# ----------------------------------------------------------------------------------------- .cat

@dataclass(frozen=True)
class CatEntry:
    index: int
    title: str      # the quoted sound name, e.g. "Cow"; used in manifest paths (opensfx.cat::Cow)
    credit: str     # the whole name string: title, original recording, author, licence
    wav: bytes      # a complete RIFF/WAV file


def read_opensfx_cat(data: bytes, *, source: str = "<cat>") -> list[CatEntry]:
    """Split an OpenTTD sound catalogue into its entries, in file order.

    Little-endian: the first u32 (top bit masked) / 8 = number of entries; a table of (offset, size)
    u32 pairs, offsets with the top bit masked. At each offset: u8 name length, the name (latin-1,
    NUL padded), then a RIFF/WAV file of ``size`` bytes (the size counts the WAV only, not the name).
    """
    if len(data) < 8:
        raise DataError(source, "too short for an OpenSFX catalogue")
    (first,) = struct.unpack_from("<I", data, 0)
    n = (first & 0x7FFFFFFF) // 8
    if n <= 0 or 8 * n > len(data):
        raise DataError(source, f"bad entry count {n}")
    out = []
    for i in range(n):
        off, size = struct.unpack_from("<II", data, 8 * i)
        off &= 0x7FFFFFFF
        if off >= len(data):
            raise DataError(source, f"entry {i} starts past the end of the file")
        nlen = data[off]
        start = off + 1 + nlen
        if start + size > len(data):
            raise DataError(source, f"entry {i} runs past the end of the file")
        credit = data[off + 1: start].split(b"\0", 1)[0].decode("latin-1")
        wav = data[start: start + size]
        if wav[:4] != b"RIFF" or wav[8:12] != b"WAVE":
            raise DataError(source, f"entry {i} ({credit[:40]!r}) is not RIFF/WAV data")
        parts = credit.split('"')
        title = parts[1] if len(parts) >= 3 else credit
        out.append(CatEntry(i, title, credit, wav))
    return out


# ----------------------------------------------------------------------------------------- .sf2

@dataclass(frozen=True)
class SF2Sample:
    index: int
    name: str
    start: int          # in samples, into smpl
    end: int
    loop_start: int
    loop_end: int
    sample_rate: int
    pitch: int          # original MIDI key
    sample_type: int    # 1 mono, 2 right, 4 left, 8 linked; 0x8000 ROM


class SoundFont:
    """Minimal SoundFont 2 reader: presets -> samples, and raw 16-bit PCM of each sample.

    RIFF 'sfbk' with LIST 'sdta' (chunk 'smpl': int16 little-endian PCM) and LIST 'pdta'
    (phdr 38 B, pbag 4 B, pgen 4 B, inst 22 B, ibag 4 B, igen 4 B, shdr 46 B records).
    Generator 41 = instrument (preset zones), 53 = sampleID (instrument zones).
    """

    def __init__(self, data: bytes, *, source: str = "<sf2>"):
        self.source = source
        if data[:4] != b"RIFF" or data[8:12] != b"sfbk":
            raise DataError(source, "not a SoundFont 2 file")
        self._smpl: memoryview | None = None
        chunks: dict[str, memoryview] = {}
        mv = memoryview(data)
        pos, end = 12, min(len(data), 8 + struct.unpack_from("<I", data, 4)[0])
        while pos + 8 <= end:
            cid, size = data[pos:pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
            if cid == b"LIST":
                sub_pos, sub_end = pos + 12, pos + 8 + size
                while sub_pos + 8 <= sub_end:
                    sid = data[sub_pos:sub_pos + 4].decode("latin-1")
                    (ssize,) = struct.unpack_from("<I", data, sub_pos + 4)
                    chunks[sid] = mv[sub_pos + 8: sub_pos + 8 + ssize]
                    sub_pos += 8 + ssize + (ssize & 1)
            pos += 8 + size + (size & 1)
        need = ["smpl", "phdr", "pbag", "pgen", "inst", "ibag", "igen", "shdr"]
        missing = [c for c in need if c not in chunks]
        if missing:
            raise DataError(source, f"SoundFont lacks chunk(s) {missing}")
        self._smpl = chunks["smpl"]
        rec = lambda c, n: [bytes(chunks[c][i:i + n]) for i in range(0, len(chunks[c]) - n + 1, n)]  # noqa: E731
        name = lambda r: r[:20].split(b"\0")[0].decode("latin-1")  # noqa: E731
        self.phdr = [(name(r),) + struct.unpack("<3H", r[20:26]) for r in rec("phdr", 38)]
        self.pbag = [struct.unpack("<H", r[:2])[0] for r in rec("pbag", 4)]
        self.pgen = [struct.unpack("<Hh", r) for r in rec("pgen", 4)]
        self.inst = [(name(r), struct.unpack("<H", r[20:22])[0]) for r in rec("inst", 22)]
        self.ibag = [struct.unpack("<H", r[:2])[0] for r in rec("ibag", 4)]
        self.igen = [struct.unpack("<Hh", r) for r in rec("igen", 4)]
        self.samples = []
        for i, r in enumerate(rec("shdr", 46)[:-1]):  # last record is the terminal 'EOS'
            s, e, ls, le, sr = struct.unpack("<5I", r[20:40])
            pitch, _corr, _link, stype = struct.unpack("<BbHH", r[40:46])
            self.samples.append(SF2Sample(i, r[:20].split(b"\0")[0].decode("latin-1"), s, e, ls, le, sr, pitch, stype))

    def presets(self) -> list[tuple[int, int, str]]:
        """[(bank, program, name)] excluding the terminal record."""
        return [(b, p, n) for n, p, b, _ in self.phdr[:-1]]

    def _gens(self, bags, gens, first_bag, last_bag, oper):
        vals = []
        for b in range(first_bag, last_bag):
            for g in range(bags[b], bags[b + 1]):
                if gens[g][0] == oper:
                    vals.append(gens[g][1] & 0xFFFF)
        return vals

    def preset_samples(self, program: int, bank: int = 0) -> list[SF2Sample]:
        """Distinct samples used by preset (bank, program), in first-use order."""
        for i, (name, prog, bnk, bag) in enumerate(self.phdr[:-1]):
            if prog == program and bnk == bank:
                break
        else:
            raise DataError(self.source, f"no preset {bank}:{program}")
        seen, out = set(), []
        for inst_i in self._gens(self.pbag, self.pgen, bag, self.phdr[i + 1][3], 41):
            ib0, ib1 = self.inst[inst_i][1], self.inst[inst_i + 1][1]
            for s in self._gens(self.ibag, self.igen, ib0, ib1, 53):
                if s not in seen and s < len(self.samples):
                    seen.add(s)
                    out.append(self.samples[s])
        return out

    def pcm(self, s: SF2Sample) -> bytes:
        """Raw int16 little-endian PCM of one sample (what the manifest hashes)."""
        if not (0 <= s.start < s.end <= len(self._smpl) // 2):
            raise DataError(self.source, f"sample {s.name!r} points outside smpl")
        return bytes(self._smpl[2 * s.start: 2 * s.end])


def sample_to_wav_bytes(s: SF2Sample, pcm: bytes, min_seconds: float = 1.5, fade_seconds: float = 0.05) -> bytes:
    """Render one SF2 sample to a mono PCM16 WAV at its own rate, looped to >= ``min_seconds``.

    Uses the shdr loop points (attack up to loop end, then the loop repeated); a sample without a valid
    loop is tiled whole. The last ``fade_seconds`` fade out linearly so the end does not click.
    """
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
    n_min = int(round(min_seconds * s.sample_rate))
    ls, le = s.loop_start - s.start, s.loop_end - s.start
    if len(x) < n_min:
        if 0 <= ls < le <= len(x) and le - ls >= 32:
            loop = x[ls:le]
            reps = int(np.ceil((n_min - le) / len(loop))) + 1
            x = np.concatenate([x[:le]] + [loop] * reps)[: max(n_min, le)]
        else:
            x = np.tile(x, int(np.ceil(n_min / len(x))))[:n_min]
    nf = min(len(x), int(fade_seconds * s.sample_rate))
    if nf > 1 and len(x) >= n_min:
        x[-nf:] *= np.linspace(1.0, 0.0, nf, dtype=np.float32)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(s.sample_rate))
        w.writeframes(np.clip(np.round(x), -32768, 32767).astype("<i2").tobytes())
    return buf.getvalue()
