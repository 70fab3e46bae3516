"""Baselines (avsl_core.baselines): each loss against hand-computed values on 2×2 maps with c = 2,
and each method end to end on a tiny model (forward, backward, maps, SLAVC momentum, trainer)."""
from __future__ import annotations

import math

import pytest
import torch

from avsl_core import baselines as B
from avsl_core.models import ModelConfig

E = math.e


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def vmap(*positions) -> torch.Tensor:
    """Four c = 2 vectors at positions (0,0), (0,1), (1,0), (1,1) (row-major) -> [2, 2, 2]."""
    return torch.tensor(positions, dtype=torch.float32).T.reshape(2, 2, 2)


A0, A1 = (1.0, 0.0), (0.0, 1.0)
AUD = torch.tensor([A0, A1])                                  # a_0 = e_x, a_1 = e_y


# ------------------------------------------------------------------------------ Attention10k
def test_attention10k_loss_hand_computed():
    v = torch.stack([vmap(A0, A1, A1, A1), vmap(A1, A1, A1, A1)])
    alpha, z = B.attention_pool(v, AUD, att_tau=1.0)
    # image 0: cos with a_0 = [1, 0, 0, 0] -> α = [e, 1, 1, 1]/(e + 3), z ∝ (e, 3); image 1: uniform, z = (0, 1)
    assert torch.allclose(alpha[0].flatten(), torch.tensor([E, 1, 1, 1]) / (E + 3), atol=1e-6)
    assert torch.allclose(alpha[1], torch.full((2, 2), 0.25))
    assert torch.allclose(z[0], torch.tensor([E, 3.0]) / (E + 3), atol=1e-6)
    tau = 0.5
    c00, c01 = E / math.sqrt(E * E + 9), 3 / math.sqrt(E * E + 9)
    row = (math.log(1 + math.exp((c01 - c00) / tau)) + math.log(1 + math.exp(-1 / tau))) / 2
    out = B.attention10k_loss(v, AUD, tau=tau, att_tau=1.0)
    assert out["loss"].item() == pytest.approx(row, abs=1e-6)
    col = (math.log(1 + math.exp(-c00 / tau)) + math.log(1 + math.exp((c01 - 1) / tau))) / 2
    sym = B.attention10k_loss(v, AUD, tau=tau, att_tau=1.0, symmetric=True)
    assert sym["loss"].item() == pytest.approx(row + col, abs=1e-6)
    # z pools the raw (unnormalised) V: scaling one image's features changes nothing (cosines only)
    assert B.attention10k_loss(v * torch.tensor([3.0, 1.0])[:, None, None, None], AUD, tau, 1.0)["loss"].item() \
        == pytest.approx(row, abs=1e-6)


# ------------------------------------------------------------------------------ LVS
def _lvs_expected(eps, eps2, tau, T, trimap=True):
    p1, p0 = sig((1 - eps) / tau), sig((0 - eps) / tau)
    e = eps2 if trimap else eps
    n1, n0 = 1 - sig((1 - e) / tau), 1 - sig((0 - e) / tau)
    # image 0: A_00 = [1, 1, 0, 0], A_01 = [0, 0, 1, 1]; image 1: A_11 = [1, 0, 0, 0], A_10 = [0, 1, 1, 1]
    pos0, hard0, easy01 = p1 / (p1 + p0), n1 / (n1 + n0), p1 / (p1 + p0)
    pos1, hard1, easy10 = p1 / (p1 + 3 * p0), n1 / (n1 + 3 * n0), 3 * p1 / (3 * p1 + p0)
    rows = [[pos0, -99 * pos0, easy01, hard0], [pos1, easy10, -99 * pos1, hard1]]
    ce = [math.log(sum(math.exp(x / T) for x in r)) - r[0] / T for r in rows]
    return rows, sum(ce) / 2


LVS_V = torch.stack([vmap(A0, A0, A1, A1), vmap(A1, A0, A0, A0)])


