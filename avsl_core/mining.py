"""Conceptual positives (paper §3, "Obtaining conceptual positive samples"): self k-NN neighbour tables.

The paper computes, for every training pair, the cosine similarity to all other training samples with a
pretrained image encoder (and, separately, a pretrained audio encoder), keeps the top-k (k = 1000 of
144K), and at each step draws one of the k uniformly as v_conc (resp. a_conc). This module does the
search once, before training:

    embeddings [N, D] --l2-normalise--> exact blocked self-similarity + running top-k --> int32 [N, k]

Row i of a table holds the indices (into the same manifest order) of item i's k nearest neighbours,
most similar first, never i itself (excluded by index, so exact duplicates are handled).
Tables are saved as `<name>.npy` with a `<name>.json` metadata file (embedder, modality, k, manifest and
embedding hashes, git commit) and reused by `load_or_build` when the metadata matches.
Embedders (what produces the [N, D] arrays) live in `avsl_core.embedders`; `embedders.mine_positives`
runs the whole step (train or load the analogues, embed, build the tables).

Speed (benchmarks/bench_knn.py, N = 144,000, D = 512, k = 1000, 2 threads, on a machine shared with
other jobs, load average 2 to 4): the exact "blocked" search (symmetric blocks: half the matmul FLOPs;
running top-k behind a sampled floor; numpy's OpenBLAS, one thread per worker) took 194 CPU s (150
matmul, 39 selection; CPU / 2 = 97 s is the projection for 2 idle cores, not observed) and 2.08 GiB
peak; exact faiss IndexFlatIP took 393 CPU s and 1.61 GiB; the tables agreed (top-1 on all rows,
top-1000 sets on 1,000 sampled rows: 1.0). Wall times there (245 s each) measured the other jobs more
than the methods. The IVF option (nlist ~ sqrt(N)) scans its lists without BLAS, so on a CPU it pays
off only when nprobe / nlist is ~1 % or less (millions of items); at 144K with nprobe = 32 it was no
faster than the flat index and kept 58 % of the exact top-1000.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avsl_core.errors import DataError
from avsl_core.provenance import atomic_write_bytes, atomic_write_json, file_sha256, git_commit

PAPER_TRAIN_SIZE = 144_000                 # VGGSound-144K / SoundNet-Flickr-144K (paper §4.1)
PAPER_K = 1000                             # the paper's default k (Table 9: best)
PAPER_TABLE9_K = (10, 30, 100, 500, 1000)  # Table 9 columns ("k in k-NN")
DEFAULT_METHOD = "blocked"                 # half faiss's CPU time here: benchmarks/bench_knn.py
MODALITIES = ("image", "audio")
TABLE_FORMAT = 1
TILE_ROWS = 512                            # method="blocked": rows per matmul tile ([512, 4096] fp32)


# ----------------------------------------------------------------------------------------------- k
def paper_k_fraction(k_paper: int, n_paper: int = PAPER_TRAIN_SIZE) -> float:
    """The paper's k as a fraction of its training set (Table 9: k / 144K)."""
    return k_paper / n_paper


def paper_k_to_ours(k_paper: int, n_train: int, n_paper: int = PAPER_TRAIN_SIZE) -> int:
    """Our k for a training set of `n_train` items, at the same fraction as the paper's k / 144K.

    >>> paper_k_to_ours(1000, 8000), paper_k_to_ours(10, 8000), paper_k_to_ours(1000, 144_000)
    (56, 1, 1000)
    """
    return resolve_k(paper_k_fraction(k_paper, n_paper), n_train)


def resolve_k(k: int | float, n: int) -> int:
    """k given absolutely (int >= 1) or as a fraction of the set (0 < float < 1); at least 1, below n.

    Raises ValueError when k is not in range (k >= n: an item is never its own neighbour).
    """
    if isinstance(k, (bool, np.bool_)):
        raise ValueError(f"k must be an int or a fraction, got {k!r}")
    if isinstance(k, (float, np.floating)) and not float(k).is_integer():
        if not 0.0 < k < 1.0:
            raise ValueError(f"fractional k must lie in (0, 1), got {k}")
        k = max(1, int(round(float(k) * n)))
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k >= n:
        raise ValueError(f"k={k} must be smaller than the number of items N={n} "
                         "(each item has at most N-1 neighbours besides itself)")
    return k


