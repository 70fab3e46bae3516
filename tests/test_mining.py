"""Neighbour tables (paper §3 conceptual positives): k-NN by construction, bad input, reuse, quality."""
import json
import math

import numpy as np
import pytest

from avsl_core import mining
from avsl_core.errors import DataError
from avsl_core.mining import (ConceptualPositives, anchor_neighbours, check_table, knn_self,
                              load_or_build, load_table, neighbour_quality, paper_k_to_ours,
                              precision_at_k, random_precision, resolve_k)


def axis_clusters(n_axes=4, per=5, dim=8, noise=0.01, seed=0):
    """per points near each of n_axes basis vectors: a point's per-1 nearest are its own cluster."""
    rng = np.random.default_rng(seed)
    x = np.repeat(np.eye(dim)[:n_axes], per, axis=0) + noise * rng.standard_normal((n_axes * per, dim))
    return x.astype(np.float32), np.repeat(np.arange(n_axes), per)


@pytest.mark.parametrize("method", ["faiss", "blocked"])
def test_neighbours_known_by_construction(method):
    x, lab = axis_clusters()
    idx, sc = knn_self(x * 7.0, 4, method=method, return_scores=True, chunk=3)   # scale-free, chunked
    assert idx.dtype == np.int32 and idx.shape == (20, 4)
    for i in range(20):
        assert set(idx[i]) == set(np.flatnonzero(lab == lab[i])) - {i}
    assert np.all(np.diff(sc, axis=1) <= 1e-6)                      # most similar first
    assert sc.max() <= 1 + 1e-5 and sc.min() > 0.99                 # cosines of near-parallel points
    assert precision_at_k(idx, lab) == 1.0


def test_faiss_and_blocked_agree_and_ivf_matches_flat_when_probing_all_lists():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((600, 16)).astype(np.float32)
    a = knn_self(x, 10, method="faiss")
    b = knn_self(x, 10, method="blocked", chunk=128)
    assert (a[:, 0] == b[:, 0]).mean() > 0.99
    assert np.mean([len(set(a[i]) & set(b[i])) / 10 for i in range(600)]) > 0.99
    c = knn_self(x, 10, method="faiss", index="ivf", nlist=8, nprobe=8)       # exhaustive IVF
    assert np.mean([len(set(a[i]) & set(c[i])) / 10 for i in range(600)]) > 0.99


def test_ivf_rows_with_too_few_candidates_are_completed_exactly():
    x, _ = axis_clusters(n_axes=8, per=20, dim=8, noise=0.05)      # 8 tight clusters of 20
    idx = knn_self(x, 40, method="faiss", index="ivf", nlist=8, nprobe=1)   # one list: < 41 candidates
    check_table(idx)                                                 # no -1, no self, in range
    exact = knn_self(x, 40, method="faiss")
    assert np.mean([len(set(idx[i]) & set(exact[i])) / 40 for i in range(len(x))]) > 0.99


def test_duplicates_are_excluded_by_index_not_by_score():
    x = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [0.1, 1]], np.float32)   # rows 0-2 identical
    for method in ("faiss", "blocked"):
        idx = knn_self(x, 2, method=method)
        for i in range(3):
            assert i not in idx[i] and set(idx[i]) == {0, 1, 2} - {i}
        assert list(idx[3]) == [4, 0] or list(idx[3])[0] == 4


@pytest.mark.parametrize("bad,msg", [("nan", "NaN"), ("inf", "NaN or inf"), ("zero", "all zero")])
def test_bad_rows_raise_data_error_naming_the_source(bad, msg):
    x, _ = axis_clusters()
    x[7] = {"nan": np.nan, "inf": np.inf, "zero": 0.0}[bad]
    with pytest.raises(DataError, match=msg) as e:
        knn_self(x, 3, source="emb/clip_image.npy")
    assert str(e.value).startswith("emb/clip_image.npy row 7")


def test_k_validation_and_fractions():
    x, _ = axis_clusters()
    with pytest.raises(ValueError, match="k=20 must be smaller"):
        knn_self(x, 20)
    with pytest.raises(ValueError, match=">= 1"):
        resolve_k(0, 20)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        resolve_k(1.5, 20)
    assert resolve_k(0.25, 20) == 5 and resolve_k(0.001, 20) == 1 and resolve_k(19, 20) == 19
    assert knn_self(x, 19).shape == (20, 19)                       # every other item
    # Table 9: the paper's k of 144K as the same fraction of our training set
    assert [paper_k_to_ours(k, 8000) for k in mining.PAPER_TABLE9_K] == [1, 2, 6, 28, 56]
    assert paper_k_to_ours(1000, 144_000) == 1000 and paper_k_to_ours(10, 48) == 1


def test_table9_ks_match_the_paper_csv():
    import pathlib
    csv = pathlib.Path(__file__).resolve().parents[2] / "shared" / "paper" / "paper_tables.csv"
    if not csv.exists():
        pytest.skip("paper tables not beside the checkout")
    import pandas as pd
    df = pd.read_csv(csv, dtype=str)
    ks = sorted({int(g.split("=")[1]) for g in df[df.table == "9"].group})
    assert tuple(ks) == mining.PAPER_TABLE9_K


