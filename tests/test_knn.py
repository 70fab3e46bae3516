"""Exact self-k-NN by symmetric blocks (mining._knn_blocked): equals brute force, ties and self handled.

Integer-valued vectors make every dot product exact in float32 whatever the summation order, so the
blocked path must reproduce the brute-force ranking (score desc, index asc) bit for bit, duplicates
and ties included. Small blocks, a small buffer and a negative z force the off-diagonal, compaction
and exact-recompute paths that the default sizes only reach at large N.
"""
import numpy as np
import pytest

from avsl_core import mining
from avsl_core.mining import _knn_blocked, _key_indices, _key_scores, _rank_keys, knn_self


def brute_force(x, k):
    """Reference: full score matrix, self removed, rows ordered by (score desc, index asc)."""
    s = x.astype(np.float64) @ x.astype(np.float64).T                  # [N, N], exact for small ints
    np.fill_diagonal(s, -np.inf)
    n = len(x)
    idx = np.stack([np.lexsort((np.arange(n), -s[i]))[:k] for i in range(n)])
    return idx, np.take_along_axis(s, idx, 1).astype(np.float32)


def tied_ints(n, d, seed):
    """Small integer vectors: many equal scores; every 7th row a copy of row 0 (exact duplicates)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, size=(n, d)).astype(np.float32)
    x[~x.any(1)] = 1.0
    x[::7] = x[0]
    return x


@pytest.mark.parametrize("n,d,k,block,buffer,z", [
    (300, 8, 10, 64, 16, 3.0),        # 5 blocks: diagonal + off-diagonal, row and column sides
    (257, 4, 30, 50, 4, -3.0),        # tiny buffer (many compactions), z < 0: rows recomputed exactly
    (130, 3, 129, 40, 8, 0.0),        # k = N - 1: every other item
    (64, 2, 7, 1000, 256, 3.0),       # one block
])
def test_blocked_equals_brute_force_with_ties_and_duplicates(n, d, k, block, buffer, z):
    x = tied_ints(n, d, seed=n)
    ref_i, ref_s = brute_force(x, k)
    perm = np.random.default_rng(1).permutation(n)
    stats = {}
    idx, sc = _knn_blocked(x[perm], perm, k, block=block, chunk=17, buffer=buffer, workers=2, z=z,
                           return_scores=True, stats=stats)
    assert idx.dtype == np.int32 and idx.shape == (n, k)
    assert np.array_equal(idx, ref_i)                                   # same order, ties by index
    assert np.array_equal(sc, ref_s)
    assert not (idx == np.arange(n)[:, None]).any()                     # never itself
    assert stats["blocks"] == -(-n // block)


def test_duplicates_rank_by_index_and_self_is_excluded():
    x = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [1, 1], [1, 0]], np.float32)   # 0, 1, 2, 5 equal
    idx = knn_self(x, 4, method="blocked")
    assert idx[0].tolist() == [1, 2, 5, 4] and idx[5].tolist() == [0, 1, 2, 4]
    assert idx[3].tolist()[0] == 4 and not (idx == np.arange(6)[:, None]).any()


def test_result_does_not_depend_on_seed_or_worker_count():
    x = tied_ints(400, 6, seed=3)
    a = knn_self(x, 12, method="blocked", seed=0, threads=1)
    assert np.array_equal(a, knn_self(x, 12, method="blocked", seed=5, threads=3))
    assert np.array_equal(a, knn_self(x, 12, method="torch"))          # former name, same path


def test_float_data_matches_brute_force_up_to_rounding():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 32)).astype(np.float32)
    xn = mining.l2_normalize(x)
    perm = rng.permutation(500)
    idx, sc = _knn_blocked(xn[perm], perm, 20, block=128, chunk=64, buffer=8, workers=2,
                           return_scores=True)
    s = xn.astype(np.float64) @ xn.astype(np.float64).T
    np.fill_diagonal(s, -np.inf)
    kth = -np.sort(-s, axis=1)[:, 19]                                    # exact 20th score
    assert np.all(np.take_along_axis(s, idx, 1) >= kth[:, None] - 1e-6)  # all are true top-20
    assert np.allclose(sc, np.take_along_axis(s, idx, 1), atol=1e-6)
    assert np.all(np.diff(sc, axis=1) <= 0)                             # most similar first


def test_rank_keys_order_like_score_then_index():
    scores = np.array([0.5, -0.0, 0.0, -1.0, 1.0, 0.5, -0.25, np.float32(1e-30), -np.inf], np.float32)
    idx = np.array([3, 7, 2, 0, 9, 1, 4, 8, 5], np.int64)
    keys = _rank_keys(scores, idx)
    by_key = np.argsort(-keys, kind="stable")
    by_lex = np.lexsort((idx, -(scores + np.float32(0))))               # -0.0 counts as 0.0
    assert by_key.tolist() == by_lex.tolist()
    assert np.array_equal(_key_indices(keys), idx) and np.array_equal(_key_scores(keys), scores + 0)


def test_bad_method_and_index():
    x = tied_ints(20, 3, seed=0)
    with pytest.raises(ValueError, match="method must be"):
        knn_self(x, 3, method="annoy")
    with pytest.raises(ValueError, match="index must be 'flat'"):
        knn_self(x, 3, method="blocked", index="ivf")