# -------------------------------------------------------------------------------------- embeddings
def check_embeddings(emb: np.ndarray, source: str | os.PathLike | None = None,
                     ids: list[str] | None = None) -> np.ndarray:
    """Validate an [N, D] embedding array; return it as C-contiguous float32.

    DataError (naming `source`) for a wrong rank, non-finite values (NaN/inf) or all-zero rows:
    such rows have no direction, so their cosine neighbours would be arbitrary.
    """
    src = source if source is not None else "<embeddings>"
    emb = np.asarray(emb)
    if emb.ndim != 2 or emb.shape[0] == 0 or emb.shape[1] == 0:
        raise DataError(src, f"expected a non-empty [N, D] array, got shape {emb.shape}")
    if not np.issubdtype(emb.dtype, np.number):
        raise DataError(src, f"expected numbers, got dtype {emb.dtype}")
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    bad = ~np.isfinite(emb).all(axis=1)
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise DataError(src, f"{int(bad.sum())} rows hold NaN or inf values (first: row {r}"
                             f"{'' if ids is None else f', id {ids[r]!r}'})", row=r)
    zero = ~emb.any(axis=1)
    if zero.any():
        r = int(np.flatnonzero(zero)[0])
        raise DataError(src, f"{int(zero.sum())} rows are all zero (first: row {r}"
                             f"{'' if ids is None else f', id {ids[r]!r}'}); a zero vector has no "
                             "cosine neighbours", row=r)
    return emb


def l2_normalize(emb: np.ndarray, source: str | os.PathLike | None = None) -> np.ndarray:
    """Rows scaled to unit length (after `check_embeddings`): inner product = cosine similarity."""
    emb = check_embeddings(emb, source)
    out = np.empty_like(emb)                                        # [N, D] float32
    for a in range(0, emb.shape[0], 65536):                         # float64 norms, bounded temps
        blk = emb[a:a + 65536]
        out[a:a + 65536] = blk / np.linalg.norm(blk.astype(np.float64), axis=1, keepdims=True)
    return out


def embedding_sha256(emb: np.ndarray) -> str:
    """Hash of the float32 array (shape included): a table is reused only for identical embeddings."""
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    h = hashlib.sha256(repr(emb.shape).encode())
    h.update(memoryview(emb).cast("B"))
    return h.hexdigest()


# ---------------------------------------------------------------------------------------- search
def _drop_self(idx: np.ndarray, scores: np.ndarray, rows: np.ndarray, k: int):
    """From top-(k+1) results, remove each row's own index (by index, not by score, so an exact
    duplicate ranked above the item stays); rows where self is absent lose their last column."""
    is_self = idx == rows[:, None]                                  # [B, k+1]
    order = np.argsort(is_self, axis=1, kind="stable")[:, :k]       # self moves to the end
    return np.take_along_axis(idx, order, 1), np.take_along_axis(scores, order, 1)


