"""The operators' taps in the compiled kernel's layout (:mod:`avsl_core.metrics_kernel`): :class:`KernelTaps`,
built by :func:`kernel_taps` from a ``_FastOp`` of :mod:`avsl_core.metrics_fast`, or by
:func:`identity_taps` for given fast values. numpy only.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class KernelTaps(NamedTuple):
    """The fast operator and the exact one in the kernel's layout (:func:`kernel_taps`)."""
    fast: tuple   # (uwt, jlo, rh_idx, rh_w, rh_n): U_w.T [w + W, S] float32, its columns reversed within each 8
                  # when S % 8 == 0 (the pass's layout), W zero rows appended; per block of 32 columns the first
                  # source column of a non-zero weight; U_h's non-zero float32 taps [S, T], padded with zeros
    tags: tuple   # (T zeros, W zeros): the row taps (2, or 4 for the cubic kernels) and the source columns per
                  # block of the column stage (a power of two ≥ 4) that the kernel is compiled for
    exact: tuple  # (eh_idx, eh_w, eh_n, ew_idx, ew_w, ew_n): U_h's and U_w's non-zero float64 taps


def _taps(u: np.ndarray, T: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Non-zero entries of each row of a matrix u [S, n]: indices [S, T] int64, weights [S, T] (u's dtype),
    padded with index 0 and weight 0 (T: at least the most of any row), counts [S] int64 (≥ 1: an all-zero
    row keeps one zero tap)."""
    nz = u != 0
    cnt = np.maximum(nz.sum(1), 1)
    T = max(int(cnt.max()), T or 0)
    idx = np.zeros((len(u), T), np.int64)
    wt = np.zeros((len(u), T), u.dtype)
    for x in range(len(u)):
        j = np.flatnonzero(nz[x])
        idx[x, :len(j)] = j
        wt[x, :len(j)] = u[x, j]
    return idx, wt, cnt.astype(np.int64)


def _first_rows(ut: np.ndarray) -> tuple[np.ndarray, int]:
    """Per block of 32 columns of ut [n, S]: the first row with a non-zero entry (0 when none), and the most
    rows any block spans from there to its last non-zero row."""
    lo, span = [], 1
    for x0 in range(0, ut.shape[1], 32):
        j = np.flatnonzero((ut[:, x0:x0 + 32] != 0).any(1))
        lo.append(j.min() if len(j) else 0)
        span = max(span, j.max() - j.min() + 1 if len(j) else 1)
    return np.array(lo, np.int64), int(span)


def kernel_taps(op) -> KernelTaps:
    """:class:`KernelTaps` of a ``_FastOp`` (op.uwt32, op.uh32: the fast operator; op.uh, op.uw: the exact one)."""
    uwt = op.uwt32.numpy()  # [w, S] float32
    S = uwt.shape[1]
    if S % 8 == 0:
        uwt = uwt[:, np.arange(S) ^ 7]
    jlo, span = _first_rows(uwt)
    W = 1 << max(2, (span - 1).bit_length())
    uwt = np.concatenate([uwt, np.zeros((W, S), np.float32)])
    n_taps = int(np.maximum((op.uh32.numpy() != 0).sum(1), 1).max())
    if n_taps > 4:
        raise ValueError(f"metrics_kernel: U_h has rows of {n_taps} non-zero taps; the pass takes at most 4")
    rows = _taps(op.uh32.numpy(), 2 if n_taps <= 2 else 4)
    return KernelTaps((uwt, jlo) + rows, ((0,) * rows[0].shape[1], (0,) * W), _taps(op.uh) + _taps(op.uw))


def identity_taps(S: int) -> KernelTaps:
    """:class:`KernelTaps` whose fast values are given ones (median_maps' ``ui``: row y of the map is row y of
    c, weight 1); no column stage and no exact operator."""
    rows = _taps(np.eye(S, dtype=np.float32), 2)
    none_i, none_f = np.zeros((1, 1), np.int64), np.zeros((1, 1))
    return KernelTaps((np.zeros((4, S), np.float32), np.zeros(0, np.int64)) + rows, ((0, 0), (0, 0, 0, 0)),
                      (none_i, none_f, np.zeros(1, np.int64), none_i, none_f, np.zeros(1, np.int64)))
