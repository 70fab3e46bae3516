"""Conceptual positives (paper §3, "Obtaining conceptual positive samples"): self k-NN neighbour tables.

The paper computes, for every training pair, the cosine similarity to all other training samples with a
pretrained image encoder (and, separately, a pretrained audio encoder), keeps the top-k (k = 1000 of
144K), and at each step draws one of the k uniformly as v_conc (resp. a_conc). This module does the
search once, before training:

    embeddings [N, D] --l2-normalise--> faiss IndexFlatIP (or IVF) --top-(k+1), drop self--> int32 [N, k]

Row i of a table holds the indices (into the same manifest order) of item i's k nearest neighbours,
most similar first, never i itself (excluded by index, so exact duplicates are handled).
Tables are saved as `<name>.npy` with a `<name>.json` metadata file (embedder, modality, k, manifest and
embedding hashes, git commit) and reused by `load_or_build` when the metadata matches.
Embedders (what produces the [N, D] arrays) live in `avsl_core.embedders`; `embedders.mine_positives`
runs the whole step (train or load the analogues, embed, build the tables).

Speed (benchmarks/bench_knn.py, N = 144,000, D = 512, k = 1000, 2 threads): exact faiss IndexFlatIP is
the faster exact method (1.55x chunked torch matmul + topk on the same data, identical tables); its
speed depends on the OpenBLAS kernel faiss's bundled OpenBLAS picks (OPENBLAS_CORETYPE=Haswell was
1.35x faster than the auto-detected "Zen"). The IVF option (nlist ~ sqrt(N)) scans its lists without
BLAS, so on a CPU it pays off only when nprobe / nlist is ~1 % or less (millions of items); at 144K
with nprobe = 32 it was no faster than the flat index and kept 58 % of the exact top-1000.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avsl_core.errors import DataError
from avsl_core.provenance import atomic_write_bytes, atomic_write_json, file_sha256, git_commit

PAPER_TRAIN_SIZE = 144_000                 # VGGSound-144K / SoundNet-Flickr-144K (paper §4.1)
PAPER_K = 1000                             # the paper's default k (Table 9: best)
PAPER_TABLE9_K = (10, 30, 100, 500, 1000)  # Table 9 columns ("k in k-NN")
DEFAULT_METHOD = "faiss"                   # faster than chunked torch here: benchmarks/bench_knn.py
MODALITIES = ("image", "audio")
TABLE_FORMAT = 1
TORCH_CHUNK_BYTES = 512 << 20              # method="torch": at most this much for one [chunk, N] block


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


def knn_self(emb: np.ndarray, k: int | float, *, method: str = DEFAULT_METHOD, index: str = "flat",
             nlist: int | None = None, nprobe: int = 32, chunk: int = 4096, threads: int | None = None,
             return_scores: bool = False, normalized: bool = False, seed: int = 0,
             source: str | os.PathLike | None = None):
    """Top-k cosine neighbours of every row among the other rows (self excluded by index).

    emb: [N, D]; k: int or fraction of N (`resolve_k`). method: "faiss" (IndexFlatIP, or IndexIVFFlat
    with nlist ~ sqrt(N) and `nprobe` lists probed when index="ivf") or "torch" (chunked matmul + topk,
    exact). Queries run `chunk` rows at a time, so extra memory is O(chunk * (k + N)) for torch and
    O(chunk * k) for faiss beyond the [N, D] index and the [N, k] result.
    Returns int32 [N, k] (most similar first), and float32 [N, k] cosine scores if return_scores.
    """
    xn = np.ascontiguousarray(emb, np.float32) if normalized else l2_normalize(emb, source)
    n = xn.shape[0]
    k = resolve_k(k, n)
    kk = k + 1
    out_i = np.empty((n, k), np.int32)
    out_s = np.empty((n, k), np.float32) if return_scores else None
    if method == "faiss":
        import faiss
        if threads:
            faiss.omp_set_num_threads(int(threads))
        ix = _faiss_index(xn, index, nlist, nprobe, seed)
        search = lambda q: ix.search(q, kk)[::-1]                       # -> (I [B, k+1], D)
    elif method == "torch":
        import torch
        if index != "flat":
            raise ValueError("method='torch' is exact; index must be 'flat'")
        if threads:
            torch.set_num_threads(int(threads))
        xt = torch.from_numpy(xn)
        chunk = max(1, min(chunk, TORCH_CHUNK_BYTES // (4 * n)))     # sims block [chunk, N] bounded

        def search(q):
            with torch.no_grad():
                sims = torch.from_numpy(q) @ xt.T                         # [B, N]
                s, i = torch.topk(sims, kk, dim=1)                        # [B, k+1] sorted
            return i.numpy(), s.numpy()
    else:
        raise ValueError(f"method must be 'faiss' or 'torch', got {method!r}")
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        i_, s_ = search(xn[a:b])
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
