"""Container readers (avsl_core.data.containers) on tiny fixtures built here byte by byte.

The builders (make_deb, make_rcc, make_cat, make_sf2) are reused by test_fetch.py.
"""
from __future__ import annotations

import io
import shutil
import struct
import tarfile
import wave
import zlib

import numpy as np
import pytest

from avsl_core.data import containers as C
from avsl_core.errors import DataError


# ----------------------------------------------------------------------------------------- builders

def _ar(members: list[tuple[str, bytes]]) -> bytes:
    out = [b"!<arch>\n"]
    for name, data in members:
        hdr = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}".encode() + b"`\n"
        assert len(hdr) == 60
        out += [hdr, data, b"\n" if len(data) % 2 else b""]
    return b"".join(out)


def _tar(files: dict[str, bytes], links: dict[str, str] | None = None, mode: str = "w:xz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as t:
        dirs = sorted({"./" + "/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)})
        for d in dirs:
            ti = tarfile.TarInfo(d)
            ti.type = tarfile.DIRTYPE
            t.addfile(ti)
        for p, data in files.items():
            ti = tarfile.TarInfo("./" + p)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
        for p, target in (links or {}).items():
            ti = tarfile.TarInfo("./" + p)
            ti.type, ti.linkname = tarfile.SYMTYPE, target
            t.addfile(ti)
    return buf.getvalue()


def make_deb(path, files: dict[str, bytes], links: dict[str, str] | None = None, comp: str = "xz") -> None:
    """A minimal Debian package: debian-binary, control.tar.xz, data.tar.<comp>."""
    control = _tar({"control": b"Package: fake\nVersion: 1\nArchitecture: all\n"}, mode="w:xz")
    if comp == "zst":
        import subprocess
        data = subprocess.run(["zstd", "-q", "-c"], input=_tar(files, links, "w"), capture_output=True,
                              check=True).stdout
    else:
        data = _tar(files, links, f"w:{comp}")
    path.write_bytes(_ar([("debian-binary", b"2.0\n"), ("control.tar.xz", control), (f"data.tar.{comp}", data)]))


def make_rcc(files: dict[str, bytes], compress: set[str] = frozenset(), version: int = 2) -> bytes:
    """A Qt resource archive holding ``files`` ('dir/sub/name' -> bytes); ``compress``: zlib these."""
    tree: dict = {}
    for p, data in files.items():
        node = tree
        *dirs, leaf = p.split("/")
        for d in dirs:
            node = node.setdefault(d, {})
        node[leaf] = p                                  # leaves hold their full path
    names, name_off, data_blob = bytearray(), {}, bytearray()
    nodes: list = [None]                                # node 0 = root; a directory's children are contiguous
    queue = [("", tree, 0)]
    while queue:
        nm, node, me = queue.pop(0)
        kids = sorted(node.items())
        first = len(nodes)
        nodes.extend([None] * len(kids))
        nodes[me] = ("dir", nm, len(kids), first)
        for k, (cn, child) in enumerate(kids):
            if isinstance(child, dict):
                queue.append((cn, child, first + k))
                continue
            raw, flags = files[child], 0
            if child in compress:
                raw, flags = struct.pack(">I", len(raw)) + zlib.compress(raw), 1
            nodes[first + k] = ("file", cn, flags, len(data_blob))
            data_blob.extend(struct.pack(">I", len(raw)) + raw)
    tree_blob = bytearray()
    for kind, nm, a, b in nodes:
        if nm and nm not in name_off:
            name_off[nm] = len(names)
            names.extend(struct.pack(">HI", len(nm), 0) + nm.encode("utf-16-be"))
        noff = name_off.get(nm, 0)
        rec = struct.pack(">IHII", noff, 2, a, b) if kind == "dir" else struct.pack(">IHHHI", noff, a, 0, 0, b)
        tree_blob.extend(rec + (b"\0" * 8 if version >= 2 else b""))
    tree_off = 20
    data_off = tree_off + len(tree_blob)
    names_off = data_off + len(data_blob)
    return b"qres" + struct.pack(">4I", version, tree_off, data_off, names_off) + bytes(tree_blob + data_blob + names)


def make_wav(samples: np.ndarray, rate: int, channels: int = 1) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.asarray(samples, dtype="<i2").tobytes())
    return buf.getvalue()


def make_cat(entries: list[tuple[str, bytes]]) -> bytes:
    """An OpenSFX catalogue: (offset|0x80000000, size) table, then per entry len, name, WAV, trailer."""
    n = len(entries)
    body, table = bytearray(), []
    pos = 8 * n
    for credit, wav in entries:
        name = credit.encode("latin-1") + b"\0"
        rec = bytes([len(name)]) + name + wav + b"\0" * 5     # trailing bytes the size does not count
        table.append((pos | 0x80000000, len(wav)))
        body.extend(rec)
        pos += len(rec)
    return b"".join(struct.pack("<II", o, s) for o, s in table) + bytes(body)


def make_sf2(pcm: np.ndarray, rate: int = 8000, loop: tuple[int, int] = (100, 300), program: int = 7,
             sample_name: str = "Tone C4") -> bytes:
    """A SoundFont 2 with one preset (bank 0, ``program``) -> one instrument -> one mono sample."""
    def chunk(cid, data):
        return cid + struct.pack("<I", len(data)) + data + (b"\0" if len(data) % 2 else b"")

    def lst(kind, *chunks):
        body = kind + b"".join(chunks)
        return b"LIST" + struct.pack("<I", len(body)) + body

    smpl = np.asarray(pcm, dtype="<i2").tobytes() + b"\0" * 92      # 46 zero samples after the sample
    n = len(pcm)
    nm = lambda s: s.encode().ljust(20, b"\0")  # noqa: E731
    phdr = (nm("Preset") + struct.pack("<HHHIII", program, 0, 0, 0, 0, 0)
            + nm("EOP") + struct.pack("<HHHIII", 0, 0, 1, 0, 0, 0))
    pbag = struct.pack("<HH", 0, 0) + struct.pack("<HH", 1, 0)
    pgen = struct.pack("<HH", 41, 0) + struct.pack("<HH", 0, 0)
    inst = nm("Inst") + struct.pack("<H", 0) + nm("EOI") + struct.pack("<H", 1)
    ibag = struct.pack("<HH", 0, 0) + struct.pack("<HH", 1, 0)
    igen = struct.pack("<HH", 53, 0) + struct.pack("<HH", 0, 0)
    shdr = (nm(sample_name) + struct.pack("<5IBbHH", 0, n, loop[0], loop[1], rate, 60, 0, 0, 1)
            + nm("EOS") + struct.pack("<5IBbHH", 0, 0, 0, 0, 0, 0, 0, 0, 0))
    mod = b"\0" * 10
    body = (b"sfbk" + lst(b"INFO", chunk(b"ifil", struct.pack("<HH", 2, 1))) + lst(b"sdta", chunk(b"smpl", smpl))
            + lst(b"pdta", chunk(b"phdr", phdr), chunk(b"pbag", pbag), chunk(b"pmod", mod), chunk(b"pgen", pgen),
                  chunk(b"inst", inst), chunk(b"ibag", ibag), chunk(b"imod", mod), chunk(b"igen", igen),
                  chunk(b"shdr", shdr)))
    return b"RIFF" + struct.pack("<I", len(body)) + body


# ----------------------------------------------------------------------------------------- .deb

@pytest.mark.parametrize("comp", ["xz", "gz"])
def test_deb_extracts_only_the_wanted_files(tmp_path, comp):
    deb = tmp_path / "p.deb"
    make_deb(deb, {"usr/share/a.txt": b"alpha", "usr/share/sub/b.bin": b"\x00\x01", "usr/c": b"c"}, comp=comp)
    got = dict(C.iter_deb_files(deb, {"usr/share/sub/b.bin", "usr/c"}))
    assert got == {"usr/share/sub/b.bin": b"\x00\x01", "usr/c": b"c"}
    everything = dict(C.iter_deb_files(deb))            # directories are skipped
    assert set(everything) == {"usr/share/a.txt", "usr/share/sub/b.bin", "usr/c"}


def test_deb_missing_file_and_links_are_errors(tmp_path):
    deb = tmp_path / "p.deb"
    make_deb(deb, {"usr/a": b"a"}, links={"usr/l": "a"})
    with pytest.raises(DataError, match=r"p\.deb.*1 listed file\(s\) missing.*usr/nope"):
        dict(C.iter_deb_files(deb, {"usr/a", "usr/nope"}))
    with pytest.raises(DataError, match="usr/l is not a regular file"):
        dict(C.iter_deb_files(deb, {"usr/l"}))
    assert C.list_deb(deb) == {"usr/a": None, "usr/l": "usr/a"}


def test_deb_bad_magic_and_truncation(tmp_path):
    bad = tmp_path / "bad.deb"
    bad.write_bytes(b"PK\x03\x04 not an ar archive")
    with pytest.raises(DataError, match=r"bad\.deb: not an ar archive"):
        C.ar_members(bad)
    deb = tmp_path / "p.deb"
    make_deb(deb, {"usr/a": b"a" * 1000})
    cut = tmp_path / "cut.deb"
    cut.write_bytes(deb.read_bytes()[:-40])
    with pytest.raises(DataError, match=r"cut\.deb: truncated"):
        C.ar_members(cut)


@pytest.mark.skipif(not shutil.which("zstd") or not shutil.which("dpkg-deb"), reason="needs zstd and dpkg-deb")
def test_deb_zstd_member_via_dpkg_deb(tmp_path):
    deb = tmp_path / "z.deb"
    make_deb(deb, {"usr/a": b"zstd!"}, comp="zst")
    assert dict(C.iter_deb_files(deb, {"usr/a"})) == {"usr/a": b"zstd!"}


# ----------------------------------------------------------------------------------------- .rcc

@pytest.mark.parametrize("version", [1, 2])
def test_rcc_roundtrip_plain_and_zlib(version):
    files = {"g/src/x.txt": b"plain text", "g/src/deep/y.bin": bytes(range(200)) * 3, "top.dat": b"T"}
    blob = make_rcc(files, compress={"g/src/deep/y.bin"}, version=version)
    assert C.read_rcc(blob) == files
    assert C.read_rcc(blob, {"g/src/deep/y.bin"}) == {"g/src/deep/y.bin": files["g/src/deep/y.bin"]}
    with pytest.raises(DataError, match="missing from the rcc, e.g. g/none"):
        C.read_rcc(blob, {"g/none"}, source="f.rcc")


def test_rcc_bad_magic_names_the_source():
    with pytest.raises(DataError, match=r"^x\.rcc: not a Qt rcc archive"):
        C.read_rcc(b"nope" * 10, source="x.rcc")


# ----------------------------------------------------------------------------------------- .cat

def test_opensfx_cat_entries_and_titles():
    w1, w2 = make_wav(np.arange(10), 8000), make_wav(-np.arange(30), 11025)
    blob = make_cat([('"Cow". Original "moo.wav" by X. License: CC0.', w1), ('"Heavy wind". By Y.', w2)])
    es = C.read_opensfx_cat(blob)
    assert [(e.index, e.title) for e in es] == [(0, "Cow"), (1, "Heavy wind")]
    assert es[0].wav == w1 and es[1].wav == w2          # exactly the WAV bytes, trailer excluded
    assert es[0].credit.startswith('"Cow". Original')
    broken = bytearray(blob)
    broken[8 * 2 + 1 + len('"Cow". Original "moo.wav" by X. License: CC0.') + 1] ^= 0xFF   # spoil 'RIFF'
    with pytest.raises(DataError, match=r"s\.cat: entry 0 .*not RIFF/WAV"):
        C.read_opensfx_cat(bytes(broken), source="s.cat")


# ----------------------------------------------------------------------------------------- .sf2

def test_sf2_preset_samples_pcm_and_loop_render():
    pcm = (np.sin(np.arange(400) * 2 * np.pi / 50) * 10000).astype(np.int16)
    sfont = C.SoundFont(make_sf2(pcm, rate=8000, loop=(100, 300), program=7))
    assert sfont.presets() == [(0, 7, "Preset")]
    (s,) = sfont.preset_samples(7)
    assert (s.name, s.start, s.end, s.loop_start, s.loop_end, s.sample_rate) == ("Tone C4", 0, 400, 100, 300, 8000)
    assert sfont.pcm(s) == pcm.tobytes()
    with pytest.raises(DataError, match="no preset 0:8"):
        sfont.preset_samples(8)
    with wave.open(io.BytesIO(C.sample_to_wav_bytes(s, sfont.pcm(s), min_seconds=1.5)), "rb") as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (8000, 1, 2)
        y = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    assert len(y) == 12000                                   # 1.5 s at 8 kHz
    assert np.array_equal(y[:300], pcm[:300])                # attack up to the loop end, untouched
    assert np.array_equal(y[300:500], pcm[100:300])          # then the loop repeats
    assert abs(int(y[-1])) <= 1                              # faded out at the very end


def test_sf2_rejects_non_soundfont():
    with pytest.raises(DataError, match=r"^f\.sf2: not a SoundFont 2 file"):
        C.SoundFont(b"RIFF\0\0\0\0WAVE", source="f.sf2")


@pytest.mark.skipif(not shutil.which("zstd"), reason="needs the zstd tool to build the fixture")
def test_deb_zstd_without_dpkg_or_zstandard_is_a_clear_error(tmp_path, monkeypatch):
    deb = tmp_path / "z.deb"
    make_deb(deb, {"usr/a": b"x"}, comp="zst")
    monkeypatch.setattr(C.shutil, "which", lambda name: None)
    monkeypatch.setitem(__import__("sys").modules, "zstandard", None)     # import fails
    with pytest.raises(DataError, match=r"z\.deb: data\.tar\.zst needs dpkg-deb or the python 'zstandard' module"):
        dict(C.iter_deb_files(deb, {"usr/a"}))
