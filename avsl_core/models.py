"""Audio-visual encoders of the paper (SPEC §1, paper §3.2): two ResNet18 trunks and the s_A heads.

* Vision: ResNet18 (torchvision's BasicBlock, depth [2, 2, 2, 2]) on RGB, returning the spatial map
  V ∈ R^{c×h×w} without pooling. `vision_layer4_stride=1` is the LVS layout of the authors'
  checkpoints (peer_codebases §2.3: 14×14 at 224 px); `vision_stop_at="layer3"` drops layer4.
* Audio: the same ResNet18 with a 1-channel first conv (log spectrogram), global max-pool → a ∈ R^c.
* Heads p_v, p_a (SimCLR-style MLP, Linear-ReLU-Linear) give the alignment space of s_A (Eq. 4),
  kept apart from the localization space of s_L (Eq. 3).

`width` scales every stage (1.0 = 64/128/256/512 channels, 0.5 = 32/64/128/256) at the same depth.
No pretrained weights are ever loaded; the backbone is trained from scratch (paper §4.1).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, conv1x1

from avsl_core.errors import DataError

_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
_STOPS = ("layer2", "layer3", "layer4")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of `AVModel`; stored in every checkpoint and compared on load."""

    width: float = 1.0                 # channel multiplier: stage widths round(64·width)·[1, 2, 4, 8]
    audio_width: float | None = None   # the audio trunk's own multiplier; None = `width` (the paper's pair)
    vision_layer4_stride: int = 2      # 2 = torchvision ResNet18 (7×7 at 224); 1 = LVS layout (14×14)
    vision_stop_at: str = "layer4"     # "layer4" | "layer3" (stride 16, 4·base channels) | "layer2" (stride 8, 2·base)
    padding_mode: str = "zeros"        # padding of every padded conv, both trunks ("reflect": no border artefacts)
    embed_dim: int | None = None       # c; None = the vision trunk's last stage width (no projection)
    head_hidden: int | None = None     # hidden width of p_v / p_a; None = c
    head_dim: int = 128                # output width d of p_v / p_a (SimCLR: 128)
    audio_in_channels: int = 1         # spectrogram channels
    # "auto": a 1×1 conv on V / a linear on a only where a trunk's width differs from c (the authors'
    # layout: none); "both": always both (EZ-VSL's layout: signed features on both sides of Eq. 3).
    projection: str = "auto"

    def __post_init__(self):
        if not self.width > 0:
            raise ValueError(f"ModelConfig.width: expected > 0, got {self.width!r}")
        if self.audio_width is not None and not self.audio_width > 0:
            raise ValueError(f"ModelConfig.audio_width: expected > 0 or None, got {self.audio_width!r}")
        if self.vision_layer4_stride not in (1, 2):
            raise ValueError(f"ModelConfig.vision_layer4_stride: expected 1 or 2, got {self.vision_layer4_stride!r}")
        if self.vision_stop_at not in _STOPS:
            raise ValueError(f"ModelConfig.vision_stop_at: expected one of {_STOPS}, got {self.vision_stop_at!r}")
        if self.padding_mode not in _PADDING_MODES:
            raise ValueError(f"ModelConfig.padding_mode: expected one of {_PADDING_MODES}, got {self.padding_mode!r}")
        for name in ("embed_dim", "head_hidden"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"ModelConfig.{name}: expected a positive int or None, got {v!r}")
        if self.projection not in ("auto", "both"):
            raise ValueError(f"ModelConfig.projection: expected 'auto' or 'both', got {self.projection!r}")
        if not isinstance(self.head_dim, int) or self.head_dim < 1:
            raise ValueError(f"ModelConfig.head_dim: expected a positive int, got {self.head_dim!r}")
        if not isinstance(self.audio_in_channels, int) or self.audio_in_channels < 1:
            raise ValueError(f"ModelConfig.audio_in_channels: expected a positive int, got {self.audio_in_channels!r}")

    @property
    def base_width(self) -> int:
        """Channels of conv1 / layer1."""
        return max(1, int(round(64 * self.width)))

    @property
    def vision_width(self) -> int:
        """Channels of the vision trunk's last stage (before any projection)."""
        return self.base_width * {"layer4": 8, "layer3": 4, "layer2": 2}[self.vision_stop_at]

    @property
    def audio_base_width(self) -> int:
        """Channels of the audio trunk's conv1 / layer1."""
        return self.base_width if self.audio_width is None else max(1, int(round(64 * self.audio_width)))

    @property
    def audio_channels(self) -> int:
        """Channels of the audio trunk's output (layer4, before any projection)."""
        return self.audio_base_width * 8

    @property
    def c(self) -> int:
        """Channels of V and a (the localization space)."""
        return self.embed_dim if self.embed_dim is not None else self.vision_width

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Build from a dict; unknown keys are an error, missing keys take the defaults."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"ModelConfig: unknown field(s) {unknown}; expected a subset of {sorted(known)}")
        return cls(**d)