@pytest.mark.parametrize("eps,eps2,tau,trimap", [(0.65, 0.4, 0.03, True), (0.65, 0.4, 0.2, True),
                                                 (0.5, 0.3, 0.25, False)])
def test_lvs_loss_hand_computed(eps, eps2, tau, trimap):
    rows, expected = _lvs_expected(eps, eps2, tau, 0.07, trimap)
    logits = B.lvs_logits(LVS_V, AUD, eps, eps2, tau, 0.07, trimap=trimap)
    assert logits.shape == (2, 4)                              # [pos | 2 easy (diag suppressed) | hard]
    assert torch.allclose(logits * 0.07, torch.tensor(rows), rtol=1e-5, atol=1e-6)
    out = B.lvs_loss(LVS_V, AUD, eps, eps2, tau, 0.07, trimap=trimap)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)


def test_lvs_defaults_limit_and_no_hard_negatives():
    # τ = 0.03: Pos ≈ 1 where cos = 1, ≈ 0 where cos = 0 -> positive ≈ 1 = the other audio's score, hard ≈ 0,
    # so each row's CE is ≈ log 2 (two logits at 1/0.07, the rest far below)
    assert B.lvs_loss(LVS_V, AUD)["loss"].item() == pytest.approx(math.log(2), abs=1e-5)
    logits = B.lvs_logits(LVS_V, AUD, hard_negatives=False)
    assert logits.shape == (2, 3)


# ------------------------------------------------------------------------------ EZ-VSL
@pytest.mark.parametrize("tau", [0.03, 0.1])
def test_ezvsl_loss_hand_computed(tau):
    q = (0.6, 0.8)
    v = torch.stack([vmap(A0, q, q, A0), vmap(A1, q, A1, A1)])
    # max-over-positions cosines: S = [[1, .8], [.6, 1]]
    # rows: log(1+e^{-.2/τ}), log(1+e^{-.4/τ}); columns: log(1+e^{-.4/τ}), log(1+e^{-.2/τ}); sum of the two means
    expected = math.log(1 + math.exp(-0.2 / tau)) + math.log(1 + math.exp(-0.4 / tau))
    assert B.ezvsl_loss(v, AUD, tau)["loss"].item() == pytest.approx(expected, rel=1e-4, abs=1e-6)


# ------------------------------------------------------------------------------ SLAVC
def test_slavc_loss_hand_computed():
    v = torch.stack([vmap(A0, A1, A1, A1), vmap(A1, A1, A1, A1)])
    # τ = 1, both heads equal, targets = online. S[0,0] = [1,0,0,0], S[0,1] = [0,1,1,1], S[1,0] = 0, S[1,1] = 1.
    x00 = (E * E + 3) / ((E + 1) * (E + 3))      # Σ_p softmax_m · softmax_p
    x01 = (1 + 3 * E * E) / ((E + 1) * (1 + 3 * E))
    x10, x11 = 1 / (1 + E), E / (1 + E)
    i2a = B.slavc_scores(v, v, AUD, AUD, tau=1.0)
    assert torch.allclose(i2a.exp(), torch.tensor([[x00, x01], [x10, x11]]), atol=1e-6)
    ce = (math.log((x00 + x01) / x00) + math.log((x10 + x11) / x11)) / 2
    out = B.slavc_loss(v, v, AUD, AUD, v, v, AUD, AUD, tau=1.0)
    assert out["loss"].item() == pytest.approx(2 * ce, abs=1e-6)


