"""Similarities and the multi-positive contrastive loss of the paper (SPEC §1, paper §3.1–3.4).

* `s_L`  — localization similarity, Eq. 3: mean over positions of cos(V[:, x, y], a) (M = all ones);
  `pooling="max"` (EZ-VSL's MIL max) and `"topk"` (mean of the top fraction) are named variants.
* `s_A`  — alignment similarity, Eq. 4: cos(p_v(avg V), p_a(a)).
* `info_nce` — cross-modal InfoNCE, Eq. 2 (symmetric form as in EZ-VSL/SLAVC: sum of both directions).
* `multi_positive_loss` — Eq. 5: for each (v_i ∈ V, a_j ∈ A) pair, InfoNCE on s_L plus InfoNCE on s_A,
  averaged over the active pairs. The negatives of pair (v_i, a_j) for sample b are the a_j-view audios
  of the other samples in the batch (the off-diagonal of the [B, B] similarity matrix).
  The Table 8 switches pick the pairs/terms: `semantic` adds the *_conc views, `multi_view` the *_aug
  views, `feature_alignment` the s_A term. All on = row A (9 pairs, both terms); all off = row H
  (the single (v, a) pair, s_L only).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

POOLINGS = ("mean", "max", "topk")
VISION_VIEWS = ("v", "v_aug", "v_conc")
AUDIO_VIEWS = ("a", "a_aug", "a_conc")


@dataclass(frozen=True)
class LossConfig:
    """Eq. 5 and its Table 8 ablation switches."""

    tau: float = 0.07                 # temperature τ (paper §4.1)
    symmetric: bool = False           # add the audio→image direction (EZ-VSL/SLAVC form)
    pooling: str = "mean"             # s_L pooling over positions: "mean" (paper, Eq. 3) | "max" | "topk"
    topk_frac: float = 0.25           # fraction of positions averaged by "topk"
    semantic: bool = True             # conceptual positives v_conc, a_conc (Table 8 "semantic")
    multi_view: bool = True           # augmented positives v_aug, a_aug (Table 8 "multi-view")
    feature_alignment: bool = True    # the s_A term (Table 8 "feature alignment")

    def __post_init__(self):
        if not self.tau > 0:
            raise ValueError(f"LossConfig.tau: expected > 0, got {self.tau!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"LossConfig.pooling: expected one of {POOLINGS}, got {self.pooling!r}")
        if not 0 < self.topk_frac <= 1:
            raise ValueError(f"LossConfig.topk_frac: expected in (0, 1], got {self.topk_frac!r}")

    def to_dict(self) -> dict:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict) -> "LossConfig":
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"LossConfig: unknown field(s) {unknown}; expected a subset of "
                             f"{sorted(cls.__dataclass_fields__)}")
        return cls(**d)


def similarity_maps(v_map: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """sim[i, j, x, y] = cos(V_i[:, x, y], a_j): v_map [B, c, h, w], a [B', c] -> [B, B', h, w].

    Computed in float32 even under autocast (a bf16 cosine divided by τ = 0.07 is off by ~0.05).
    """
    with torch.autocast(v_map.device.type, enabled=False):
        v = F.normalize(v_map.float(), dim=1)
        a = F.normalize(a.float(), dim=1)
        return torch.einsum("ichw,jc->ijhw", v, a)


def pool_positions(sim: torch.Tensor, pooling: str = "mean", topk_frac: float = 0.25) -> torch.Tensor:
    """Pool [..., h, w] maps over positions -> [...].

    "mean": 1/|M| Σ_{xy∈M} with M = all ones (Eq. 3); "max": max over positions (EZ-VSL MIL);
    "topk": mean of the k = ceil(topk_frac · h·w) largest values.
    """
    flat = sim.flatten(-2)                                           # [..., h*w]
    if pooling == "mean":
        return flat.mean(-1)
    if pooling == "max":
        return flat.amax(-1)
    if pooling == "topk":
        k = max(1, min(flat.shape[-1], math.ceil(topk_frac * flat.shape[-1] - 1e-9)))
        return flat.topk(k, dim=-1).values.mean(-1)
    raise ValueError(f"pooling: expected one of {POOLINGS}, got {pooling!r}")


def s_L(v_map: torch.Tensor, a: torch.Tensor, pooling: str = "mean", topk_frac: float = 0.25) -> torch.Tensor:
    """Localization similarity (Eq. 3) between every image and every audio: [B, c, h, w], [B', c] -> [B, B']."""
    return pool_positions(similarity_maps(v_map, a), pooling, topk_frac)


def s_A(v_emb: torch.Tensor, a_emb: torch.Tensor) -> torch.Tensor:
    """Alignment similarity (Eq. 4): cos(p_v(avg V_i), p_a(a_j)) from head outputs [B, d], [B', d] -> [B, B']."""
    with torch.autocast(v_emb.device.type, enabled=False):   # float32, as in similarity_maps
        return F.normalize(v_emb.float(), dim=1) @ F.normalize(a_emb.float(), dim=1).T


def info_nce(logits: torch.Tensor, tau: float = 0.07, symmetric: bool = False) -> torch.Tensor:
    """Cross-modal InfoNCE (Eq. 2) on a [B, B] similarity matrix whose diagonal holds the positives.

    Row i: -log softmax(logits[i] / τ)[i], averaged over i (image→audio). `symmetric` adds the same
    over columns (audio→image), summed as in EZ-VSL/SLAVC (`CE(S) + CE(Sᵀ)`).
    """
    if logits.ndim != 2 or logits.shape[0] != logits.shape[1]:
        raise ValueError(f"info_nce: expected a square [B, B] matrix, got {tuple(logits.shape)}")
    z = logits.float() / tau
    target = torch.arange(z.shape[0], device=z.device)
    loss = F.cross_entropy(z, target)
    if symmetric:
        loss = loss + F.cross_entropy(z.T, target)
    return loss


def active_pairs(cfg: LossConfig) -> list[tuple[str, str]]:
    """The (vision_view, audio_view) pairs Eq. 5 sums over under the Table 8 switches, in a fixed order."""
    vis, aud = ["v"], ["a"]
    if cfg.multi_view:
        vis.append("v_aug")
        aud.append("a_aug")
    if cfg.semantic:
        vis.append("v_conc")
        aud.append("a_conc")
    return [(vi, aj) for vi in vis for aj in aud]


def multi_positive_loss(vision: Mapping[str, Mapping[str, torch.Tensor]],
                        audio: Mapping[str, Mapping[str, torch.Tensor]],
                        cfg: LossConfig = LossConfig()) -> dict[str, torch.Tensor]:
    """Eq. 5, averaged over the active pairs: mean_{(v_i, a_j)} [InfoNCE(s_L) + InfoNCE(s_A)].

    vision: {"v": out, "v_aug": out, "v_conc": out}, each with "v_map" [B,c,h,w] (and "v_emb" [B,d]
    when feature_alignment); audio: {"a": ..., "a_aug": ..., "a_conc": ...}, each with "a" [B,c]
    (and "a_emb" [B,d]). `AVModel.forward` outputs carry all four keys, so a trainer can pass
    `{"v": out0, "v_aug": out1, ...}` and `{"a": out0, "a_aug": out1, ...}`. Views a config does not
    use may be absent.

    Returns {"loss": total, "loss_L": mean s_L term, "loss_A": mean s_A term (0 when off),
    "L/<vi>,<aj>": each s_L term, "A/<vi>,<aj>": each s_A term}; only "loss" carries the graph
    that matters, the others are for logging.
    """
    pairs = active_pairs(cfg)
    for name, views, key in (("vision", vision, "v"), ("audio", audio, "a")):
        needed = sorted({p[0] if key == "v" else p[1] for p in pairs})
        missing = [v for v in needed if v not in views]
        if missing:
            raise KeyError(f"multi_positive_loss: {name} views {missing} are required by the config "
                           f"(semantic={cfg.semantic}, multi_view={cfg.multi_view}); got {sorted(views)}")
    out: dict[str, torch.Tensor] = {}
    terms_l, terms_a = [], []
    for vi, aj in pairs:
        lv = info_nce(s_L(vision[vi]["v_map"], audio[aj]["a"], cfg.pooling, cfg.topk_frac), cfg.tau, cfg.symmetric)
        out[f"L/{vi},{aj}"] = lv
        terms_l.append(lv)
        if cfg.feature_alignment:
            la = info_nce(s_A(vision[vi]["v_emb"], audio[aj]["a_emb"]), cfg.tau, cfg.symmetric)
            out[f"A/{vi},{aj}"] = la
            terms_a.append(la)
    loss_l = torch.stack(terms_l).mean()
    loss_a = torch.stack(terms_a).mean() if terms_a else torch.zeros_like(loss_l)
    out["loss_L"] = loss_l
    out["loss_A"] = loss_a
    out["loss"] = loss_l + loss_a   # = mean over pairs of (L term + A term)
    return out
