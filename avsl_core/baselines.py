"""Baselines trained in the same framework as the paper's method (SPEC §5, issue 6).

Four published methods, each a loss (and where needed a small model addition) on the *same* encoders
(`models.AVModel`'s ResNet18 trunks, from scratch), data, trainer and evaluator as ours:

* ``attention10k`` — Senocak et al. CVPR'18: attention α = softmax over positions of cos(V, a)/τ_att,
  attended vector z = Σ α V, contrastive between z and a. The original's triplet-style loss (softmax
  over the distances to one positive and one negative sound) is replaced by InfoNCE over the batch
  (τ = 0.07), so all four baselines and ours use in-batch negatives. Map: α (or the cosine map).
* ``lvs`` — Chen et al. CVPR'21 (notes/peer_codebases.md §3.1, §2.3): soft tri-map ε = 0.65, ε₂ = 0.4,
  τ = 0.03; logits [positive | easy negatives (other audios) | hard negative (own background)] / 0.07,
  cross-entropy with target 0. Map: the cosine map.
* ``ezvsl`` — Mo & Morgado ECCV'22 (notes §3.2): multiple-instance max over positions of cos/τ,
  τ = 0.03, CE(S) + CE(Sᵀ); 1×1-conv / linear projections of width `dim` on the trunks. Map: the
  cosine map. "with / without OGL" is an evaluation choice (`metrics.ogl_relative`), nothing here.
* ``slavc`` — Mo & Morgado NeurIPS'22 (notes §3.3; stoneMo/SLAVC `model.py`): Dropout(0.9) on the
  visual trunk map, two projection pairs, momentum (EMA, m = 0.999) copies of trunks and projections
  giving the targets, loss CE(a2i) + CE(i2a) with
  ``i2a[n, m] = log Σ_hw softmax_m(<v¹_n, a¹ᵗ_m>/τ) · softmax_hw(<v², a²ᵗ_m>/τ)`` (a2i: target image,
  online audio). Map: mean of the two heads' cosines (online encoders, as the shipped test scripts).

Every map is returned as a cosine in [-1, 1] (`map_kind = "cosine"`), not the peers' cos/τ: the
factor 1/τ changes nothing after min-max, and SLAVC's absolute score (S + 1/τ)/(2/τ) = (cos + 1)/2 is
`metrics.absolute_av_score(map)` with `tau=None`. Attention10k's α (`map_kind = "attention"`) sums to 1.

Design: a method is an ``nn.Module`` wrapping one ``AVModel`` and adapting it *in place*: the s_A heads
p_v, p_a become identities (no baseline has them), and EZ-VSL / SLAVC install their projections as
``vision_proj`` / ``audio_proj`` (SLAVC's momentum copies go under ``model.momentum``). All parameters
therefore live in the AVModel that the trainer optimises, checkpoints and wraps in DDP, and
``AVModel.forward`` touches every trainable one. The losses are pure functions of tensors below.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from avsl_core.errors import DataError
from avsl_core.losses import info_nce, similarity_maps
from avsl_core.models import AVModel, ModelConfig


def _f32(device: torch.device):
    """Loss arithmetic in float32 even under bf16 autocast (cos/0.03 in bf16 is off by ~0.3)."""
    return torch.autocast(device.type, enabled=False)


# ============================================================================== pure losses
def attention_pool(v_map: torch.Tensor, a: torch.Tensor, att_tau: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Senocak'18 attention: α_i = softmax_xy(cos(V_i[:, x, y], a_i)/att_tau), z_i = Σ_xy α_i V_i[:, x, y].

    v_map [B, c, h, w] (not normalised; pooled as is), a [B, c] -> (α [B, h, w], z [B, c]).
    """
    with _f32(v_map.device):
        v = v_map.float()
        cos = torch.einsum("bchw,bc->bhw", F.normalize(v, dim=1), F.normalize(a.float(), dim=1))
        alpha = torch.softmax(cos.flatten(1) / att_tau, dim=1).view_as(cos)      # [B, h, w]
        z = torch.einsum("bhw,bchw->bc", alpha, v)                                # [B, c]
    return alpha, z


