"""The peers' localization protocols: each one's exact choices of upsampling, normalisation and threshold.

Every peer codebase computes the same consensus IoU but makes small, silent choices that move the numbers
(notes/peer_codebases.md §1.5, §2.5, §3, §4). Each choice is a field of :class:`Protocol`; ``PROTOCOLS``
names each peer's exact combination (see :mod:`avsl_core.metrics` for the whole evaluation).
"""
from __future__ import annotations

from dataclasses import dataclass

EVAL_SIZE = 224
# The peers build the AUC abscissa as [0.05 * i for i in range(21)] (python floats, not linspace).
AUC_THRESHOLDS: tuple[float, ...] = tuple(0.05 * i for i in range(21))
UPSAMPLERS = ("cv2_linear", "bilinear", "bilinear_ac", "bicubic", "bicubic_ac", "nearest")
NORMALISERS = ("minmax", "one_minus_minmax_neg", "none")


@dataclass(frozen=True)
class Protocol:
    """One peer's exact localization pipeline (map → binary prediction)."""
    name: str
    upsample: str              # one of UPSAMPLERS
    normalise: str             # one of NORMALISERS
    strict: bool               # True: infer = pred > thr; False: infer = pred >= thr
    threshold: float | None = None  # None: value at sorted index N//2 (top 50 %); float: fixed cut
    lvs_binarize: bool = False      # LVS test.py: pixels equal to 1 stay on even when thr == 1
    score_first: bool = False       # SLAVC: normalise the absolute score (S + 1/τ)/(2/τ), not S itself
    size: int = EVAL_SIZE
    source: str = ""           # where the peer does this

    def __post_init__(self):
        if self.upsample not in UPSAMPLERS:
            raise ValueError(f"protocol {self.name}: upsample must be one of {UPSAMPLERS}")
        if self.normalise not in NORMALISERS:
            raise ValueError(f"protocol {self.name}: normalise must be one of {NORMALISERS}")


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in [
    Protocol("lvs", "cv2_linear", "one_minus_minmax_neg", True, lvs_binarize=True,
             source="hche11/Localizing-Visual-Sounds-the-Hard-Way test.py"),
    Protocol("ssltie", "cv2_linear", "one_minus_minmax_neg", True, lvs_binarize=True,
             source="jinxiang-liu/SSL-TIE (LVS evaluation)"),
    Protocol("ezvsl", "bilinear_ac", "minmax", False, source="stoneMo/EZ-VSL test.py"),
    Protocol("ezvsl_val", "bicubic", "minmax", False,
             source="stoneMo/EZ-VSL train.py validate; OpenNLPLab/FNAC_AVL validate2"),
    Protocol("fnac", "bilinear_ac", "minmax", False, source="OpenNLPLab/FNAC_AVL test.py validate"),
    Protocol("slavc", "bicubic_ac", "minmax", False, score_first=True,
             source="stoneMo/SLAVC test.py --relative_prediction"),
    Protocol("official", "cv2_linear", "one_minus_minmax_neg", True,
             source="kaistmm/SSLalignment test.py validate_lvs on VGG-SS (Evaluator_iiou)"),
    Protocol("official_ac", "bilinear_ac", "one_minus_minmax_neg", True,
             source="kaistmm/SSLalignment test.py validate_lvs on Flickr and other sets"),
    Protocol("official_peers", "bilinear_ac", "minmax", True,
             source="kaistmm/SSLalignment test.py validate (EZ-VSL/SLAVC/FNAC checkpoints, any set)"),
    Protocol("acl", "bilinear", "none", False, threshold=0.5,
             source="swimmiing/ACL-SSL VGGSS/eval_utils.py (fixed threshold on the sigmoid map)"),
]}
PROTOCOL_ALIASES = {"official_iiou": "official", "ours": "official"}


def get_protocol(name: str | Protocol) -> Protocol:
    if isinstance(name, Protocol):
        return name
    key = PROTOCOL_ALIASES.get(name, name)
    if key not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; known: {sorted(PROTOCOLS) + sorted(PROTOCOL_ALIASES)}")
    return PROTOCOLS[key]
