"""Encoders (SPEC §1): shapes, the LVS layout, padding, the user-facing maps and checkpoint loading."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F
import torchvision

from avsl_core.errors import DataError
from avsl_core.losses import LossConfig, multi_positive_loss
from avsl_core.models import AVModel, ModelConfig

TINY = ModelConfig(width=0.125, head_dim=16)   # 8/16/32/64 channels


def inputs(b=2, size=64, f=32, t=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, size, size, generator=g), torch.randn(b, 1, f, t, generator=g)


def test_shapes_width_half_at_96px():
    torch.manual_seed(0)
    model = AVModel(ModelConfig(width=0.5)).eval()
    img, spec = inputs(2, 96, 64, 100)
    with torch.no_grad():
        out = model(img, spec)
    assert out["v_map"].shape == (2, 256, 3, 3)
    assert out["a"].shape == (2, 256)
    assert out["v_emb"].shape == (2, 128) and out["a_emb"].shape == (2, 128)


def test_lvs_layout_width_one_stride_one_gives_14x14_at_224():
    torch.manual_seed(0)
    model = AVModel(ModelConfig(width=1.0, vision_layer4_stride=1)).eval()
    img, spec = inputs(1, 224, 64, 64)
    with torch.no_grad():
        assert model.encode_image(img).shape == (1, 512, 14, 14)
        assert model.encode_audio(spec).shape == (1, 512)


def test_width_one_trunk_matches_torchvision_resnet18_layout():
    ref = {k: v.shape for k, v in torchvision.models.resnet18(weights=None).state_dict().items()
           if not k.startswith("fc.")}
    model = AVModel(ModelConfig())
    assert {k: v.shape for k, v in model.vision.state_dict().items()} == ref
    audio = {k: v.shape for k, v in model.audio.state_dict().items()}
    assert audio["conv1.weight"] == (64, 1, 7, 7)
    assert {k: s for k, s in audio.items() if k != "conv1.weight"} == {k: s for k, s in ref.items() if k != "conv1.weight"}
    assert isinstance(model.vision_proj, torch.nn.Identity) and isinstance(model.audio_proj, torch.nn.Identity)


def test_stop_at_layer3_projects_audio_to_vision_width():
    model = AVModel(dataclasses.replace(TINY, vision_stop_at="layer3")).eval()
    img, spec = inputs(2, 64)
    with torch.no_grad():
        out = model(img, spec)
    assert model.vision.layer4 is None
    assert out["v_map"].shape == (2, 32, 4, 4) and out["a"].shape == (2, 32)
    emb = AVModel(dataclasses.replace(TINY, embed_dim=24)).eval()
    with torch.no_grad():
        out = emb(img, spec)
    assert out["v_map"].shape == (2, 24, 2, 2) and out["a"].shape == (2, 24)


def test_stop_at_layer2_gives_stride_8_map():
    model = AVModel(dataclasses.replace(TINY, vision_stop_at="layer2")).eval()
    img, spec = inputs(2, 64)
    with torch.no_grad():
        out = model(img, spec)
    assert model.vision.layer3 is None and model.vision.layer4 is None
    assert out["v_map"].shape == (2, 16, 8, 8) and out["a"].shape == (2, 16)
    assert not any(k.startswith(("layer3", "layer4")) for k in model.vision.state_dict())


def test_audio_width_sets_the_audio_trunk_alone_and_projects_to_the_vision_width():
    cfg = dataclasses.replace(TINY, width=0.25, audio_width=0.125, vision_stop_at="layer2")
    model = AVModel(cfg).eval()
    assert model.audio.conv1.weight.shape == (8, 1, 7, 7) and model.vision.conv1.weight.shape == (16, 3, 7, 7)
    assert isinstance(model.audio_proj, torch.nn.Linear) and model.audio_proj.in_features == 64
    img, spec = inputs(2, 64)
    with torch.no_grad():
        out = model(img, spec)
    assert out["v_map"].shape == (2, 32, 8, 8) and out["a"].shape == (2, 32)
    same = AVModel(dataclasses.replace(TINY, audio_width=TINY.width))
    assert {k: v.shape for k, v in same.state_dict().items()} == {k: v.shape for k, v in AVModel(TINY).state_dict().items()}
    # an old checkpoint's config (no audio_width) reads as the paper's pair
    old = {k: v for k, v in TINY.to_dict().items() if k != "audio_width"}
    assert ModelConfig.from_dict(old) == TINY and TINY.audio_channels == TINY.base_width * 8
    with pytest.raises(ValueError, match="audio_width"):
        ModelConfig(audio_width=0)


def test_projection_both_adds_signed_projections_even_at_equal_widths():
    auto = AVModel(dataclasses.replace(TINY, vision_stop_at="layer3", embed_dim=64))  # audio 64 = c
    assert isinstance(auto.audio_proj, torch.nn.Identity) and isinstance(auto.vision_proj, torch.nn.Conv2d)
    both = AVModel(dataclasses.replace(TINY, vision_stop_at="layer3", embed_dim=64, projection="both")).eval()
    assert isinstance(both.audio_proj, torch.nn.Linear) and isinstance(both.vision_proj, torch.nn.Conv2d)
    img, spec = inputs(2, 64)
    with torch.no_grad():
        out = both(img, spec)
    assert out["v_map"].shape == (2, 64, 4, 4) and (out["v_map"] < 0).any() and (out["a"] < 0).any()


def test_reflect_padding_sets_every_padded_conv_and_removes_border_artefacts():
    torch.manual_seed(0)
    zeros = AVModel(TINY).eval()
    refl = AVModel(dataclasses.replace(TINY, padding_mode="reflect")).eval()
    refl.load_state_dict(zeros.state_dict())          # same weights, only the padding differs
    convs = [m for m in refl.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(m.padding_mode == ("reflect" if m.padding[0] > 0 else "zeros") for m in convs)
    assert all(m.padding_mode == "zeros" for m in zeros.modules() if isinstance(m, torch.nn.Conv2d))
    # A constant image: reflect padding keeps every layer spatially constant; zero padding does not.
    flat = torch.full((1, 3, 64, 64), 0.7)
    with torch.no_grad():
        v_refl = refl.encode_image(flat)[0].flatten(1)   # [c, h*w]
        v_zero = zeros.encode_image(flat)[0].flatten(1)
    assert (v_refl - v_refl[:, :1]).abs().max() < 1e-4
    assert (v_zero - v_zero[:, :1]).abs().max() > 1e-2


def test_localization_map_is_paired_cosine_in_range():
    torch.manual_seed(0)
    model = AVModel(TINY).eval()
    img, spec = inputs(3, 64)
    with torch.no_grad():
        loc = model.localization_map(img, spec)
        out = model(img, spec)
    assert loc.shape == (3, 2, 2)
    assert loc.min() >= -1 - 1e-6 and loc.max() <= 1 + 1e-6
    manual = F.cosine_similarity(out["v_map"], out["a"][:, :, None, None], dim=1)   # [B, h, w]
    torch.testing.assert_close(loc, manual, atol=1e-5, rtol=1e-5)


def test_embed_and_objectness():
    torch.manual_seed(0)
    model = AVModel(TINY).eval()
    img, spec = inputs(2, 64)
    with torch.no_grad():
        e_img, e_aud = model.embed(img, spec)
        out = model(img, spec)
        obj = model.visual_objectness(img)
        torch.testing.assert_close(model.embed_image(img), e_img)
        torch.testing.assert_close(model.embed_audio(spec), e_aud)
    torch.testing.assert_close(e_img.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(e_aud, F.normalize(out["a_emb"], dim=1))
    assert obj.shape == (2, 2, 2) and (obj >= 0).all()
    torch.testing.assert_close(obj, out["v_map"].abs().mean(dim=1))


class NotAWeight:  # a pickled Python object: torch.load(weights_only=True) must refuse it
    pass


def test_checkpoint_round_trip_and_refusals(tmp_path):
    torch.manual_seed(0)
    model = AVModel(TINY).eval()
    img, spec = inputs(2, 64)
    path = tmp_path / "ckpt.pt"
    torch.save({**model.checkpoint_state(), "optimizer": {"lr": 1e-4}, "epoch": 3, "seed": 0}, path)
    loaded = AVModel.from_checkpoint(path, expected_config=TINY)
    assert loaded.config == TINY and not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded.localization_map(img, spec), model.localization_map(img, spec))

    # a run config with a nested model section, and DDP-prefixed keys
    nested = tmp_path / "nested.pt"
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()},
                "config": {"model": TINY.to_dict(), "lr": 1e-4}}, nested)
    assert AVModel.from_checkpoint(nested).config == TINY

    other = dataclasses.replace(TINY, padding_mode="reflect")
    with pytest.raises(DataError, match="padding_mode: checkpoint='zeros' expected='reflect'") as e:
        AVModel.from_checkpoint(path, expected_config=other)
    assert str(path) in str(e.value)

    evil = tmp_path / "evil.pt"
    torch.save({"model": model.state_dict(), "config": TINY.to_dict(), "x": NotAWeight()}, evil)
    with pytest.raises(DataError, match="weights_only"):
        AVModel.from_checkpoint(evil)

    wrong = tmp_path / "wrong.pt"
    torch.save({"model": model.state_dict(), "config": dataclasses.replace(TINY, width=0.25).to_dict()}, wrong)
    with pytest.raises(DataError, match="do not match"):
        AVModel.from_checkpoint(wrong)
    with pytest.raises(DataError, match="not found"):
        AVModel.from_checkpoint(tmp_path / "missing.pt")


def test_config_validation_and_round_trip():
    cfg = ModelConfig(width=0.5, vision_layer4_stride=1, padding_mode="reflect", embed_dim=64)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="vision_stop_at"):
        ModelConfig(vision_stop_at="layer1")
    with pytest.raises(ValueError, match="projection"):
        ModelConfig(projection="vision")
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({"depth": 34})


def test_channels_last_bf16_autocast_forward_and_backward_on_cpu():
    torch.manual_seed(0)
    model = AVModel(dataclasses.replace(TINY, padding_mode="reflect")).to(memory_format=torch.channels_last)
    img, spec = inputs(4, 64)
    img, spec = img.to(memory_format=torch.channels_last), spec.to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(img, spec)
        loss = multi_positive_loss({"v": out}, {"a": out}, LossConfig(semantic=False, multi_view=False))["loss"]
    assert out["v_map"].dtype == torch.bfloat16 and loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert model.vision.conv1.weight.grad is not None and torch.isfinite(model.vision.conv1.weight.grad).all()
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        loc = model.localization_map(img, spec)
    assert loc.dtype == torch.float32 and loc.abs().max() <= 1 + 1e-6