def attention10k_loss(v_map: torch.Tensor, a: torch.Tensor, tau: float = 0.07, att_tau: float = 1.0,
                      symmetric: bool = False) -> dict[str, torch.Tensor]:
    """InfoNCE between the attended visual vector z_i (attention from its own audio) and every audio:
    logits[i, j] = cos(z_i, a_j)/τ, CE over j with target i (plus over i when `symmetric`)."""
    alpha, z = attention_pool(v_map, a, att_tau)
    with _f32(v_map.device):
        sim = F.normalize(z, dim=1) @ F.normalize(a.float(), dim=1).T            # [B, B]
        loss = info_nce(sim, tau, symmetric)
    return {"loss": loss, "pos_sim": sim.diagonal().mean().detach()}


def lvs_logits(v_map: torch.Tensor, a: torch.Tensor, eps: float = 0.65, eps2: float = 0.4, tau: float = 0.03,
               temperature: float = 0.07, trimap: bool = True, hard_negatives: bool = True) -> torch.Tensor:
    """LVS logits [B, 1 + B (+ 1)] (notes §3.1): with A_ij = cos map of image i and audio j,

    * Pos = σ((A_ii − ε)/τ), Neg = 1 − σ((A_ii − ε₂)/τ) (tri-map; `trimap=False`: Neg = 1 − Pos);
    * positive  = Σ Pos·A_ii / Σ Pos;
    * easy negs = Σ Pos_ij·A_ij / Σ Pos_ij for every audio j, with Pos_ij = σ((A_ij − ε)/τ), times
      (1 − 100·δ_ij): the peer's way of suppressing the diagonal (−99× the positive score; harmless as
      long as that score is ≥ 0, which holds for ReLU trunk features without a projection);
    * hard neg  = Σ Neg·A_ii / Σ Neg;
    all divided by `temperature` (0.07).
    """
    with _f32(v_map.device):
        A = similarity_maps(v_map, a).flatten(2)                               # [B, B, hw]
        b = A.shape[0]
        eye = torch.eye(b, device=A.device, dtype=A.dtype)
        A_ii = A.diagonal(dim1=0, dim2=1).T                                    # [B, hw]
        pos = torch.sigmoid((A_ii - eps) / tau)
        neg = 1 - torch.sigmoid((A_ii - (eps2 if trimap else eps)) / tau)
        sim_pos = (pos * A_ii).sum(-1) / pos.sum(-1)                           # [B]
        pos_all = torch.sigmoid((A - eps) / tau)
        sim_easy = (pos_all * A).sum(-1) / pos_all.sum(-1) * (1 - 100 * eye)   # [B, B]
        cols = [sim_pos[:, None], sim_easy]
        if hard_negatives:
            cols.append(((neg * A_ii).sum(-1) / neg.sum(-1))[:, None])         # [B, 1]
        return torch.cat(cols, dim=1) / temperature


def lvs_loss(v_map: torch.Tensor, a: torch.Tensor, eps: float = 0.65, eps2: float = 0.4, tau: float = 0.03,
             temperature: float = 0.07, trimap: bool = True, hard_negatives: bool = True) -> dict[str, torch.Tensor]:
    """Cross-entropy of `lvs_logits` with target 0 (the positive), averaged over the batch."""
    logits = lvs_logits(v_map, a, eps, eps2, tau, temperature, trimap, hard_negatives)
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    out = {"loss": F.cross_entropy(logits, target), "pos_sim": logits[:, 0].mean().detach() * temperature}
    if hard_negatives:
        out["hard_neg_sim"] = logits[:, -1].mean().detach() * temperature
    return out


def ezvsl_loss(v_map: torch.Tensor, a: torch.Tensor, tau: float = 0.03) -> dict[str, torch.Tensor]:
    """EZ-VSL (notes §3.2): S_ij = max_xy cos(V_i[:, x, y], a_j); CE(S/τ) + CE(Sᵀ/τ) (a sum)."""
    with _f32(v_map.device):
        s = similarity_maps(v_map, a).flatten(2).amax(-1)                     # [B, B]
        loss = info_nce(s, tau, symmetric=True)
    return {"loss": loss, "pos_sim": s.diagonal().mean().detach()}