class ResNet18Trunk(nn.Module):
    """ResNet18 (conv1 7×7/2, max-pool 3×3/2, four stages of two BasicBlocks) without avgpool/fc.

    Same layout and initialisation as `torchvision.models.resnet18(weights=None)` when width = 1,
    in_channels = 3, layer4_stride = 2 and padding_mode = "zeros".
    """

    def __init__(self, in_channels: int = 3, base: int = 64, layer4_stride: int = 2,
                 stop_at: str = "layer4", padding_mode: str = "zeros"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, base, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self._inplanes = base
        self.layer1 = self._make_layer(base, stride=1)
        self.layer2 = self._make_layer(base * 2, stride=2)
        self.layer3 = self._make_layer(base * 4, stride=2) if stop_at != "layer2" else None
        self.layer4 = self._make_layer(base * 8, stride=layer4_stride) if stop_at == "layer4" else None
        self.out_channels = self._inplanes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if padding_mode != "zeros" and any(p > 0 for p in m.padding):
                    m.padding_mode = padding_mode  # Conv2d pads with F.pad(mode=...) then convolves unpadded
                    m.__class__ = _PadConv2d       # same parameters; only tiny-map reflect handling differs
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._inplanes != planes:
            downsample = nn.Sequential(conv1x1(self._inplanes, planes, stride), nn.BatchNorm2d(planes))
        blocks = [BasicBlock(self._inplanes, planes, stride, downsample), BasicBlock(planes, planes)]
        self._inplanes = planes
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        if self.layer3 is not None:
            x = self.layer3(x)
        if self.layer4 is not None:
            x = self.layer4(x)
        return x  # [B, C, H/32, W/32] (H/16 with layer4 stride 1 or stop at layer3, H/8 at layer2)


class _PadConv2d(nn.Conv2d):
    """Conv2d whose "reflect" padding falls back to "replicate" on maps too small to reflect (size <= pad),
    e.g. a 1-pixel-high spectrogram map in layer4; elsewhere identical to nn.Conv2d."""

    def _conv_forward(self, x, weight, bias):
        if self.padding_mode == "reflect" and (x.shape[-2] <= self.padding[0] or x.shape[-1] <= self.padding[1]):
            x = F.pad(x, self._reversed_padding_repeated_twice, mode="replicate")
            return F.conv2d(x, weight, bias, self.stride, 0, self.dilation, self.groups)
        return super()._conv_forward(x, weight, bias)


def _mlp_head(c: int, hidden: int, out: int) -> nn.Sequential:
    """SimCLR projection head g(·) = W2 ReLU(W1 ·) (paper §3.2, p_v and p_a of Eq. 4)."""
    return nn.Sequential(nn.Linear(c, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))


class AVModel(nn.Module):
    """The localization model: vision map V, audio vector a, and the s_A heads (paper §3.2, Fig. 2)."""

    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        cfg = config or ModelConfig()
        self.config = cfg
        self.vision = ResNet18Trunk(3, cfg.base_width, cfg.vision_layer4_stride, cfg.vision_stop_at,
                                    cfg.padding_mode)
        self.audio = ResNet18Trunk(cfg.audio_in_channels, cfg.audio_base_width, 2, "layer4", cfg.padding_mode)
        c = cfg.c
        # 1×1 projections where a trunk's width differs from c (never in the default layout), or always
        # with projection="both".
        both = cfg.projection == "both"
        self.vision_proj = nn.Conv2d(cfg.vision_width, c, 1) if both or cfg.vision_width != c else nn.Identity()
        self.audio_proj = nn.Linear(cfg.audio_channels, c) if both or cfg.audio_channels != c else nn.Identity()
        hidden = cfg.head_hidden or c
        self.p_v = _mlp_head(c, hidden, cfg.head_dim)
        self.p_a = _mlp_head(c, hidden, cfg.head_dim)

    # -- encoders -------------------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] (ImageNet-normalised) -> V [B, c, h, w] (not normalised)."""
        return self.vision_proj(self.vision(images))

    def encode_audio(self, specs: torch.Tensor) -> torch.Tensor:
        """specs [B, 1, F, T] -> a [B, c] (global max-pool over frequency and time; not normalised)."""
        x = self.audio(specs)                 # [B, C, f, t]
        x = torch.amax(x, dim=(2, 3))         # [B, C]
        return self.audio_proj(x)             # [B, c]

    def forward(self, images: torch.Tensor, specs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Returns v_map [B,c,h,w], a [B,c], v_emb = p_v(avgpool V) [B,d], a_emb = p_a(a) [B,d].

        s_L (Eq. 3) is computed from (v_map, a), s_A (Eq. 4) from (v_emb, a_emb); see losses.py.
        """
        v_map = self.encode_image(images)
        a = self.encode_audio(specs)
        v_emb = self.p_v(v_map.mean(dim=(2, 3)))   # avg(V): [B, c] -> [B, d]
        a_emb = self.p_a(a)                        # [B, d]
        return {"v_map": v_map, "a": a, "v_emb": v_emb, "a_emb": a_emb}

    # -- what a user calls -----------------------------------------------------------------------
    def localization_map(self, images: torch.Tensor, specs: torch.Tensor) -> torch.Tensor:
        """Test-time heatmap: cos(V_i[:, x, y], a_i) per position, in [-1, 1], shape [B, h, w] (Eq. 3 summand).

        float32 even under autocast.
        """
        v_map, a = self.encode_image(images), self.encode_audio(specs)
        with torch.autocast(v_map.device.type, enabled=False):
            v = F.normalize(v_map.float(), dim=1)
            a = F.normalize(a.float(), dim=1)
            return torch.einsum("bchw,bc->bhw", v, a)

    def embed(self, images: torch.Tensor, specs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Global embeddings for retrieval, L2-normalised in the s_A space (Eq. 4): ([B, d], [B, d])."""
        out = self.forward(images, specs)
        return F.normalize(out["v_emb"].float(), dim=1), F.normalize(out["a_emb"].float(), dim=1)

    def embed_image(self, images: torch.Tensor) -> torch.Tensor:
        """Image-only s_A embedding [B, d], L2-normalised."""
        return F.normalize(self.p_v(self.encode_image(images).mean(dim=(2, 3))).float(), dim=1)

    def embed_audio(self, specs: torch.Tensor) -> torch.Tensor:
        """Audio-only s_A embedding [B, d], L2-normalised."""
        return F.normalize(self.p_a(self.encode_audio(specs)).float(), dim=1)

    def visual_objectness(self, images: torch.Tensor) -> torch.Tensor:
        """Audio-blind floor: channel-mean of |V| per position, [B, h, w] (OGL objectness, EZ-VSL; not min-max normalised)."""
        return self.encode_image(images).float().abs().mean(dim=1)

    # -- checkpoints -----------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, expected_config: ModelConfig | None = None,
                        map_location: str | torch.device = "cpu") -> "AVModel":
        """Load `{"model": state_dict, "config": {...}}` with `torch.load(weights_only=True)`; eval mode.

        The model config is read from `ckpt["model_config"]` if present, else `ckpt["config"]["model"]`
        (a run config with a nested model section), else `ckpt["config"]` itself. A checkpoint whose
        config differs from `expected_config` is refused (DataError naming the differing fields).
        """
        try:
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
        except FileNotFoundError:
            raise DataError(path, "checkpoint not found") from None
        except Exception as e:  # unpickling refused, truncated file, not a torch file
            raise DataError(path, f"not a loadable checkpoint (torch.load weights_only=True): {e}") from None
        if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
            raise DataError(path, "expected a dict with keys 'model' (state_dict) and 'config'", field="model")
        raw = ckpt.get("model_config")
        if raw is None:
            raw = ckpt.get("config")
            if isinstance(raw, dict) and isinstance(raw.get("model"), dict):
                raw = raw["model"]
        if not isinstance(raw, dict):
            raise DataError(path, "no model config in checkpoint (expected a dict under 'config')", field="config")
        try:
            cfg = ModelConfig.from_dict(raw)
        except (TypeError, ValueError) as e:
            raise DataError(path, f"invalid model config: {e}", field="config") from None
        if expected_config is not None and cfg != expected_config:
            diff = [f"{f.name}: checkpoint={getattr(cfg, f.name)!r} expected={getattr(expected_config, f.name)!r}"
                    for f in dataclasses.fields(ModelConfig)
                    if getattr(cfg, f.name) != getattr(expected_config, f.name)]
            raise DataError(path, "checkpoint was trained with another model config; refusing to load ("
                            + "; ".join(diff) + ")", field="config")
        state = {_strip_prefixes(k): v for k, v in ckpt["model"].items()}
        model = cls(cfg)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise DataError(path, f"weights do not match the stored config: {e}", field="model") from None
        return model.eval()

    def checkpoint_state(self) -> dict:
        """The part of a checkpoint this class reads back: {"model": state_dict, "config": config dict}."""
        return {"model": self.state_dict(), "config": self.config.to_dict()}


def _strip_prefixes(key: str) -> str:
    """Drop DDP ('module.') and torch.compile ('_orig_mod.') prefixes from a state_dict key."""
    for p in ("module.", "_orig_mod."):
        while key.startswith(p):
            key = key[len(p):]
    return key
