"""Trainer options added for the run catalogue and the CPU recipe: neighbours_k and anchor augmentation."""
import numpy as np
import pytest
import torch

from avsl_core import train as T
from avsl_core.batch_views import BatchViews, normalize


def test_neighbours_k_takes_the_most_similar_columns(tmp_path):
    table = np.arange(20, dtype=np.int32).reshape(4, 5)     # rows sorted most similar first
    np.save(tmp_path / "t.npy", table)
    np.testing.assert_array_equal(T._load_table(str(tmp_path / "t.npy"), 2), table[:, :2])
    np.testing.assert_array_equal(T._load_table(str(tmp_path / "t.npy")), table)
    with pytest.raises(ValueError, match="neighbours_k=6 outside 1..5"):
        T._load_table(str(tmp_path / "t.npy"), 6)


def test_neighbours_k_must_be_positive():
    with pytest.raises(ValueError, match="neighbours_k"):
        T.TrainConfig(neighbours_k=0)


def _items(b=4, s=16):
    g = torch.Generator().manual_seed(0)
    return [{"index": i, "id": str(i), "image_u8": torch.randint(0, 256, (3, s, s), generator=g, dtype=torch.uint8),
             "image_conc_u8": torch.randint(0, 256, (3, s, s), generator=g, dtype=torch.uint8),
             "spec": torch.zeros(1, 4, 8), "spec_aug": torch.zeros(1, 4, 8)} for i in range(b)]


def test_anchor_augment_off_keeps_plain_frames():
    items = _items()
    b = BatchViews(augment=False)(items)
    x = torch.stack([it["image_u8"] for it in items]).float() / 255
    torch.testing.assert_close(b["image"], normalize(x))


def test_anchor_augment_crops_and_flips_anchor_and_conc_views():
    torch.manual_seed(0)
    items = _items()
    b = BatchViews(augment=False, anchor={"scale": (0.5, 0.6), "flip_p": 1.0})(items)
    x = torch.stack([it["image_u8"] for it in items]).float() / 255
    xc = torch.stack([it["image_conc_u8"] for it in items]).float() / 255
    assert b["image"].shape == x.shape and b["image_conc"].shape == xc.shape
    assert not torch.allclose(b["image"], normalize(x))
    assert not torch.allclose(b["image_conc"], normalize(xc))


def test_anchor_augment_needs_fast_views():
    cfg = T.TrainConfig.from_dict({"data": {"fast_views": False, "anchor_augment": {"scale": [0.6, 1.0]},
                                            "train_dir": "nowhere"}})
    with pytest.raises(ValueError, match="anchor_augment needs data.fast_views"):
        T.build_dataset(cfg, cfg.data.train_dir, with_conc=False)


def test_lr_factor_warms_up_then_holds_or_decays_by_cosine():
    flat = T.TrainConfig(lr=1e-3, warmup_steps=4)
    assert [T.lr_factor(flat, s) for s in (0, 3, 100)] == [0.25, 1.0, 1.0]
    cos = T.TrainConfig(lr=1e-3, warmup_steps=4, lr_decay_steps=14)
    assert T.lr_factor(cos, 0) == 0.25 and T.lr_factor(cos, 4) == 1.0
    assert T.lr_factor(cos, 9) == pytest.approx(0.5)          # half-way through the decay
    assert T.lr_factor(cos, 14) == pytest.approx(0.0, abs=1e-12) and T.lr_factor(cos, 50) == pytest.approx(0.0, abs=1e-12)
    assert all(T.lr_factor(cos, s) >= T.lr_factor(cos, s + 1) for s in range(3, 20))
    with pytest.raises(ValueError, match="lr_decay_steps"):
        T.TrainConfig(warmup_steps=10, lr_decay_steps=10)