def _manifest(tmp_path, n, name="manifest.jsonl"):
    p = tmp_path / name
    p.write_text("".join(json.dumps({"id": f"s{i}", "image": f"i{i}.png", "audio": f"a{i}.wav"}) + "\n"
                         for i in range(n)))
    return p


def test_tables_are_reused_when_metadata_matches_and_rebuilt_otherwise(tmp_path):
    x, _ = axis_clusters()
    man = _manifest(tmp_path, 20)
    logs = []
    kw = dict(manifest_path=man, embedder="supervised", modality="image", k=4, log=logs.append)
    t1 = load_or_build(tmp_path / "tables", x, **kw)
    assert t1.path.name == "supervised_image_k4.npy" and t1.meta["k"] == 4
    meta = json.loads(t1.path.with_suffix(".json").read_text())
    for f in ("embedder", "modality", "k", "manifest_sha256", "embedding_sha256", "created", "git_commit"):
        assert f in meta
    assert np.load(t1.path).dtype == np.int32
    t2 = load_or_build(tmp_path / "tables", x, **kw)
    assert "reusing" in logs[-1] and np.array_equal(t1.indices, t2.indices)
    x2 = x.copy()
    x2[0, 0] += 1e-3                                                # other embeddings
    load_or_build(tmp_path / "tables", x2, **kw)
    assert "rebuilding" in logs[-2] and "embedding_sha256" in logs[-2] and "built" in logs[-1]
    man.write_text(man.read_text().replace('"s0"', '"t0"'))         # other manifest, same length
    load_or_build(tmp_path / "tables", x2, **kw)
    assert "manifest_sha256" in logs[-2] and "embedding_sha256" not in logs[-2]
    t1.path.with_suffix(".json").write_text("{broken")             # damaged metadata
    t3 = load_or_build(tmp_path / "tables", x2, **kw)
    assert "rebuilding" in logs[-2] and load_table(t3.path).k == 4
    assert load_or_build(tmp_path / "tables", x2, **kw).path == t3.path and "reusing" in logs[-1]


def test_manifest_length_mismatch_and_bad_tables(tmp_path):
    x, _ = axis_clusters()
    with pytest.raises(DataError, match="has 19 items but the ssl/audio embeddings have 20 rows"):
        load_or_build(tmp_path, x, manifest_path=_manifest(tmp_path, 19), embedder="ssl",
                      modality="audio", k=3, log=lambda *_: None)
    with pytest.raises(DataError, match="lists the item itself"):
        check_table(np.array([[1], [1], [0]]))
    with pytest.raises(DataError, match="outside"):
        check_table(np.array([[1], [3], [0]]))
    with pytest.raises(DataError, match="missing"):
        load_table(tmp_path / "nothing.npy")


def test_conceptual_positives_draw_uniformly_from_the_row():
    img = np.array([[1, 2], [2, 3], [3, 0], [0, 1]], np.int32)
    aud = np.array([[3], [0], [1], [2]], np.int32)
    cp = ConceptualPositives(img, aud, rng=0)
    v, a = cp.batch(np.zeros(4000, int))
    assert set(v) == {1, 2} and abs((v == 1).mean() - 0.5) < 0.05 and set(a) == {3}
    assert cp(2)[1] == 1 and cp(2)[0] in (3, 0)
    assert cp.at(1, epoch=3) == ConceptualPositives(img, aud, rng=0).at(1, epoch=3)
    with pytest.raises(ValueError, match="same manifest"):
        ConceptualPositives(img, np.array([[1], [2], [0]]), rng=0)


def test_precision_and_random_floor_hand_computed():
    lab = ["a", "a", "b", "b"]
    t = np.array([[1, 2], [0, 3], [3, 0], [2, 1]])
    assert precision_at_k(t, lab) == 0.5 and precision_at_k(t, lab, 1) == 1.0
    assert math.isclose(random_precision(lab), 1 / 3)
    assert math.isclose(random_precision(["a", "a", "a", "b"]), (3 * 2 / 3 + 0) / 4)
    assert precision_at_k(t, ["a", "a", None, "b"]) == pytest.approx((0.5 + 0.5 + 0.0) / 3)  # row 2 skipped
    df = neighbour_quality({("sup", "image"): t, ("ssl", "audio"): t[:, ::-1]}, lab, cutoffs=(1, None))
    assert list(df.columns) == ["embedder", "modality", "k", "precision", "random", "lift"]
    assert df.set_index(["embedder", "k"]).loc[("ssl", 1), "precision"] == 0.0
    assert df.set_index(["embedder", "k"]).loc[("sup", 1), "lift"] == pytest.approx(3.0)
    an = anchor_neighbours({"image": t}, ["p", "q", "r", "s"], lab, anchors=[0, 2], n_neighbours=2)
    assert len(an) == 4 and list(an.neighbour_id[:2]) == ["q", "r"] and list(an.same[:2]) == [True, False]


def test_smaller_k_is_a_prefix_of_the_table(tmp_path):
    x, _ = axis_clusters(n_axes=3, per=6, noise=0.2)
    t = load_or_build(tmp_path, x, manifest_path=_manifest(tmp_path, 18), embedder="e", modality="audio",
                      k=8, log=lambda *_: None)
    assert np.array_equal(t.head(3), knn_self(x, 3)) and t.head(3).flags.c_contiguous
    with pytest.raises(ValueError):
        t.head(9)