def _naive_scores(v1, v2, a1, a2, tau):
    """Literal loops: Σ_p softmax over audios m of <v1_n(p), a1_m>/τ × softmax over p of <v2_n(p), a2_m>/τ."""
    n_b, hw = v1.shape[0], v1.shape[2] * v1.shape[3]
    nv = lambda t: [[t[n, :, p // t.shape[3], p % t.shape[3]] / t[n, :, p // t.shape[3], p % t.shape[3]].norm()
                     for p in range(hw)] for n in range(n_b)]
    u1, u2 = nv(v1), nv(v2)
    b1, b2 = [a / a.norm() for a in a1], [a / a.norm() for a in a2]
    out = torch.zeros(n_b, n_b, dtype=torch.float64)
    for n in range(n_b):
        for m in range(n_b):
            tot = 0.0
            for p in range(hw):
                sm = math.exp(float(u1[n][p] @ b1[m]) / tau) / sum(math.exp(float(u1[n][p] @ b1[k]) / tau) for k in range(n_b))
                sp = math.exp(float(u2[n][p] @ b2[m]) / tau) / sum(math.exp(float(u2[n][q] @ b2[m]) / tau) for q in range(hw))
                tot += sm * sp
            out[n, m] = math.log(tot)
    return out


def test_slavc_loss_roles_of_online_and_momentum():
    g = torch.Generator().manual_seed(0)
    t = [torch.randn(3, 2, 2, 2, generator=g) if i % 4 < 2 else torch.randn(3, 2, generator=g) for i in range(8)]
    v1, v2, a1, a2, v1t, v2t, a1t, a2t = t
    tau = 0.5
    ce = lambda s: float(sum(torch.logsumexp(s[n], 0) - s[n, n] for n in range(3)) / 3)
    i2a, a2i = _naive_scores(v1, v2, a1t, a2t, tau), _naive_scores(v1t, v2t, a1, a2, tau)
    out = B.slavc_loss(v1, v2, a1, a2, v1t, v2t, a1t, a2t, tau)
    assert out["i2a"].item() == pytest.approx(ce(i2a), rel=1e-5)
    assert out["a2i"].item() == pytest.approx(ce(a2i), rel=1e-5)
    assert out["loss"].item() == pytest.approx(ce(i2a) + ce(a2i), rel=1e-5)


# ------------------------------------------------------------------------------ methods on a tiny model
TINY = ModelConfig(width=0.125)                                # c = 64; 64 px -> 2×2 map


def _batch(b=4):
    g = torch.Generator().manual_seed(1)
    return {"image": torch.randn(b, 3, 64, 64, generator=g), "spec": torch.randn(b, 1, 32, 32, generator=g)}


@pytest.mark.parametrize("name", sorted(B.METHODS))
def test_method_trains_and_maps(name):
    torch.manual_seed(0)
    m = B.build_method(name, TINY, {"tau": 0.05} if name != "lvs" else {})
    batch = _batch()
    m.train()
    out = m.forward_loss(batch)
    assert torch.isfinite(out["loss"]) and out["loss"].ndim == 0
    out["loss"].backward()
    for mod in (m.model.vision.conv1, m.model.audio.conv1, m.model.audio.layer4[1].conv2):
        assert mod.weight.grad is not None and mod.weight.grad.abs().sum() > 0
    trainable = [n for n, p in m.model.named_parameters() if p.requires_grad]
    assert not [n for n in trainable if m.model.get_parameter(n).grad is None], "unused trainable parameters"
    assert not any(n.startswith(("p_v", "p_a")) for n in trainable)   # no s_A heads
    m.eval()
    with torch.no_grad():
        hm = m.localization_map(batch["image"], batch["spec"])
        hm2 = m.localization_map(batch["image"], batch["spec"])
        img, aud = m.embed(batch["image"], batch["spec"])
        obj = m.visual_objectness(batch["image"])
    assert hm.shape == (4, 2, 2) and obj.shape == (4, 2, 2) and torch.equal(hm, hm2)
    if m.map_kind == "attention":
        assert torch.allclose(hm.sum(dim=(1, 2)), torch.ones(4), atol=1e-5)
    else:
        assert hm.abs().max() <= 1 + 1e-5
    assert img.shape[0] == aud.shape[0] == 4 and img.shape[1] == aud.shape[1]
    assert torch.allclose(img.norm(dim=1), torch.ones(4), atol=1e-5)
    assert torch.allclose(aud.norm(dim=1), torch.ones(4), atol=1e-5)


def test_slavc_structure_and_momentum_update():
    torch.manual_seed(0)
    m = B.build_method("slavc", TINY, {"dim": 16, "momentum_img": 0.9, "momentum_aud": 0.8})
    model = m.model
    assert model.encode_image(_batch()["image"]).shape == (4, 32, 2, 2)    # two heads of 16
    assert not any(p.requires_grad for p in model.momentum.parameters())
    pairs = [(n, p, model.momentum.get_parameter(n)) for n, p in model.named_parameters()
             if not n.startswith("momentum.")]
    assert all(torch.equal(p, q) for _, p, q in pairs)                       # EMA starts as a copy
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    m.train()
    m.forward_loss(_batch())["loss"].backward()
    opt.step()
    before = {n: (p.detach().clone(), q.detach().clone()) for n, p, q in pairs}
    bn_before = model.momentum["vision"].bn1.running_mean.clone()
    m.after_step()
    moved = 0
    for n, p, q in pairs:
        mom = 0.9 if n.startswith("vision") else 0.8
        theta, ema = before[n]
        want = ema.double() + (1 - mom) * (theta.double() - ema.double())
        assert torch.allclose(q.double(), want, atol=1e-6, rtol=1e-6), n
        moved += int(not torch.equal(theta, ema))
    assert moved > 10
    assert torch.equal(model.momentum["vision"].bn1.running_mean, bn_before)   # buffers are not averaged


def test_slavc_dropout_only_in_training():
    torch.manual_seed(0)
    m = B.build_method("slavc", TINY, {"dim": 8})
    x = _batch()["image"]
    m.train()
    v = m.model.encode_image(x)
    m.eval()
    assert not torch.equal(v, m.model.encode_image(x))
    feats = m.model.vision(x)
    frac_zero = (m.model.vision_proj.dropout.train()(feats) == 0).float().mean().item()
    assert 0.85 < frac_zero < 0.95                                           # Dropout(0.9)


def test_build_errors():
    with pytest.raises(ValueError, match="unknown baseline"):
        B.build_method("nope", TINY)
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['epsilon'\]"):
        B.build_method("lvs", TINY, {"epsilon": 0.5})
    with pytest.raises(ValueError, match="dropout_img"):
        B.SLAVCConfig(dropout_img=1.5)


def test_trainer_round_trip(tmp_path, monkeypatch):
    T = pytest.importorskip("avsl_core.train")
    monkeypatch.setattr(T, "plot_loss_curve", lambda *a, **k: None)   # matplotlib is not under test here
    B.register_all(T.METHODS)
    cfg = T.TrainConfig(method="slavc", model={"width": 0.125}, loss={"dim": 8, "momentum_img": 0.5},
                        data=T.DataConfig(kind="synthetic", image_size=64, options={"n": 8}),
                        batch_size=4, max_steps=2, precision="fp32", channels_last=False)
    summary = T.train(cfg, tmp_path / "run", progress=False, device="cpu")
    assert summary["steps"] == 2
    method = B.load_method_checkpoint(tmp_path / "run" / T.CKPT_NAME)
    assert isinstance(method, B.SLAVC) and not method.training
    ckpt = torch.load(tmp_path / "run" / T.CKPT_NAME, weights_only=True)
    w = "momentum.vision.conv1.weight"
    assert torch.equal(method.model.state_dict()[w], ckpt["model"][w])
    assert not torch.equal(ckpt["model"][w], ckpt["model"]["vision.conv1.weight"])   # EMA lags the online net
    x = torch.randn(2, 3, 64, 64)
    assert method.localization_map(x, torch.randn(2, 1, 32, 32)).shape == (2, 2, 2)