def slavc_scores(v1: torch.Tensor, v2: torch.Tensor, a1: torch.Tensor, a2: torch.Tensor, tau: float) -> torch.Tensor:
    """log Σ_hw softmax_m(<v¹_n, a¹_m>/τ) · softmax_hw(<v²_n, a²_m>/τ): v* [B, d, h, w], a* [B, d] -> [B, B]
    (rows: images n, columns: audios m); features are L2-normalised here."""
    s1 = similarity_maps(v1, a1).flatten(2) / tau                              # [B, B, hw]
    s2 = similarity_maps(v2, a2).flatten(2) / tau
    return torch.log((torch.softmax(s1, dim=1) * torch.softmax(s2, dim=2)).sum(2))


def slavc_loss(v1: torch.Tensor, v2: torch.Tensor, a1: torch.Tensor, a2: torch.Tensor,
               v1_t: torch.Tensor, v2_t: torch.Tensor, a1_t: torch.Tensor, a2_t: torch.Tensor,
               tau: float = 0.03) -> dict[str, torch.Tensor]:
    """SLAVC (notes §3.3): i2a from online images and momentum ("_t") audios, a2i from momentum images
    and online audios; loss = CE(a2i) + CE(i2a), both over the audio index m with target n, as the peer."""
    with _f32(v1.device):
        i2a = slavc_scores(v1, v2, a1_t, a2_t, tau)
        a2i = slavc_scores(v1_t, v2_t, a1, a2, tau)
        target = torch.arange(i2a.shape[0], device=i2a.device)
        l_i2a, l_a2i = F.cross_entropy(i2a, target), F.cross_entropy(a2i, target)
    return {"loss": l_a2i + l_i2a, "i2a": l_i2a.detach(), "a2i": l_a2i.detach()}


# ============================================================================== configs
class _Hyper:
    """from_dict with unknown keys refused (naming them), to_dict."""

    @classmethod
    def from_dict(cls, d: Mapping | None):
        d = dict(d or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def _positive(self, *names):
        for n in names:
            if not getattr(self, n) > 0:
                raise ValueError(f"{type(self).__name__}.{n}: expected > 0, got {getattr(self, n)!r}")


@dataclass(frozen=True)
class Attention10kConfig(_Hyper):
    tau: float = 0.07            # InfoNCE temperature (ours, paper §4.1; the original used a triplet loss)
    att_tau: float = 1.0         # attention softmax temperature (original: softmax of the raw cosine)
    symmetric: bool = False      # add the audio→image direction
    map: str = "attention"       # test-time map: "attention" (α) | "cosine"

    def __post_init__(self):
        self._positive("tau", "att_tau")
        if self.map not in ("attention", "cosine"):
            raise ValueError(f"Attention10kConfig.map: expected 'attention' or 'cosine', got {self.map!r}")


@dataclass(frozen=True)
class LVSConfig(_Hyper):
    eps: float = 0.65            # ε, positive threshold (LVS / SSLalignment model_lvs.py)
    eps2: float = 0.4            # ε₂, negative threshold of the tri-map
    tau: float = 0.03            # sigmoid sharpness of the soft thresholds
    temperature: float = 0.07    # logits / 0.07
    trimap: bool = True
    hard_negatives: bool = True

    def __post_init__(self):
        self._positive("tau", "temperature")


@dataclass(frozen=True)
class EZVSLConfig(_Hyper):
    tau: float = 0.03            # EZ-VSL train.py default
    dim: int | None = None       # projection width (peer: 512); None = ModelConfig.c
    projection: bool = True      # peer: 1×1 conv on V, linear on a; False = raw trunks

    def __post_init__(self):
        self._positive("tau")


@dataclass(frozen=True)
class SLAVCConfig(_Hyper):
    tau: float = 0.03            # SLAVC train.py default
    dim: int | None = None       # width of each projection (peer: 512); None = ModelConfig.c
    dropout_img: float = 0.9     # scripts/train_vggsound144k.sh
    dropout_aud: float = 0.0
    momentum_img: float = 0.999  # EMA of vision trunk + projections (script: --m_img 0.999)
    momentum_aud: float = 0.999  # EMA of audio trunk + projections
    mom_eval: bool = False       # test-time map from the momentum encoders (test scripts: off)

    def __post_init__(self):
        self._positive("tau")
        for n in ("dropout_img", "dropout_aud", "momentum_img", "momentum_aud"):
            if not 0 <= getattr(self, n) <= 1:
                raise ValueError(f"SLAVCConfig.{n}: expected in [0, 1], got {getattr(self, n)!r}")


# ============================================================================== methods
def _init_projection(m: nn.Module) -> None:
    """EZ-VSL / SLAVC initialisation of their projections: kaiming-normal conv, trunc-normal(0.01) linear."""
    if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01)


