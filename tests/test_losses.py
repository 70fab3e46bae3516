"""Hand-computed cases for s_L (Eq. 3), s_A (Eq. 4), InfoNCE (Eq. 2) and the nine-pair loss (Eq. 5)."""
import itertools
import math

import pytest
import torch

from avsl_core.losses import (LossConfig, active_pairs, info_nce, multi_positive_loss, pool_positions, s_A, s_L,
                              similarity_maps)

R = 1 / math.sqrt(2)


def maps(*per_sample):
    """Per-sample lists of position vectors, row-major over a 2×2 grid -> v_map [B, c, 2, 2]."""
    t = torch.tensor(per_sample, dtype=torch.float32)           # [B, 4, c]
    return t.permute(0, 2, 1).reshape(t.shape[0], t.shape[2], 2, 2)


# V_0 positions: (1,0) (0,1) (1,1) (-1,0);  V_1: (0,1) (0,1) (0,-1) (1,1).  a_0 = (2,0), a_1 = (0,3).
V = maps([[1, 0], [0, 1], [1, 1], [-1, 0]], [[0, 1], [0, 1], [0, -1], [1, 1]])
A = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
# cosines, row-major positions
COS = {(0, 0): [1, 0, R, -1], (0, 1): [0, 1, R, 0], (1, 0): [0, 0, 0, R], (1, 1): [1, 1, -1, R]}


def test_similarity_maps_are_per_position_cosines():
    sim = similarity_maps(V, A)
    assert sim.shape == (2, 2, 2, 2)
    for (i, j), want in COS.items():
        torch.testing.assert_close(sim[i, j].flatten(), torch.tensor(want, dtype=torch.float32))


def test_s_L_mean_is_eq3_with_all_ones_mask():
    want = torch.tensor([[R / 4, (1 + R) / 4], [R / 4, (1 + R) / 4]])
    torch.testing.assert_close(s_L(V, A, "mean"), want)


def test_s_L_max():
    torch.testing.assert_close(s_L(V, A, "max"), torch.tensor([[1.0, 1.0], [R, 1.0]]))


def test_s_L_topk_means_top_fraction():
    # k = ceil(0.5 * 4) = 2: (1, R) | (1, R) | (R, 0) | (1, 1)
    want = torch.tensor([[(1 + R) / 2, (1 + R) / 2], [R / 2, 1.0]])
    torch.testing.assert_close(s_L(V, A, "topk", 0.5), want)
    torch.testing.assert_close(s_L(V, A, "topk", 0.3), want)            # ceil(1.2) = 2
    torch.testing.assert_close(s_L(V, A, "topk", 0.25), s_L(V, A, "max"))  # k = 1
    torch.testing.assert_close(s_L(V, A, "topk", 1.0), s_L(V, A, "mean"))
    with pytest.raises(ValueError):
        pool_positions(torch.zeros(2, 2, 2, 2), "median")


def test_s_A_is_cosine_of_head_outputs():
    v_emb = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, -5.0]])
    a_emb = torch.tensor([[0.0, 2.0], [3.0, 3.0]])
    want = torch.tensor([[0.0, R], [R, 1.0], [-1.0, -R]])
    torch.testing.assert_close(s_A(v_emb, a_emb), want)


def test_info_nce_known_values():
    eye = torch.eye(2)
    torch.testing.assert_close(info_nce(eye, tau=1.0), torch.tensor(math.log(1 + math.exp(-1))))
    torch.testing.assert_close(info_nce(eye, tau=0.5), torch.tensor(math.log(1 + math.exp(-2))))
    torch.testing.assert_close(info_nce(torch.zeros(3, 3), tau=0.07), torch.tensor(math.log(3)))
    with pytest.raises(ValueError):
        info_nce(torch.zeros(2, 3))


def test_info_nce_symmetric_adds_column_direction():
    m = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    rows = (math.log(1 + math.exp(-1)) + math.log(1 + math.e)) / 2   # image -> audio
    cols = math.log(2)                                                # audio -> image: both columns tie
    torch.testing.assert_close(info_nce(m, 1.0, symmetric=False), torch.tensor(rows))
    torch.testing.assert_close(info_nce(m, 1.0, symmetric=True), torch.tensor(rows + cols))


# ---- the nine-pair loss -------------------------------------------------------------------------
# Every view's map is constant over the 2×2 grid and every vector is a unit vector at an angle, so
# s_L[i, j] = s_A[i, j] = cos(θ_vision[i] - θ_audio[j]) by hand (positions all equal, mean = max).
ANG_V = {"v": (0, 90), "v_aug": (45, 90), "v_conc": (0, 180)}       # degrees, per sample (B = 2)
ANG_A = {"a": (0, 90), "a_aug": (0, 45), "a_conc": (90, 90)}
ANG_VE = {"v": (0, 90), "v_aug": (0, 0), "v_conc": (30, 120)}      # head outputs for s_A
ANG_AE = {"a": (90, 0), "a_aug": (0, 90), "a_conc": (60, 150)}


def unit(deg):
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


def views():
    vision = {k: {"v_map": maps(*[[unit(d)] * 4 for d in ANG_V[k]]), "v_emb": torch.tensor([unit(d) for d in ANG_VE[k]])}
              for k in ANG_V}
    audio = {k: {"a": torch.tensor([unit(d) for d in ANG_A[k]]), "a_emb": torch.tensor([unit(d) for d in ANG_AE[k]])}
             for k in ANG_A}
    return vision, audio