def _faiss_index(xn: np.ndarray, index: str, nlist: int | None, nprobe: int, seed: int):
    import faiss
    n, d = xn.shape
    if index == "flat":
        ix = faiss.IndexFlatIP(d)
    elif index == "ivf":
        nlist = int(nlist or max(1, round(np.sqrt(n))))
        quant = faiss.IndexFlatIP(d)
        ix = faiss.IndexIVFFlat(quant, d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        n_tr = min(n, max(64 * nlist, 10_000))
        ix.train(xn[np.sort(rng.choice(n, n_tr, replace=False))] if n_tr < n else xn)
        ix.nprobe = int(min(nprobe, nlist))
    else:
        raise ValueError(f"index must be 'flat' or 'ivf', got {index!r}")
    ix.add(xn)
    return ix


def _knn_faiss(xn, k, index, nlist, nprobe, chunk, threads, seed, return_scores):
    import faiss
    if threads:
        faiss.omp_set_num_threads(int(threads))
    n, kk = len(xn), k + 1
    out_i = np.empty((n, k), np.int32)
    out_s = np.empty((n, k), np.float32) if return_scores else None
    ix = _faiss_index(xn, index, nlist, nprobe, seed)
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        s_, i_ = ix.search(xn[a:b], kk)                                # [B, k+1] each
        i_, s_ = _drop_self(i_.astype(np.int64, copy=False), s_, np.arange(a, b), k)
        out_i[a:b] = i_
        if out_s is not None:
            out_s[a:b] = s_
    missing = out_i < 0                        # IVF only: a probe found fewer than k+1 candidates
    if missing.any():
        rows = np.flatnonzero(missing.any(axis=1))                       # redo those rows exactly
        ix_flat = _faiss_index(xn, "flat", None, 1, seed)
        for a in range(0, len(rows), chunk):
            r = rows[a:a + chunk]
            s_, i_ = ix_flat.search(xn[r], kk)
            i_, s_ = _drop_self(i_.astype(np.int64, copy=False), s_, r, k)
            out_i[r] = i_
            if out_s is not None:
                out_s[r] = s_
    return out_i, out_s


# Exact ranking keys: one int64 per (score, index) pair; larger = more similar, equal scores -> the
# smaller index first. High 32 bits: the float32 score's bits as an order-preserving int32; low 32
# bits: 2**32 - 1 - index. Selecting on keys makes ties deterministic and carries the index along.
_EMPTY = np.iinfo(np.int64).min                # an unused slot, below every real key
_MERGE_ROWS = 512                              # rows merged / converted at a time (bounded temporaries)
_LOW32 = np.int64(0xFFFFFFFF)


def _rank_keys(scores: np.ndarray, idx: np.ndarray) -> np.ndarray:
    hi = np.add(scores, np.float32(0), dtype=np.float32).view(np.int32).astype(np.int64)  # -0 -> +0
    hi ^= (hi >> 63) & 0x7FFFFFFF                                   # negative floats: reverse order
    hi <<= 32
    hi += _LOW32 - idx
    return hi


def _key_scores(keys: np.ndarray) -> np.ndarray:
    hi = keys >> 32
    hi ^= (hi >> 63) & 0x7FFFFFFF
    return hi.astype(np.int32).view(np.float32)


def _key_indices(keys: np.ndarray) -> np.ndarray:
    return (_LOW32 - (keys & _LOW32)).astype(np.int32)


def _group_rank(t: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """For sorted row ids t: (count per row [n], rank of each entry within its row)."""
    c = np.bincount(t, minlength=n)
    return c, np.arange(len(t)) - np.repeat(np.cumsum(c) - c, c)


class _RunningTopK:
    """Running exact top-k of one row block: int64 keys [rows, k + buffer], unordered; a row whose
    buffer overflows is cut back to its best k. `floor` = max(kth, est) filters new candidates."""

    def __init__(self, rows: int, k: int, buffer: int):
        self.k, self.cap = k, k + buffer
        self.keys = np.full((rows, self.cap), _EMPTY)               # [rows, k + buffer]
        self.count = np.zeros(rows, np.int64)
        self.kth = np.full(rows, -np.inf, np.float32)   # k-th best score held: a sure lower bound
        self.est = np.full(rows, -np.inf, np.float32)   # sampled estimate: checked in finish()
        self.floor = np.full(rows, -np.inf, np.float32)
        self.compactions = 0

    def push(self, t: np.ndarray, keys: np.ndarray) -> None:
        """Add candidates: local rows t (sorted ascending) and their keys."""
        n, cap = len(self.count), self.cap
        c, o = _group_rank(t, n)
        pos = self.count[t] + o
        fit = pos < cap
        self.keys.reshape(-1)[t[fit] * cap + pos[fit]] = keys[fit]
        self.count += c
        if fit.all():
            return
        t, keys = t[~fit], keys[~fit]                               # rows that overflow: merge now
        full = np.unique(t)
        for a in range(0, len(full), _MERGE_ROWS):                  # bounded temporaries
            rows = full[a:a + _MERGE_ROWS]
            lo, hi = np.searchsorted(t, [rows[0], rows[-1] + 1])
            at = np.searchsorted(rows, t[lo:hi])
            c, o = _group_rank(at, len(rows))
            e = np.full((len(rows), cap + int(c.max())), _EMPTY)    # [R, k + buffer + extra]
            e[:, :cap] = self.keys[rows]
            e[at, cap + o] = keys[lo:hi]
            e.partition(e.shape[1] - self.k, axis=1)
            self.keys[rows, :self.k] = e[:, -self.k:]
            self.keys[rows, self.k:] = _EMPTY
            self.count[rows] = self.k
            kth = e[:, -self.k]
            self.kth[rows] = np.where(kth == _EMPTY, -np.inf, _key_scores(kth))
            self.floor[rows] = np.maximum(self.kth[rows], self.est[rows])
        self.compactions += len(full)

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys int64 [rows, k] best first, exact bool [rows]); a row is exact when it holds k keys
        and its k-th score is >= est, i.e. the estimate never filtered out a true neighbour."""
        self.keys.partition(self.cap - self.k, axis=1)
        top = self.keys[:, self.cap - self.k:]
        top.sort(axis=1)
        top = top[:, ::-1]
        last = top[:, -1]
        return top, (last != _EMPTY) & (_key_scores(last) >= self.est)


_BLAS_LOCAL = None                             # numpy's OpenBLAS openblas_set_num_threads_local, or False


def _blas_one_thread() -> None:
    """Worker initializer: numpy's OpenBLAS (0.3.27+ has a per-thread setting) runs this thread's
    GEMMs on one core, so `workers` threads use `workers` cores. Other BLAS builds: left as they are."""
    global _BLAS_LOCAL
    if _BLAS_LOCAL is None:
        import ctypes
        import glob
        found = False
        libs = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "*openblas*")
        for lib in glob.glob(libs):
            try:
                found = ctypes.CDLL(lib).openblas_set_num_threads_local
                break
            except (OSError, AttributeError):
                continue
        _BLAS_LOCAL = found
    if _BLAS_LOCAL:
        _BLAS_LOCAL(1)


def _knn_rows_exact(xp: np.ndarray, rows: np.ndarray, orig: np.ndarray, k: int, chunk: int = 64):
    """Exact top-k keys [len(rows), k] of rows of xp against all of xp, self excluded: the fallback
    for the rows whose sampled floor estimate was too high (_knn_blocked)."""
    n = len(xp)
    out = np.empty((len(rows), k), np.int64)
    for a in range(0, len(rows), chunk):
        r = rows[a:a + chunk]
        s = xp[r] @ xp.T                                            # [B, N]
        s[np.arange(len(r)), r] = -np.inf
        th = np.partition(s, n - k, axis=1)[:, n - k]               # k-th score; ties all kept
        i, j = np.nonzero(s >= th[:, None])
        c, o = _group_rank(i, len(r))
        e = np.full((len(r), int(c.max())), _EMPTY)
        e[i, o] = _rank_keys(s[i, j], orig[j])
        e.sort(axis=1)
        out[a:a + chunk] = e[:, ::-1][:, :k]
    return out


def _knn_blocked(xp: np.ndarray, orig: np.ndarray, k: int, *, block: int = 4096, chunk: int = 512,
                 buffer: int = 256, workers: int = 2, z: float = 3.0, return_scores: bool = False,
                 stats: dict | None = None):
    """Exact self top-k of unit rows xp [N, D] (row i is item orig[i]; rows should be in random
    order) with half the matmul FLOPs: S = X X^T is symmetric, so only blocks i <= j are computed and
    each serves row block i (S_ij) and row block j (S_ij^T). Each row keeps a running top-k of
    rank keys (_RunningTopK); a block entry becomes a candidate only if it reaches the row's floor,
    so selection handles ~1.3 k candidates per row instead of N. Order: score desc, original index asc.

    Floors. The diagonal block of every row block is done first. With rows in random order it is a
    uniform sample of s - 1 columns, so its score ranked r = kp + z sqrt(kp) + 1 (kp = k (s-1)/(N-1)
    true neighbours expected in the sample) is below the row's true k-th score unless the sample is
    unusually rich (Poisson tail, ~0.1 % of rows at z = 3). The floor max(kth, est) never exceeds
    max(est, final k-th score), so a row with est <= its final k-th score kept every column scoring
    >= the k-th; the other rows are recomputed against all N (_knn_rows_exact).

    `workers` threads each run a one-thread GEMM (numpy's OpenBLAS; torch's MKL was ~25 % slower on
    this AMD CPU) over [chunk, block] tiles and filter them; the main thread merges. Extra memory:
    N (k + buffer) 8-byte keys, freed block by block, plus 6 bytes per tile entry per worker.
    Returns (int32 [N, k], float32 [N, k] scores or None), rows in the original order.
    """
    n = len(xp)
    nb = -(-n // block)
    bounds = [int(b) for b in np.linspace(0, n, nb + 1).round()]   # near-equal row blocks
    if nb > 1 and max(np.diff(bounds)) > 65535:
        raise ValueError("block must be at most 65535 rows")
    tops = [_RunningTopK(b - a, k, buffer) for a, b in zip(bounds[:-1], bounds[1:])]
    cpu = {"mm": [], "tile": []}                                    # per-task thread CPU seconds
    local = threading.local()

    def tile(bi, bj):
        """Candidates of block (bi, bj): rows of bi and keys, and off the diagonal rows of bj and keys."""
        t0 = time.thread_time()
        ai, si, aj, sj = bounds[bi], bounds[bi + 1] - bounds[bi], bounds[bj], bounds[bj + 1] - bounds[bj]
        ti, tj, diag = tops[bi], tops[bj], bi == bj
        if not hasattr(local, "s"):                                 # per-worker tile buffers, reused
            size = min(chunk, max(np.diff(bounds))) * max(np.diff(bounds))
            local.s, local.m1, local.m2 = (np.empty(size, t) for t in (np.float32, bool, bool))
        ri, ki, rj, kj, mm = [], [], [], [], 0.0
        for a in range(0, si, chunk):
            h = min(chunk, si - a)
            c0 = time.thread_time()
            s, m1, m2 = (b[:h * sj].reshape(h, sj) for b in (local.s, local.m1, local.m2))
            np.matmul(xp[ai + a:ai + a + h], xp[aj:aj + sj].T, out=s)            # [h, sj] scores
            mm += time.thread_time() - c0
            if diag:
                s[np.arange(h), a + np.arange(h)] = -np.inf         # self
                kp = k * (sj - 1) / (n - 1)
                r = int(np.ceil(kp + z * np.sqrt(kp))) + 1
                if nb > 1 and 1 <= r < sj - 1:
                    ti.est[a:a + h] = np.partition(s, sj - r, axis=1)[:, sj - r]
                    ti.floor[a:a + h] = np.maximum(ti.kth[a:a + h], ti.est[a:a + h])
            fr = ti.floor[a:a + h].copy()                           # snapshots: a stale floor is lower
            np.greater_equal(s, fr[:, None], out=m1)
            if not diag:
                fc = tj.floor.copy()
                np.greater_equal(s, fc, out=m2)
                np.bitwise_or(m1, m2, out=m1)
            f = np.flatnonzero(m1)
            v = s.reshape(-1)[f]
            r, c = np.divmod(f, sj)
            ok = (r + a != c) if diag else (v >= fr[r])
            ri.append(r[ok] + a)
            ki.append(_rank_keys(v[ok], orig[aj + c[ok]]))
            if not diag:
                ok = v >= fc[c]
                rj.append(c[ok])
                kj.append(_rank_keys(v[ok], orig[ai + a + r[ok]]))
        out = [np.concatenate(ri), np.concatenate(ki)]
        if not diag:
            rj, kj = np.concatenate(rj), np.concatenate(kj)
            o = np.argsort(rj.astype(np.uint16), kind="stable")    # radix sort: group by row
            out += [rj[o], kj[o]]
        cpu["mm"].append(mm)
        cpu["tile"].append(time.thread_time() - t0)
        return out

    done = [None] * nb                          # per block: (int32 [s, k], float32 [s, k] or None)
    redo, acc = [], {"candidates": 0, "compactions": 0}

    def push(b, rows, keys):
        acc["candidates"] += len(rows)
        tops[b].push(rows, keys)

    def finish(b):
        keys, exact = tops[b].finish()
        acc["compactions"] += tops[b].compactions
        done[b] = (np.concatenate([_key_indices(keys[a:a + _MERGE_ROWS])
                                   for a in range(0, len(keys), _MERGE_ROWS)]),
                   _key_scores(keys) if return_scores else None)
        tops[b] = None                                              # free its keys
        redo.append(bounds[b] + np.flatnonzero(~exact))

    main0 = time.thread_time()
    pairs = [(bi, bj) for bi in range(nb) for bj in range(bi + 1, nb)]
    with ThreadPoolExecutor(workers, initializer=_blas_one_thread) as ex:
        for b, fut in enumerate([ex.submit(tile, b, b) for b in range(nb)]):
            push(b, *fut.result())                                  # floors set before any S_ij
        if nb == 1:
            finish(0)
        window = deque()
        for p in pairs:
            window.append((p, ex.submit(tile, *p)))
            while len(window) > 2 * workers or (window and p is pairs[-1]):
                (bi, bj), fut = window.popleft()
                r_i, k_i, r_j, k_j = fut.result()
                push(bi, r_i, k_i)
                push(bj, r_j, k_j)
                if bj == nb - 1:                                    # row block bi is complete
                    finish(bi)
                    if bi == nb - 2:
                        finish(bj)
    main = time.thread_time() - main0
    # Results in the original row order, assembled only now: numpy backs big arrays with huge pages,
    # so scattering rows into `idx` while the running keys were alive would make all of it resident.
    idx = np.empty((n, k), np.int32)
    scores = np.empty((n, k), np.float32) if return_scores else None
    for b in range(nb):
        rows = orig[bounds[b]:bounds[b + 1]]
        idx[rows] = done[b][0]
        if scores is not None:
            scores[rows] = done[b][1]
        done[b] = None
    redo = np.concatenate(redo)
    t0 = time.perf_counter()
    if len(redo):
        keys = _knn_rows_exact(xp, redo, orig, k)
        idx[orig[redo]] = _key_indices(keys)
        if scores is not None:
            scores[orig[redo]] = _key_scores(keys)
    if stats is not None:
        stats.update(acc, blocks=nb, block_rows=int(np.diff(bounds).max()), workers=workers,
                     candidates_per_row=acc["candidates"] / n, redo_rows=int(len(redo)),
                     redo_s=time.perf_counter() - t0, matmul_cpu_s=sum(cpu["mm"]),
                     select_cpu_s=sum(cpu["tile"]) - sum(cpu["mm"]) + main)
    return idx, scores


def knn_self(emb: np.ndarray, k: int | float, *, method: str = DEFAULT_METHOD, index: str = "flat",
             nlist: int | None = None, nprobe: int = 32, chunk: int = 4096, threads: int | None = None,
             return_scores: bool = False, normalized: bool = False, seed: int = 0,
             source: str | os.PathLike | None = None, stats: dict | None = None):
    """Top-k cosine neighbours of every row among the other rows (self excluded by index).

    emb: [N, D]; k: int or fraction of N (`resolve_k`). method:
      "blocked" (exact; "torch" is its former name): symmetric blocked matmul with a running top-k
        (`_knn_blocked`); equal scores are ordered by the smaller index; `threads` worker threads
        (default: the usable cores); `chunk` caps the rows of a matmul tile; `seed` shuffles the
        rows into blocks (the result does not depend on it); `stats`, a dict, gets timings/counters.
      "faiss": IndexFlatIP (exact; ties in faiss's order), or IndexIVFFlat with nlist ~ sqrt(N) and
        `nprobe` lists probed when index="ivf"; `chunk` queries at a time, `threads` OpenMP threads.
    Returns int32 [N, k] (most similar first), and float32 [N, k] cosine scores if return_scores.
    """
    xn = np.ascontiguousarray(emb, np.float32) if normalized else l2_normalize(emb, source)
    n = xn.shape[0]
    k = resolve_k(k, n)
    if method == "faiss":
        out_i, out_s = _knn_faiss(xn, k, index, nlist, nprobe, chunk, threads, seed, return_scores)
    elif method in ("blocked", "torch"):
        if index != "flat":
            raise ValueError(f"method={method!r} is exact; index must be 'flat'")
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        perm = np.random.default_rng(seed).permutation(n)           # random blocks: see _knn_blocked
        xp = xn[perm]
        del xn                                                      # one [N, D] copy, rows shuffled
        out_i, out_s = _knn_blocked(xp, perm, k, chunk=min(chunk, TILE_ROWS),
                                    workers=int(threads or cores or 1), return_scores=return_scores,
                                    stats=stats)
    else:
        raise ValueError(f"method must be 'blocked' (alias 'torch') or 'faiss', got {method!r}")
    return (out_i, out_s) if return_scores else out_i


# ---------------------------------------------------------------------------------------- tables
@dataclass(frozen=True)
class NeighbourTable:
    """indices: int32 [N, k], row i = item i's neighbours (manifest order), most similar first."""
    indices: np.ndarray
    meta: dict
    path: Path | None = None

    @property
    def n(self) -> int:
        return int(self.indices.shape[0])

    @property
    def k(self) -> int:
        return int(self.indices.shape[1])

    def head(self, k: int) -> np.ndarray:
        """The top-k sub-table int32 [N, k] (rows are sorted, so a smaller k is a prefix: Table 9)."""
        if not 1 <= k <= self.k:
            raise ValueError(f"k={k} outside [1, {self.k}] for this table")
        return np.ascontiguousarray(self.indices[:, :k])


def check_table(indices: np.ndarray, source: str | os.PathLike | None = None) -> np.ndarray:
    """Validate a neighbour table: int [N, k], 1 <= k < N, entries in [0, N), never the row itself."""
    src = source if source is not None else "<neighbour table>"
    t = np.asarray(indices)
    if t.ndim != 2 or not np.issubdtype(t.dtype, np.integer):
        raise DataError(src, f"expected an integer [N, k] array, got {t.dtype} {t.shape}")
    n, k = t.shape
    if not 1 <= k < n:
        raise DataError(src, f"k={k} must satisfy 1 <= k < N={n}")
    bad = (t < 0) | (t >= n)
    if bad.any():
        r = int(np.flatnonzero(bad.any(1))[0])
        raise DataError(src, f"indices outside [0, {n}) (first in row {r})", row=r)
    selfs = (t == np.arange(n)[:, None]).any(1)
    if selfs.any():
        r = int(np.flatnonzero(selfs)[0])
        raise DataError(src, f"row {r} lists the item itself as its neighbour", row=r)
    return t.astype(np.int32, copy=False)


def _count_manifest_rows(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def table_paths(out_dir: str | os.PathLike, name: str) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    return out_dir / f"{name}.npy", out_dir / f"{name}.json"


def save_table(out_dir: str | os.PathLike, name: str, indices: np.ndarray, meta: dict) -> NeighbourTable:
    """Atomic write of `<name>.npy` (int32 [N, k]) then `<name>.json` (the metadata; written last, so a
    table with metadata is always complete)."""
    indices = check_table(indices, name)
    npy, js = table_paths(out_dir, name)
    import io
    buf = io.BytesIO()
    np.save(buf, indices, allow_pickle=False)
    atomic_write_bytes(npy, buf.getvalue())
    atomic_write_json(js, meta)
    return NeighbourTable(indices, meta, npy)


def load_table(path: str | os.PathLike) -> NeighbourTable:
    """Read `<name>.npy` and its `<name>.json`; DataError naming the file when either is unusable."""
    npy = Path(path).with_suffix(".npy")
    js = npy.with_suffix(".json")
    for p in (npy, js):
        if not p.exists():
            raise DataError(p, "missing (a neighbour table is a .npy plus its .json metadata)")
    try:
        meta = json.loads(js.read_text())
    except json.JSONDecodeError as e:
        raise DataError(js, f"not valid JSON ({e})") from e
    try:
        t = np.load(npy, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise DataError(npy, f"unreadable ({e})") from e
    t = check_table(t, npy)
    if meta.get("k") != t.shape[1] or meta.get("n") != t.shape[0]:
        raise DataError(js, f"metadata says n={meta.get('n')}, k={meta.get('k')} but {npy.name} "
                            f"is {t.shape}")
    return NeighbourTable(t, meta, npy)


_KEY_FIELDS = ("format", "embedder", "modality", "k", "n", "manifest_sha256", "embedding_sha256",
               "index", "nlist", "nprobe")


def load_or_build(out_dir: str | os.PathLike, emb: np.ndarray, *, manifest_path: str | os.PathLike,
                  embedder: str, modality: str, k: int | float, name: str | None = None,
                  method: str = DEFAULT_METHOD, index: str = "flat", nlist: int | None = None,
                  nprobe: int = 32, chunk: int = 4096, threads: int | None = None,
                  log=print) -> NeighbourTable:
    """The neighbour table of `emb` (rows in the manifest's order), reused from `out_dir` when its
    metadata matches (embedder, modality, k, N, manifest and embedding hashes, index settings),
    rebuilt and saved otherwise. File name: `<embedder>_<modality>_k<k>` unless `name` is given."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    manifest_path = Path(manifest_path)
    if not manifest_path.exists():
        raise DataError(manifest_path, "manifest not found")
    emb = check_embeddings(emb, f"{embedder}/{modality} embeddings")
    n = emb.shape[0]
    n_manifest = _count_manifest_rows(manifest_path)
    if n_manifest != n:
        raise DataError(manifest_path, f"has {n_manifest} items but the {embedder}/{modality} "
                                       f"embeddings have {n} rows")
    k_abs = resolve_k(k, n)
    name = name or f"{embedder}_{modality}_k{k_abs}"
    if index == "ivf":
        nlist = int(nlist or max(1, round(np.sqrt(n))))
    key = {"format": TABLE_FORMAT, "embedder": embedder, "modality": modality, "k": k_abs, "n": n,
           "manifest_sha256": file_sha256(manifest_path), "embedding_sha256": embedding_sha256(emb),
           "index": index, "nlist": nlist if index == "ivf" else None,
           "nprobe": nprobe if index == "ivf" else None}
    npy, js = table_paths(out_dir, name)
    if npy.exists() and js.exists():
        try:
            old = load_table(npy)
            if all(old.meta.get(f) == key[f] for f in _KEY_FIELDS):
                log(f"[mining] reusing {npy} (metadata matches)")
                return old
            changed = [f for f in _KEY_FIELDS if old.meta.get(f) != key[f]]
            log(f"[mining] rebuilding {npy}: {', '.join(changed)} changed")
        except DataError as e:
            log(f"[mining] rebuilding {npy}: {e}")
    t0 = time.time()
    idx = knn_self(emb, k_abs, method=method, index=index, nlist=nlist, nprobe=nprobe, chunk=chunk,
                   threads=threads, source=f"{embedder}/{modality} embeddings")
    meta = {**key, "k_requested": k, "embedding_dim": int(emb.shape[1]), "method": method,
            "manifest": str(manifest_path), "build_s": round(time.time() - t0, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git_commit": git_commit()}
    log(f"[mining] built {npy}: N={n}, k={k_abs}, {meta['build_s']} s")
    return save_table(out_dir, name, idx, meta)


# ---------------------------------------------------------------------------- conceptual positives
class ConceptualPositives:
    """Draws v_conc and a_conc (paper §3): for sample i, one index uniform over row i of the image
    table and one uniform over row i of the audio table (indices into the same manifest order).

    `ConceptualPositives(image_table, audio_table, rng)` with tables as NeighbourTable or int [N, k]
    arrays (k may differ between modalities); rng: a numpy Generator or a seed.
    `cp(i)` -> (image_index, audio_index); `cp.batch(indices)` -> two int64 [B] arrays;
    `cp.at(i, epoch)` is the deterministic draw for (seed, epoch, i), independent of worker order.
    """

    def __init__(self, image_table, audio_table, rng: np.random.Generator | int | None = None):
        it = image_table.indices if isinstance(image_table, NeighbourTable) else image_table
        at = audio_table.indices if isinstance(audio_table, NeighbourTable) else audio_table
        self.image = check_table(it, "image table")
        self.audio = check_table(at, "audio table")
        if self.image.shape[0] != self.audio.shape[0]:
            raise ValueError(f"image table has {self.image.shape[0]} rows, audio table "
                             f"{self.audio.shape[0]}: both must follow the same manifest")
        self.seed = rng if isinstance(rng, (int, np.integer)) else None
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)

    def __len__(self) -> int:
        return self.image.shape[0]

    def batch(self, indices, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        rng = rng or self.rng
        i = np.asarray(indices, dtype=np.int64)                           # [B]
        ci = rng.integers(0, self.image.shape[1], size=i.shape)
        ca = rng.integers(0, self.audio.shape[1], size=i.shape)
        return self.image[i, ci].astype(np.int64), self.audio[i, ca].astype(np.int64)

    def __call__(self, i: int) -> tuple[int, int]:
        v, a = self.batch([i])
        return int(v[0]), int(a[0])

    def at(self, i: int, epoch: int = 0) -> tuple[int, int]:
        v, a = self.batch([i], np.random.default_rng([self.seed or 0, int(epoch), int(i)]))
        return int(v[0]), int(a[0])


# ------------------------------------------------------------------------------------------ quality
def _labels_array(labels) -> np.ndarray:
    return np.array([None if lab is None else str(lab) for lab in labels], dtype=object)


def precision_at_k(table, labels, k: int | None = None) -> float:
    """Mean over anchors of the fraction of their first k neighbours sharing the anchor's label
    (anchors without a label are skipped; a neighbour without a label counts as a miss)."""
    t = table.indices if isinstance(table, NeighbourTable) else np.asarray(table)
    lab = _labels_array(labels)
    if len(lab) != t.shape[0]:
        raise ValueError(f"{len(lab)} labels for a table of {t.shape[0]} rows")
    t = t[:, : (k or t.shape[1])]
    has = np.array([x is not None for x in lab])
    codes = np.unique(lab[has], return_inverse=True)[1]
    code = np.full(len(lab), -1)
    code[has] = codes
    same = (code[t] == code[:, None]) & has[:, None]                     # [N, k]
    return float(same[has].mean()) if has.any() else float("nan")


def random_precision(labels) -> float:
    """Expected precision of neighbours drawn uniformly from the other items: the random floor,
    mean over labelled anchors of (items with the anchor's label - 1) / (N - 1)."""
    lab = _labels_array(labels)
    has = np.array([x is not None for x in lab])
    if not has.any() or len(lab) < 2:
        return float("nan")
    vals, counts = np.unique(lab[has], return_counts=True)
    per = dict(zip(vals, counts))
    return float(np.mean([(per[x] - 1) / (len(lab) - 1) for x in lab[has]]))


def neighbour_quality(tables: dict, labels, cutoffs=(1, 10, None)):
    """Precision@k of same-label neighbours for each (embedder, modality) -> table entry, at each
    cut-off (None = the table's own k), beside the random floor. Returns a pandas DataFrame with
    columns embedder, modality, k, precision, random, lift."""
    import pandas as pd
    floor = random_precision(labels)
    rows = []
    for (embedder, modality), table in tables.items():
        t = table.indices if isinstance(table, NeighbourTable) else np.asarray(table)
        for c in sorted({min(c or t.shape[1], t.shape[1]) for c in cutoffs}):
            p = precision_at_k(t, labels, c)
            rows.append({"embedder": embedder, "modality": modality, "k": c, "precision": p,
                         "random": floor, "lift": p / floor if floor > 0 else float("nan")})
    return pd.DataFrame(rows, columns=["embedder", "modality", "k", "precision", "random", "lift"])


def anchor_neighbours(tables: dict, ids, labels, anchors=4, n_neighbours: int = 5, seed: int = 0):
    """For a few anchors (a count, drawn with `seed`, or a list of row indices), their first
    `n_neighbours` neighbours in each table of `tables` (modality or name -> table): a long pandas
    DataFrame with anchor, anchor_id, anchor_label, table, rank, neighbour, neighbour_id,
    neighbour_label, same (the notebook draws the pictures and spectrograms from the ids)."""
    import pandas as pd
    lab = _labels_array(labels)
    n = len(ids)
    if isinstance(anchors, (int, np.integer)):
        anchors = np.sort(np.random.default_rng(seed).choice(n, min(int(anchors), n), replace=False))
    rows = []
    for a in anchors:
        for name, table in tables.items():
            t = table.indices if isinstance(table, NeighbourTable) else np.asarray(table)
            if t.shape[0] != n:
                raise ValueError(f"table {name!r} has {t.shape[0]} rows for {n} ids")
            for r, j in enumerate(t[a, :n_neighbours]):
                rows.append({"anchor": int(a), "anchor_id": ids[a], "anchor_label": lab[a],
                             "table": name, "rank": r + 1, "neighbour": int(j),
                             "neighbour_id": ids[j], "neighbour_label": lab[j],
                             "same": lab[a] is not None and lab[a] == lab[j]})
    return pd.DataFrame(rows)