class TwoProjections(nn.Module):
    """SLAVC's projection pair of one modality: dropout, then two independent 1×1 convs (vision) or
    linears (audio), concatenated along channels: [B, C(, h, w)] -> [B, 2·dim(, h, w)]."""

    def __init__(self, in_dim: int, dim: int, dropout: float, spatial: bool):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        make = (lambda: nn.Conv2d(in_dim, dim, 1)) if spatial else (lambda: nn.Linear(in_dim, dim))
        self.proj1, self.proj2 = make(), make()
        self.apply(_init_projection)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(x)
        return torch.cat([self.proj1(x), self.proj2(x)], dim=1)


class BaselineMethod(nn.Module):
    """A baseline around one AVModel (adapted in place; see the module docstring).

    forward_loss(batch) -> {"loss", <logged terms>}; batch holds "image" [B, 3, S, S] and "spec"
    [B, 1, F, T] (the trainer's keys; augmented / conceptual views are not used by any baseline).
    localization_map(images, specs) -> [B, h, w]; embed(images, specs) -> L2-normalised
    ([B, d], [B, d]); visual_objectness(images) -> [B, h, w]; after_step() after each optimizer step.
    """

    name = ""
    config_class: type = _Hyper
    map_kind = "cosine"          # values of localization_map: "cosine" in [-1, 1] | "attention" (sums to 1)

    def __init__(self, model_cfg: ModelConfig | None = None, model: AVModel | None = None, **hyper):
        super().__init__()
        self.hyper = self.config_class.from_dict(hyper)
        self.model = model if model is not None else AVModel(model_cfg or ModelConfig())
        self.model.p_v, self.model.p_a = nn.Identity(), nn.Identity()   # no s_A heads in any baseline
        self.adapt(self.model)

    def adapt(self, model: AVModel) -> None:
        """Install the method's model additions (projections, momentum copies)."""

    # -- training
    def forward_loss(self, batch: Mapping[str, torch.Tensor], net: nn.Module | None = None) -> dict[str, torch.Tensor]:
        """`net` is the (possibly DDP-wrapped) model to run forward through; default self.model."""
        out = (net or self.model)(batch["image"], batch["spec"])
        return self.loss_from_features(out["v_map"], out["a"], batch)

    def loss_from_features(self, v_map: torch.Tensor, a: torch.Tensor, batch: Mapping) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    forward = forward_loss

    def after_step(self) -> None:
        """Called after each optimizer step (SLAVC: momentum update)."""

    # -- evaluation
    def localization_map(self, images: torch.Tensor, specs: torch.Tensor) -> torch.Tensor:
        """cos(V_i[:, x, y], a_i): [B, h, w] in [-1, 1] (LVS / EZ-VSL test-time map up to 1/τ)."""
        return self.model.localization_map(images, specs)

    def embed_image(self, images: torch.Tensor) -> torch.Tensor:
        """Retrieval embedding: avg-pooled V (after the method's projection, if any), L2-normalised."""
        return F.normalize(self.model.encode_image(images).float().mean(dim=(2, 3)), dim=1)

    def embed_audio(self, specs: torch.Tensor) -> torch.Tensor:
        """Retrieval embedding: a (after the method's projection, if any), L2-normalised."""
        return F.normalize(self.model.encode_audio(specs).float(), dim=1)

    def embed(self, images: torch.Tensor, specs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.embed_image(images), self.embed_audio(specs)

    def visual_objectness(self, images: torch.Tensor) -> torch.Tensor:
        """Audio-blind floor: channel-mean of |trunk map| (before any projection / dropout), [B, h, w]."""
        return self.model.vision(images).float().abs().mean(dim=1)


class Attention10k(BaselineMethod):
    name, config_class = "attention10k", Attention10kConfig

    def __init__(self, model_cfg=None, model=None, **hyper):
        super().__init__(model_cfg, model, **hyper)
        self.map_kind = self.hyper.map

    def loss_from_features(self, v_map, a, batch):
        h = self.hyper
        return attention10k_loss(v_map, a, h.tau, h.att_tau, h.symmetric)

    def localization_map(self, images, specs):
        if self.hyper.map == "cosine":
            return super().localization_map(images, specs)
        alpha, _ = attention_pool(self.model.encode_image(images), self.model.encode_audio(specs), self.hyper.att_tau)
        return alpha


class LVS(BaselineMethod):
    name, config_class = "lvs", LVSConfig

    def loss_from_features(self, v_map, a, batch):
        return lvs_loss(v_map, a, **self.hyper.to_dict())


class EZVSL(BaselineMethod):
    name, config_class = "ezvsl", EZVSLConfig

    def adapt(self, model):
        if self.hyper.projection:
            cfg = model.config
            dim = self.hyper.dim or cfg.c
            model.vision_proj = nn.Conv2d(cfg.vision_width, dim, 1)
            model.audio_proj = nn.Linear(cfg.audio_channels, dim)
            model.vision_proj.apply(_init_projection)
            model.audio_proj.apply(_init_projection)

    def loss_from_features(self, v_map, a, batch):
        return ezvsl_loss(v_map, a, self.hyper.tau)


class SLAVC(BaselineMethod):
    """v_map / a carry both heads: channels [:dim] = head 1 (img_proj1 / aud_proj1), [dim:] = head 2."""

    name, config_class = "slavc", SLAVCConfig

    def adapt(self, model):
        cfg, h = model.config, self.hyper
        self.dim = h.dim or cfg.c
        model.vision_proj = TwoProjections(cfg.vision_width, self.dim, h.dropout_img, spatial=True)
        model.audio_proj = TwoProjections(cfg.audio_channels, self.dim, h.dropout_aud, spatial=False)
        momentum = nn.ModuleDict({k: copy.deepcopy(getattr(model, k))
                                  for k in ("vision", "vision_proj", "audio", "audio_proj")})
        momentum.requires_grad_(False)
        model.momentum = momentum          # EMA copies: in the checkpoint, moved with the model, not optimised

    def _ema_pairs(self):
        for k in ("vision", "vision_proj", "audio", "audio_proj"):
            m = self.hyper.momentum_img if k.startswith("vision") else self.hyper.momentum_aud
            yield m, list(getattr(self.model, k).parameters()), list(self.model.momentum[k].parameters())

    @torch.no_grad()
    def after_step(self) -> None:
        """θ_ema ← θ_ema + (1 − m)(θ − θ_ema) over parameters (not BN buffers, as the peer)."""
        for m, online, ema in self._ema_pairs():
            for p_o, p_e in zip(online, ema):
                p_e.lerp_(p_o, 1.0 - m)

    def _momentum_features(self, images, specs):
        mo = self.model.momentum
        v = mo["vision_proj"](mo["vision"](images))                            # [B, 2d, h, w]
        a = mo["audio_proj"](torch.amax(mo["audio"](specs), dim=(2, 3)))        # [B, 2d] (as encode_audio)
        return v, a

    def loss_from_features(self, v_map, a, batch):
        with torch.no_grad():
            v_t, a_t = self._momentum_features(batch["image"], batch["spec"])
        d = self.dim
        return slavc_loss(v_map[:, :d], v_map[:, d:], a[:, :d], a[:, d:],
                          v_t[:, :d], v_t[:, d:], a_t[:, :d], a_t[:, d:], self.hyper.tau)

    def localization_map(self, images, specs):
        """Mean over the two heads of cos(v^k_i, a^k_i): [B, h, w] in [-1, 1] (= peer Savl · τ)."""
        if self.hyper.mom_eval:
            v, a = self._momentum_features(images, specs)
        else:
            v, a = self.model.encode_image(images), self.model.encode_audio(specs)
        d = self.dim
        with _f32(v.device):
            maps = [torch.einsum("bchw,bc->bhw", F.normalize(v[:, s].float(), dim=1), F.normalize(a[:, s].float(), dim=1))
                    for s in (slice(0, d), slice(d, None))]
        return (maps[0] + maps[1]) / 2

    def embed_image(self, images):
        """cat(avg v¹, avg v²), each L2-normalised, / √2: the dot product is the mean of the heads' cosines."""
        v = self.model.encode_image(images).float().mean(dim=(2, 3))
        return torch.cat([F.normalize(v[:, :self.dim], dim=1), F.normalize(v[:, self.dim:], dim=1)], 1) / 2 ** 0.5

    def embed_audio(self, specs):
        a = self.model.encode_audio(specs).float()
        return torch.cat([F.normalize(a[:, :self.dim], dim=1), F.normalize(a[:, self.dim:], dim=1)], 1) / 2 ** 0.5


METHODS: dict[str, type[BaselineMethod]] = {"attention10k": Attention10k, "lvs": LVS, "ezvsl": EZVSL, "slavc": SLAVC}


def build_method(name: str, model_cfg: ModelConfig | None = None, hyper: Mapping | None = None,
                 model: AVModel | None = None) -> BaselineMethod:
    """METHODS[name](model_cfg, model, **hyper); `model` (optional) is adapted in place."""
    if name not in METHODS:
        raise ValueError(f"unknown baseline {name!r}; known: {sorted(METHODS)}")
    return METHODS[name](model_cfg, model, **dict(hyper or {}))


def load_method_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """A trainer checkpoint (`last.pt`) -> the evaluable object in eval mode: a BaselineMethod, or the
    AVModel itself for "ours" (both have localization_map / embed / visual_objectness)."""
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise DataError(path, "checkpoint not found") from None
    except Exception as e:
        raise DataError(path, f"not a loadable checkpoint (torch.load weights_only=True): {e}") from None
    cfg = ckpt.get("config") if isinstance(ckpt, dict) else None
    if not isinstance(cfg, dict) or not isinstance(ckpt.get("model"), dict):
        raise DataError(path, "expected a trainer checkpoint with 'model' and 'config'", field="config")
    name = cfg.get("method", "ours")
    if name == "ours":
        return AVModel.from_checkpoint(path, map_location=map_location)
    if name not in METHODS:
        raise DataError(path, f"unknown method {name!r}; known: ours, {', '.join(sorted(METHODS))}", field="method")
    model_cfg = ModelConfig.from_dict(ckpt.get("model_config") or cfg.get("model") or {})
    method = build_method(name, model_cfg, cfg.get("loss") or {})
    state = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()}
    try:
        method.model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise DataError(path, f"weights do not match method {name!r}: {e}", field="model") from None
    return method.eval()


# ============================================================================== trainer glue
class TrainerAdapter:
    """avsl_core.train's method interface around a BaselineMethod; all state lives in the model."""

    needs_conc = False

    def __init__(self, method: BaselineMethod):
        self.method = method

    def views(self) -> tuple[list[str], list[str]]:
        """Views the loss reads (as OursMethod.views): only the original pair."""
        return ["v"], ["a"]

    def loss(self, net: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        return self.method.forward_loss(batch, net)

    def after_step(self, model: nn.Module) -> None:
        self.method.after_step()

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def trainer_factory(name: str):
    """`(TrainConfig, AVModel) -> TrainerAdapter`: hyper-parameters from `cfg.loss`, model adapted in place."""
    def factory(cfg, model: AVModel) -> TrainerAdapter:
        return TrainerAdapter(build_method(name, cfg.model_config, cfg.loss, model=model))
    factory.__name__ = f"{name}_factory"
    return factory


def register_all(methods: dict) -> dict:
    """Add every baseline to a trainer registry (e.g. `avsl_core.train.METHODS`); idempotent."""
    for name in METHODS:
        methods[name] = trainer_factory(name)
    return methods