def nce2(tv, ta, tau, symmetric):
    """InfoNCE of the 2×2 cosine matrix of angle lists, written out: row i = log(1 + e^{(S_ij - S_ii)/τ})."""
    s = [[math.cos(math.radians(tv[i] - ta[j])) for j in range(2)] for i in range(2)]
    rows = (math.log1p(math.exp((s[0][1] - s[0][0]) / tau)) + math.log1p(math.exp((s[1][0] - s[1][1]) / tau))) / 2
    cols = (math.log1p(math.exp((s[1][0] - s[0][0]) / tau)) + math.log1p(math.exp((s[0][1] - s[1][1]) / tau))) / 2
    return rows + cols if symmetric else rows


def test_config_H_known_value():
    vision, audio = views()
    cfg = LossConfig(tau=1.0, semantic=False, multi_view=False, feature_alignment=False)
    out = multi_positive_loss({"v": vision["v"]}, {"a": audio["a"]}, cfg)   # unused views may be absent
    # (v, a): s_L = identity -> log(1 + e^{-1})
    torch.testing.assert_close(out["loss"], torch.tensor(math.log(1 + math.exp(-1))))
    assert set(out) == {"loss", "loss_L", "loss_A", "L/v,a"}
    assert out["loss_A"].item() == 0


def test_config_A_known_value_tau_007():
    vision, audio = views()
    out = multi_positive_loss(vision, audio, LossConfig())    # all on, τ = 0.07
    # (v, a): s_L = I -> log(1 + e^{-1/0.07}); s_A = [[0, 1], [1, 0]] -> log(1 + e^{1/0.07})
    torch.testing.assert_close(out["L/v,a"], torch.tensor(math.log1p(math.exp(-1 / 0.07))))
    torch.testing.assert_close(out["A/v,a"], torch.tensor(math.log1p(math.exp(1 / 0.07))))
    assert len([k for k in out if k.startswith(("L/", "A/"))]) == 18


HAND_PAIRS = {  # (semantic, multi_view) -> pairs, listed by hand
    (False, False): [("v", "a")],
    (False, True): [("v", "a"), ("v", "a_aug"), ("v_aug", "a"), ("v_aug", "a_aug")],
    (True, False): [("v", "a"), ("v", "a_conc"), ("v_conc", "a"), ("v_conc", "a_conc")],
    (True, True): [(vi, aj) for vi in ("v", "v_aug", "v_conc") for aj in ("a", "a_aug", "a_conc")],
}


@pytest.mark.parametrize("semantic,multi_view,feature_alignment,symmetric",
                         list(itertools.product([False, True], repeat=4)))
def test_each_switch_removes_exactly_its_terms(semantic, multi_view, feature_alignment, symmetric):
    tau = 0.5
    cfg = LossConfig(tau=tau, symmetric=symmetric, semantic=semantic, multi_view=multi_view,
                     feature_alignment=feature_alignment)
    pairs = HAND_PAIRS[(semantic, multi_view)]
    assert sorted(active_pairs(cfg)) == sorted(pairs)
    vision, audio = views()
    out = multi_positive_loss(vision, audio, cfg)
    want_keys = {f"L/{vi},{aj}" for vi, aj in pairs}
    if feature_alignment:
        want_keys |= {f"A/{vi},{aj}" for vi, aj in pairs}
    assert {k for k in out if "/" in k} == want_keys
    total = 0.0
    for vi, aj in pairs:
        t_l = nce2(ANG_V[vi], ANG_A[aj], tau, symmetric)
        torch.testing.assert_close(out[f"L/{vi},{aj}"], torch.tensor(t_l))
        total += t_l
        if feature_alignment:
            t_a = nce2(ANG_VE[vi], ANG_AE[aj], tau, symmetric)
            torch.testing.assert_close(out[f"A/{vi},{aj}"], torch.tensor(t_a))
            total += t_a
    torch.testing.assert_close(out["loss"], torch.tensor(total / len(pairs)))


def test_unused_views_do_not_matter_and_missing_used_views_fail():
    vision, audio = views()
    cfg = LossConfig(semantic=False)
    base = multi_positive_loss(vision, audio, cfg)["loss"]
    vision["v_conc"] = {"v_map": torch.randn(2, 2, 2, 2), "v_emb": torch.randn(2, 2)}
    audio["a_conc"] = {"a": torch.randn(2, 2), "a_emb": torch.randn(2, 2)}
    torch.testing.assert_close(multi_positive_loss(vision, audio, cfg)["loss"], base)
    del audio["a_aug"]
    with pytest.raises(KeyError, match="a_aug"):
        multi_positive_loss(vision, audio, cfg)


def test_loss_uses_configured_pooling():
    cfg = LossConfig(tau=1.0, pooling="max", semantic=False, multi_view=False, feature_alignment=False)
    out = multi_positive_loss({"v": {"v_map": V}}, {"a": {"a": A}}, cfg)
    # max-pooled s_L = [[1, 1], [R, 1]]: row 0 ties -> log 2; row 1 -> log(1 + e^{R - 1})
    want = (math.log(2) + math.log1p(math.exp(R - 1))) / 2
    torch.testing.assert_close(out["loss"], torch.tensor(want))


def test_gradients_flow_to_all_inputs_used():
    vision, audio = views()
    for d in (*vision.values(), *audio.values()):
        for t in d.values():
            t.requires_grad_(True)
    multi_positive_loss(vision, audio, LossConfig(tau=0.5))["loss"].backward()
    assert all(t.grad is not None for d in (*vision.values(), *audio.values()) for t in d.values())


def test_loss_config_validation_and_round_trip():
    cfg = LossConfig(tau=0.03, pooling="topk", symmetric=True)
    assert LossConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="pooling"):
        LossConfig(pooling="avg")
    with pytest.raises(ValueError, match="tau"):
        LossConfig(tau=0)
    with pytest.raises(ValueError, match="unknown"):
        LossConfig.from_dict({"temperature": 0.1})
