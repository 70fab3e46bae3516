"""A data root of real datasets (avsl_core.real_data) through the pipeline: a tiny fake "real" dataset in
the adapters' layouts (JPEG frames of odd sizes and modes, 10-s 16 kHz wavs, a VGG-SS json, Flickr XML
boxes, AVSBench S4 masks, SLAVC negatives), manifests made by the adapters' command line, datasets.yaml
validation, the step keys, and the smoke pipeline's data, mining, training, evaluation and Table 1
pages on it (needs the AVScenes asset cache, like tests/test_notebooks.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from avsl_core import pipeline, real_data
from avsl_core.data import adapters
from avsl_core.data.manifest import read_manifest
from avsl_core.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
CATS = ("dog barking", "cat meowing", "playing tuba")
SIZES_MODES = [((160, 120), "RGB"), ((97, 131), "L"), ((120, 90), "CMYK"), ((143, 143), "RGB")]


def _frame(path: Path, i: int, box=None) -> None:
    (w, h), mode = SIZES_MODES[i % len(SIZES_MODES)]
    rng = np.random.default_rng(i)
    a = rng.integers(0, 90, (h, w, 3), dtype=np.uint8)
    if box is not None:                       # a bright object where the box is
        x1, y1, x2, y2 = box
        a[int(y1 * h):int(y2 * h), int(x1 * w):int(x2 * w)] = (230, 200 - 40 * (i % 3), 60 * (i % 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".png" and mode == "CMYK":     # AVSBench frames are PNG: a palette image instead
        mode = "P"
    Image.fromarray(a).convert(mode).save(path, "JPEG" if path.suffix == ".jpg" else "PNG")


def _wav(path: Path, i: int, seconds: float = 10.0) -> None:
    t = np.arange(int(seconds * 16000)) / 16000
    wave = 0.3 * np.sin(2 * np.pi * (220 + 110 * (i % 3)) * t) + 0.02 * np.random.default_rng(i).standard_normal(len(t))
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave.astype(np.float32), 16000, subtype="PCM_16")


def _vid(i: int) -> str:
    return f"vid{i:08d}_{(i % 30) * 10:06d}"          # VGGSound ids: <11-char ytid>_<start_s:06d>


def _adapt(*argv) -> None:
    assert adapters.main([str(a) for a in argv]) == 0


def make_fake_root(root: Path, n_train: int = 24) -> Path:
    """The adapters' layouts under `root`, their manifests (built by the adapters' CLI) and datasets.yaml."""
    vgg, meta = root / "vggsound", root / "meta"
    meta.mkdir(parents=True)
    train_ids = [_vid(i) for i in range(n_train)]
    for i, cid in enumerate(train_ids):
        _frame(vgg / "frames" / f"{cid}.jpg", i, (0.2, 0.2, 0.7, 0.8))
        _wav(vgg / "audio" / f"{cid}.wav", i)
    (meta / "train.txt").write_text("\n".join(train_ids + [_vid(999)]) + "\n")     # the last one has no files
    (meta / "labels.csv").write_text("".join(f"{c},{CATS[i % 3]}\n" for i, c in enumerate(train_ids + [_vid(999)])))
    test_ids = [_vid(100 + i) for i in range(6)]
    boxes = [[0.1 + 0.05 * i, 0.2, 0.6 + 0.05 * i, 0.9] for i in range(6)]
    for i, (cid, b) in enumerate(zip(test_ids, boxes)):
        _frame(vgg / "frames" / f"{cid}.jpg", 100 + i, b)
        _wav(vgg / "audio" / f"{cid}.wav", 100 + i)
    (meta / "vggss.json").write_text(json.dumps(
        [{"file": c, "class": CATS[i % 3], "bbox": [b, [0.0, 0.0, 0.3, 0.3]] if i == 0 else [b]}
         for i, (c, b) in enumerate(zip(test_ids, boxes))]))
    (meta / "vggss_test.csv").write_text("\n".join(test_ids) + "\n")
    (meta / "plus_silent.csv").write_text("video,audio,label\n" + "".join(
        f"{test_ids[i]},{test_ids[(i + 1) % 6]},non-sounding\n" for i in range(3)) + f"{test_ids[0]},{test_ids[0]},sounding\n")
    fl = root / "flickr"
    fl_ids = [str(1000 + i) for i in range(5)]
    for i, cid in enumerate(fl_ids):
        _frame(fl / "frames" / f"{cid}.jpg", 200 + i, (0.25, 0.3, 0.75, 0.85))
        _wav(fl / "audio" / f"{cid}.wav", 200 + i)
        ann = "".join(f"<file><bbox><label>{a}</label><xmin>{60 + 4 * a}</xmin><ymin>70</ymin><xmax>190</xmax>"
                      f"<ymax>{215 + 3 * a}</ymax></bbox></file>" for a in range(2))
        (fl / "Annotations").mkdir(parents=True, exist_ok=True)
        (fl / "Annotations" / f"{cid}.xml").write_text(f"<annotation>{ann}</annotation>")
    (fl / "flickr_test.csv").write_text("\n".join(fl_ids) + "\n")
    s4 = root / "AVSBench" / "Single-source"
    rows = ["name,category,split"]
    for v, cat in enumerate(("dog", "cat")):
        video = f"s4video{v}"
        rows.append(f"{video},{cat},test")
        _wav(s4 / "s4_data" / "audio_wav" / "test" / cat / f"{video}.wav", 300 + v, seconds=5.0)
        for k in range(1, 6):
            d = f"test/{cat}/{video}/{video}_{k}.png"
            _frame(s4 / "s4_data" / "visual_frames" / d, 300 + 5 * v + k, (0.3, 0.3, 0.8, 0.7))
            m = np.zeros((224, 224), np.uint8)
            m[60:160, 70:180] = 255
            (s4 / "s4_data" / "gt_masks" / d).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(m).save(s4 / "s4_data" / "gt_masks" / d)
    (s4 / "s4_meta_data.csv").write_text("\n".join(rows) + "\n")

    _adapt("vggsound-train", "--root", vgg, "--meta", meta / "train.txt", "--labels", meta / "labels.csv",
           "--exclude", meta / "vggss_test.csv", "--out", vgg / "manifest.jsonl")
    _adapt("vggss", "--root", vgg, "--meta", meta / "vggss.json", "--list", meta / "vggss_test.csv",
           "--out", vgg / "vggss_test.jsonl")
    _adapt("vggss-extended", "--root", vgg, "--meta", meta / "vggss.json", "--list", meta / "vggss_test.csv",
           "--negatives", meta / "plus_silent.csv", "--out", vgg / "vggss_extended.jsonl")
    _adapt("flickr", "--root", fl, "--meta", fl / "flickr_test.csv", "--annotations", fl / "Annotations",
           "--out", fl / "flickr_test.jsonl")
    _adapt("avsbench-s4", "--root", s4, "--meta", s4 / "s4_meta_data.csv", "--split", "test",
           "--out", s4 / "s4_test.jsonl")
    real_data.write_spec(root, {"manifest": "vggsound/manifest.jsonl"},
                         {"vggss": {"manifest": "vggsound/vggss_test.jsonl"},
                          "flickr": {"manifest": "flickr/flickr_test.jsonl"},
                          "avsbench_s4": {"manifest": "AVSBench/Single-source/s4_test.jsonl"},
                          "vggss_extended": {"manifest": "vggsound/vggss_extended.jsonl"}})
    return root


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory):
    return make_fake_root(tmp_path_factory.mktemp("real") / "data")


def _spec_text(root: Path) -> str:
    return (root / real_data.SPEC_NAME).read_text()


# ----------------------------------------------------------------------------- datasets.yaml
def test_load_spec_reads_the_adapters_manifests(fake_root):
    spec = real_data.load_spec(fake_root)
    assert spec.root == fake_root.resolve() and spec.path.name == "datasets.yaml"
    assert spec.train.manifest == (fake_root / "vggsound" / "manifest.jsonl").resolve()
    assert spec.train.root == (fake_root / "vggsound").resolve()          # default: the manifest's folder
    assert list(spec.tests) == ["vggss", "flickr", "avsbench_s4", "vggss_extended"]   # TEST_SETS order
    assert spec.require_files is False


def test_example_datasets_yaml_is_valid_once_its_manifests_exist(tmp_path):
    example = ROOT / "data_manifests" / "datasets.example.yaml"
    (tmp_path / "datasets.yaml").write_text(example.read_text())
    with pytest.raises(DataError, match=r"datasets.yaml field 'train.manifest': manifest not found"):
        real_data.load_spec(tmp_path)
    for rel in ("vggsound/manifest.jsonl", "vggsound/vggss_test.jsonl", "flickr/flickr_test.jsonl",
                "AVSBench/Single-source/s4_test.jsonl", "vggsound/vggss_extended.jsonl", "flickr/flickr_extended.jsonl"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    spec = real_data.load_spec(tmp_path)
    assert list(spec.tests) == list(real_data.TEST_SETS)


@pytest.mark.parametrize("text, match", [
    ("train: {manifest: vggsound/manifest.jsonl}\ntest:\n  vggss: {manifest: nope.jsonl}\n",
     r"datasets.yaml field 'test.vggss.manifest': manifest not found: .*nope.jsonl"),
    ("train: {manifest: vggsound/manifest.jsonl}\ntest:\n  vgg_ss: {manifest: vggsound/vggss_test.jsonl}\n",
     r"datasets.yaml field 'test.vgg_ss': unknown test set 'vgg_ss' \(known: vggss, flickr"),
    ("train: {manifest: vggsound/manifest.jsonl\ntest: [\n",
     r"datasets.yaml: malformed YAML \(line \d+ column \d+\)"),
    ("test:\n  vggss: {manifest: vggsound/vggss_test.jsonl}\n",
     r"datasets.yaml field 'train': missing key 'train'"),
    ("train: {manifest: vggsound/manifest.jsonl}\n", r"datasets.yaml field 'test': no test set listed"),
    ("train: {manifest: vggsound/manifest.jsonl, labels: x.csv}\ntest: {vggss: {manifest: vggsound/vggss_test.jsonl}}\n",
     r"field 'train.labels': unknown key 'labels'"),
    ("train: {manifest: vggsound/manifest.jsonl}\ntest: {vggss: {manifest: vggsound/vggss_test.jsonl, protocol: ezvls}}\n",
     r"field 'test.vggss.protocol': unknown protocol 'ezvls'"),
    ("train: {manifest: vggsound/manifest.jsonl, root: missing_folder}\ntest: {vggss: {manifest: vggsound/vggss_test.jsonl}}\n",
     r"field 'train.root': data root folder not found"),
    ("train: {manifest: vggsound/manifest.jsonl, embeddings: {clip: {image: a.npz, audio: b.npz}}}\n"
     "test: {vggss: {manifest: vggsound/vggss_test.jsonl}}\n",
     r"field 'train.embeddings.clip': unknown embedder kind 'clip'"),
    ("- just\n- a list\n", r"datasets.yaml field '<top level>': expected a mapping"),
    ("train: {manifest: vggsound/manifest.jsonl}\ntest: {vggss: {manifest: vggsound/vggss_test.jsonl}}\nrequire_files: maybe\n",
     r"field 'require_files': expected true or false"),
])
def test_datasets_yaml_errors_name_the_file_and_the_problem(fake_root, tmp_path, text, match):
    good = _spec_text(fake_root)
    try:
        (fake_root / "datasets.yaml").write_text(text)
        with pytest.raises(DataError, match=match):
            real_data.load_spec(fake_root)
    finally:
        (fake_root / "datasets.yaml").write_text(good)


def test_missing_root_or_datasets_yaml(tmp_path):
    with pytest.raises(DataError, match="data root not found"):
        real_data.load_spec(tmp_path / "absent")
    with pytest.raises(DataError, match=r"datasets.yaml: not found: a data root holds datasets.yaml"):
        real_data.load_spec(tmp_path)


# ----------------------------------------------------------------------------- staging
def test_stage_validates_counts_missing_files_and_writes_set_folders(fake_root, tmp_path):
    real = real_data.stage(real_data.load_spec(fake_root), tmp_path / "real_data", log=lambda *a: None)
    tr = real["train"]
    # the adapter already skipped the listed clip without files; one more file deleted after the fact
    # is skipped and counted here, by the same rule
    assert (tr["n_listed"], tr["n_items"], tr["skipped_missing_files"]) == (24, 24, 0)
    assert tr["n_categories"] == 3 and tr["linked"] == ["audio", "frames"]
    assert json.loads((fake_root / "vggsound" / "manifest.report.json").read_text())["skipped_missing_files"] == 1
    vs, fl, s4, ext = (real["test"][n] for n in ("vggss", "flickr", "avsbench_s4", "vggss_extended"))
    assert (vs["n_items"], vs["n_with_boxes"], vs["protocol"]) == (6, 6, "ezvsl")
    assert (s4["n_items"], s4["n_with_masks"]) == (10, 10)
    assert (ext["n_items"], ext["n_negative"], ext["protocol"]) == (9, 3, "slavc")
    for e in [tr, vs, fl, s4, ext]:
        set_dir = Path(e["dir"])
        assert set_dir.parent == tmp_path / "real_data" and set_dir.name.startswith(e["name"] + "-")
        items = read_manifest(set_dir / "manifest.jsonl", set_dir, check_files=True)   # through the links
        assert len(items) == e["n_items"]
    flickr_items = read_manifest(Path(fl["dir"]) / "manifest.jsonl")
    assert all(it.box_annotators == (0, 1) for it in flickr_items)     # consensus ground truth
    table = real_data.summary_table(real)
    assert list(table.index) == ["real_train", "vggss", "flickr", "avsbench_s4", "vggss_extended"]

    victim = fake_root / "vggsound" / "frames" / f"{_vid(3)}.jpg"
    kept = victim.read_bytes()
    try:
        victim.unlink()
        again = real_data.stage_set(real_data.load_spec(fake_root).train, tmp_path / "real_data", log=lambda *a: None)
        assert (again["n_items"], again["skipped_missing_files"]) == (23, 1)
        assert again["skipped_missing_files_examples"] == [f"frames/{_vid(3)}.jpg"]
        assert again["dir"] != tr["dir"] and not Path(tr["dir"]).exists()   # a new set folder replaces the old
        with pytest.raises(DataError, match=rf"{_vid(3)}.jpg: missing file .*require_files is true"):
            real_data.stage_set(real_data.load_spec(fake_root).train, tmp_path / "strict", require_files=True)
    finally:
        victim.write_bytes(kept)


def test_external_embeddings_are_cut_to_the_kept_items(fake_root, tmp_path):
    ids = [it.id for it in read_manifest(fake_root / "vggsound" / "manifest.jsonl")]
    emb = fake_root / "emb"
    emb.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for mod in ("image", "audio"):     # rows in another order, plus an id the manifest does not keep
        order = ids[::-1] + [_vid(999)]
        np.savez(emb / f"{mod}.npz", ids=np.array(order), **{mod: rng.standard_normal((len(order), 8)).astype(np.float32)})
    spec = real_data.load_spec(fake_root)
    rs = real_data.RealSet("real_train", spec.train.manifest, spec.train.root,
                           embeddings={("supervised", m): emb / f"{m}.npz" for m in ("image", "audio")})
    e = real_data.stage_set(rs, tmp_path, log=lambda *a: None)
    from avsl_core.embedders import load_external
    got = load_external(e["embeddings"]["supervised/image"], ids, "image")
    with np.load(emb / "image.npz") as z:
        want = z["image"][[list(z["ids"]).index(i) for i in ids]]
    np.testing.assert_array_equal(got, want)


def test_eval_config_and_twin_runs():
    from avsl_core.evaluate import EvalConfig
    base = EvalConfig(protocol="ezvsl", n_bootstrap=7)
    assert real_data.eval_config({"protocol": "slavc"}, base) == EvalConfig(protocol="slavc", n_bootstrap=7)
    assert real_data.eval_config({"protocol": None}, base).protocol == "ezvsl"
    runs = {"ours": {"method": "ours"}, "abl_H": {"method": "ours"}, "ezvsl": {"method": "ezvsl"}}
    twins = real_data.twin_runs(runs, lambda n: not n.startswith("abl_"))
    assert twins == {"real_ours": {"method": "ours", "train_set": "real_train", "curriculum_steps": 0},
                     "real_ezvsl": {"method": "ezvsl", "train_set": "real_train", "curriculum_steps": 0}}


def test_real_runs_stand_beside_the_paper_rows_by_method():
    import pandas as pd

    from avsl_core import book, book_pages
    rows = [dict(test_set="vggss", model=m, family="localization", metric="ciou@0.5", value=v, lo=v - 0.1, hi=v + 0.1)
            for m, v in (("real_ours", 0.4), ("real_ezvsl", 0.3), ("floor_centre", 0.2), ("ours", 0.9))]
    res = pd.DataFrame(rows)
    paper = book.paper_table(1)
    cols = [("cIoU@0.5", "localization", "ciou@0.5")]
    t = book_pages.real_beside_paper(res, paper[paper.group == "w/o OGL"], ["vggss", "flickr"], cols)
    assert t.loc["Ours (NN w/ supervised pretrained encoders)", ("VGG-SS", "cIoU@0.5")] == "40.0 [30.0, 50.0]"
    assert t.loc["EZ-VSL", ("VGG-SS", "cIoU@0.5")] == "30.0 [20.0, 40.0]"
    assert t.loc["centre prior", ("VGG-SS", "cIoU@0.5")] == "20.0 [10.0, 30.0]"
    assert t.loc["EZ-VSL", ("paper: VGG-SS", "cIoU")] == "35.96"
    assert book_pages.real_names(res) == ["real_ours", "real_ezvsl"]
    assert book_pages.real_beside_paper(res[res.model == "ours"].assign(test_set="test_seen"), paper,
                                        ["vggss", "flickr"], cols) is None      # no data root: no real table


# ----------------------------------------------------------------------------- pipeline keys
def test_step_keys_and_parameters_follow_the_data_root(fake_root):
    step = next(s for s in pipeline.STEPS if s.name == "00_prepare_data")
    spec = real_data.load_spec(fake_root)
    fp = real_data.fingerprint(spec)
    assert fp["root"] == str(fake_root.resolve()) and set(fp["manifests"]) == {"real_train", *spec.tests}
    key = pipeline.step_key(ROOT, step, {"a": 1}, {}, "c", fp)
    assert key != pipeline.step_key(ROOT, step, {"a": 1}, {}, "c")          # AVScenes-only run
    assert key == pipeline.step_key(ROOT, step, {"a": 1}, {}, "c", real_data.fingerprint(spec))
    manifest = fake_root / "flickr" / "flickr_test.jsonl"
    text = manifest.read_text()
    try:
        manifest.write_text("\n".join(text.splitlines()[:-1]) + "\n")     # one item fewer
        fp2 = real_data.fingerprint(real_data.load_spec(fake_root))
        assert fp2["manifests"]["flickr"]["sha256"] != fp["manifests"]["flickr"]["sha256"]
        assert pipeline.step_key(ROOT, step, {"a": 1}, {}, "c", fp2) != key
    finally:
        manifest.write_text(text)
    yaml_text = _spec_text(fake_root)
    try:
        (fake_root / "datasets.yaml").write_text(yaml_text + "require_files: false\n")
        assert pipeline.step_key(ROOT, step, {"a": 1}, {}, "c", real_data.fingerprint(real_data.load_spec(fake_root))) != key
    finally:
        (fake_root / "datasets.yaml").write_text(yaml_text)

    from avsl_core.config import load_profile
    prof = load_profile("paper")
    for s in pipeline.STEPS:
        with_root = pipeline.params_for(prof, s, "/data")
        assert ("data_root" in with_root) == (s.name in pipeline.DATA_ROOT_STEPS)
        assert "data_root" not in pipeline.params_for(prof, s)
    for name in pipeline.DATA_ROOT_STEPS:      # papermill injects data_root into these parameters cells
        nb = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())
        cell = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
        assert 'data_root = ""' in "".join(cell["source"]), name
    assert pipeline.default_runs_dir(ROOT, "paper", "/data") == ROOT / "runs" / "paper-real"
    assert pipeline.default_runs_dir(ROOT, "paper") == ROOT / "runs" / "paper"


def test_pipeline_stops_on_a_bad_data_root_before_any_step(tmp_path, capsys):
    (tmp_path / "datasets.yaml").write_text("train: {manifest: missing.jsonl}\ntest: {vggss: {manifest: x.jsonl}}\n")
    assert pipeline.main(["--profile", "smoke", "--data-root", str(tmp_path), "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "datasets.yaml field 'train.manifest': manifest not found" in err
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------- end to end
SMOKE_RUNS = {"ours": {"method": "ours", "loss": {"pooling": "topk", "topk_frac": 0.25, "tau": 0.03}},
              "ezvsl": {"method": "ezvsl", "loss": {}}}


@pytest.mark.skipif(not (ROOT / "data" / "assets" / "index.csv").exists(),
                    reason="asset cache missing: run `make assets` (make test does)")
def test_smoke_pipeline_on_a_data_root_writes_real_results(fake_root, tmp_path):
    """00 -> 15 -> 20 -> 30 -> 40, 43, 45 at the smoke profile with a data root (fewer AVScenes runs and
    sets than the profile, through `overrides`, to stay short): real_<run> models trained on the fake
    VGGSound manifest and scored on every real test set with its protocol; Tables 1, 5, 7 show them."""
    runs_dir = tmp_path / "runs"
    steps = ["00_prepare_data", "15_mine_positives", "20_train", "30_evaluate", "40_table1_main",
             "43_table5_pixel", "45_table7_extended"]
    records = pipeline.run("smoke", only=steps, runs_dir=runs_dir, book_dir=tmp_path / "book", data_root=fake_root,
                           overrides={"15_mine_positives": {"extra_sets": [], "kinds": ["supervised"]},
                                      "20_train": {"runs": SMOKE_RUNS, "full_only": {}},
                                      "30_evaluate": {"test_sets": ["test_seen"], "n_bootstrap": 20},
                                      **{page: {"regimes": ["test_seen"]}
                                         for page in ("40_table1_main", "43_table5_pixel", "45_table7_extended")}})
    assert [r["step"] for r in records if not r["skipped"]] == steps
    nb = json.loads((runs_dir / "00_prepare_data.ipynb").read_text())
    assert nb["metadata"]["papermill"]["parameters"]["data_root"] == str(fake_root.resolve())

    summary = json.loads((runs_dir / "results" / "data_summary.json").read_text())
    assert summary["real"]["train"]["n_items"] == 24 and summary["data_root"] == str(fake_root.resolve())
    mining = json.loads((runs_dir / "results" / "mining.json").read_text())
    assert set(mining["tables_by_set"]["real_train"]) == {"supervised/image", "supervised/audio"}
    train = json.loads((runs_dir / "results" / "train.json").read_text())
    assert train["catalogue"]["real_ours"]["train_set"] == "real_train"
    assert train["catalogue"]["real_ezvsl"]["train_set"] == "real_train"
    cfg = json.loads((runs_dir / "ckpt" / "real_ours" / "config.json").read_text())
    assert cfg["data"]["train_dir"] == summary["real"]["train"]["dir"]
    assert cfg["neighbours"] == mining["tables_by_set"]["real_train"]["supervised/image"]

    ev = runs_dir / "results" / "eval"
    for set_name, family in [("vggss", "localization"), ("flickr", "localization"), ("avsbench_s4", "pixel"),
                             ("vggss_extended", "extended")]:
        for model in ("real_ours", "real_ezvsl", "floor_centre"):
            r = json.loads((ev / set_name / f"{model}.json").read_text())
            assert r["test_set"] == set_name and family in r["metrics"], (set_name, model)
            assert r["real_data"]["manifest"] == str(real_data.load_spec(fake_root).tests[set_name].manifest)
        assert not (ev / set_name / "ours.json").exists()       # AVScenes-trained runs stay on AVScenes
    assert json.loads((ev / "vggss_extended" / "real_ours.json").read_text())["protocol"]["name"] == "slavc"
    assert json.loads((ev / "flickr" / "real_ours.json").read_text())["n_scored"] == 5
    assert (ev / "test_seen" / "ours.json").exists() and not (ev / "test_seen" / "real_ours.json").exists()

    for page, shown in [("40_table1_main", "VGG-SS (6 items)"), ("43_table5_pixel", "mIoU (per batch)"),
                        ("45_table7_extended", "extended VGG-SS")]:
        nb = json.loads((runs_dir / f"{page}.ipynb").read_text())
        text = json.dumps([c.get("outputs", []) for c in nb["cells"]])   # what the page shows, not its code
        assert "no real data in this run" not in text and shown in text, page
