"""Trainer (issue 3): exact resume, config refusal, the semantic switch's precondition, a smoke run that learns."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from avsl_core import train as T
from avsl_core.models import AVModel

TINY_MODEL = {"width": 0.125, "vision_stop_at": "layer3", "head_dim": 16, "padding_mode": "reflect"}


def tiny_cfg(**kw) -> T.TrainConfig:
    base = dict(model=TINY_MODEL, loss={"semantic": False, "pooling": "topk"},
                data={"kind": "synthetic", "image_size": 32, "options": {"n": 48}},
                epochs=2, batch_size=16, lr=1e-3, warmup_steps=2, precision="fp32", channels_last=False,
                num_workers=0, seed=3)
    base.update(kw)
    return T.TrainConfig.from_dict(base)


def weights(out) -> dict:
    return torch.load(out / T.CKPT_NAME, weights_only=True)["model"]


def assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_two_epochs_equal_one_plus_resume_plus_one(tmp_path):
    straight = T.train(tiny_cfg(), tmp_path / "straight", progress=False)
    assert straight["steps"] == 6 and straight["stop_reason"] == "completed"
    # "killed" after epoch 1: a run of 1 epoch, then --resume with the full config
    T.train(tiny_cfg(epochs=1), tmp_path / "split", progress=False)
    ck = torch.load(tmp_path / "split" / T.CKPT_NAME, weights_only=True)
    assert ck["epoch"] == 1 and ck["step"] == 3 and set(ck["rng"][0]) >= {"python", "numpy", "torch"}
    resumed = T.train(tiny_cfg(), tmp_path / "split", resume=True, progress=False)
    assert resumed["steps"] == 6
    assert_same_weights(weights(tmp_path / "straight"), weights(tmp_path / "split"))
    assert resumed["param_sha256"] == straight["param_sha256"]
    # the per-step log has each step exactly once, and equal losses
    rows_a = list(csv.DictReader((tmp_path / "straight" / "steps.csv").open()))
    rows_b = list(csv.DictReader((tmp_path / "split" / "steps.csv").open()))
    assert [r["step"] for r in rows_b] == [str(i) for i in range(1, 7)]
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b]


def test_mid_epoch_stop_and_resume_is_exact(tmp_path):
    straight = T.train(tiny_cfg(), tmp_path / "a", progress=False)
    stopped = T.train(tiny_cfg(max_steps=4), tmp_path / "b", progress=False)   # stops inside epoch 2
    assert stopped["stop_reason"] == "max_steps" and stopped["steps"] == 4
    assert torch.load(tmp_path / "b" / T.CKPT_NAME, weights_only=True)["batch"] == 1
    resumed = T.train(tiny_cfg(), tmp_path / "b", resume=True, progress=False)
    assert resumed["param_sha256"] == straight["param_sha256"]


def test_resume_refuses_checkpoint_of_another_config(tmp_path):
    T.train(tiny_cfg(epochs=1), tmp_path / "r", progress=False)
    with pytest.raises(ValueError, match=r"another config.*lr: checkpoint=0.001 now=0.002"):
        T.train(tiny_cfg(lr=2e-3), tmp_path / "r", resume=True, progress=False)
    with pytest.raises(ValueError, match=r"model.width"):
        T.train(tiny_cfg(model={**TINY_MODEL, "width": 0.25}), tmp_path / "r", resume=True, progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        T.train(tiny_cfg(epochs=1), tmp_path / "r", progress=False)


def test_semantic_without_neighbour_table_is_an_error(tmp_path):
    cfg = tiny_cfg(loss={"semantic": True}, data={"kind": "scenes", "train_dir": str(tmp_path)})
    with pytest.raises(ValueError, match="semantic=True needs .*neighbour table"):
        T.train(cfg, tmp_path / "s", progress=False)
    assert not (tmp_path / "s").exists()      # refused before anything was written


def test_time_budget_stops_after_the_crossing_step_and_checkpoints(tmp_path):
    s = T.train(tiny_cfg(time_budget_min=1e-6, epochs=5), tmp_path / "b", progress=False)
    assert s["stop_reason"] == "time_budget" and s["steps"] == 1
    ck = torch.load(tmp_path / "b" / T.CKPT_NAME, weights_only=True)
    assert ck["step"] == 1 and ck["stop_reason"] == "time_budget"


def test_smoke_run_learns_and_writes_its_records(tmp_path):
    cfg = tiny_cfg(epochs=6, data={"kind": "synthetic", "image_size": 32, "options": {"n": 64}}, lr=2e-3)
    s = T.train(cfg, tmp_path / "smoke", progress=False)
    losses = [e["mean_loss"] for e in s["epochs"]]
    assert losses[-1] < losses[0] - 0.3, losses
    out = tmp_path / "smoke"
    for f in ("last.pt", "model_card.md", "config.json", "steps.csv", "epochs.json", "loss_curve.png", "summary.json"):
        assert (out / f).stat().st_size > 0, f
    assert json.loads((out / "config.json").read_text()) == cfg.to_dict()
    model = AVModel.from_checkpoint(out / "last.pt")         # reads the stored model config
    batch = T.SyntheticAV(4, 32).__getitem__
    img = torch.stack([batch(i)["image"] for i in range(4)])
    spec = torch.stack([batch(i)["spec"] for i in range(4)])
    with torch.no_grad():
        m = model.localization_map(img, spec)
    assert m.shape == (4, 2, 2) and m.abs().max() <= 1 + 1e-5 and torch.isfinite(m).all()


def test_load_config_sections_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("profile: x\ntrain:\n  main:\n    lr: 0.001\n    data: {kind: synthetic}\n")
    cfg = T.load_config(str(p), "train.main", ["batch_size=32", "loss.pooling=topk", "data.image_size=48"])
    assert (cfg.lr, cfg.batch_size, cfg.loss, cfg.data.image_size) == (1e-3, 32, {"pooling": "topk"}, 48)
    with pytest.raises(ValueError, match="unknown field.*'bogus'"):
        T.load_config(str(p), "train.main", ["bogus=1"])
    with pytest.raises(KeyError, match="no section"):
        T.load_config(str(p), "train.other")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """A tiny AVScenes render (32 px) from generated assets: fixtures_assets -> composer."""
    import sys
    sys.path.insert(0, str(Path(__file__).parent))
    from fixtures_assets import make_fake_assets
    from avsl_core.data import avscenes
    tmp = tmp_path_factory.mktemp("scenes")
    assets, splits = make_fake_assets(tmp)
    avscenes.build({"profile": "smoke", "n_train": 64, "n_test": 4, "n_negatives": 2, "n_swap_images": 1,
                    "n_single_train": 32, "image_size": 32, "workers": 0}, assets, tmp / "scenes",
                   splits_path=splits, log=lambda *a: None)
    return tmp / "scenes" / "smoke"


def test_smoke_epochs_on_rendered_scenes(scenes, tmp_path):
    """End to end on generated data: fake assets -> composer -> fast views -> trainer; the loss falls."""
    rng = np.random.default_rng(0)
    np.save(tmp_path / "img_nn.npy", rng.integers(0, 64, (64, 5)).astype(np.int32))
    np.save(tmp_path / "aud_nn.npy", rng.integers(0, 64, (64, 5)).astype(np.int32))
    cfg = tiny_cfg(epochs=3, lr=2e-3, curriculum_steps=2, loss={"semantic": True, "pooling": "topk"},
                   neighbours=str(tmp_path / "img_nn.npy"), audio_neighbours=str(tmp_path / "aud_nn.npy"),
                   data={"kind": "scenes", "train_dir": str(scenes / "train"), "image_size": 32,
                         "curriculum_dir": str(scenes / "single_train")})
    s = T.train(cfg, tmp_path / "run", progress=False)
    assert [e["name"] for e in s["epochs"]] == ["curriculum"] + ["train"] * 3
    assert s["steps"] == 2 + 3 * 4
    losses = [e["mean_loss"] for e in s["epochs"][1:]]
    assert losses[-1] < losses[0], losses
    rows = list(csv.DictReader((tmp_path / "run" / "steps.csv").open()))
    assert {r["phase"] for r in rows[:2]} == {"curriculum"} and all(float(r["loss_A"]) > 0 for r in rows)


def test_fast_views_equal_the_dataset_views(scenes):
    from avsl_core.batch_views import BatchViews, FastTrainViews
    from avsl_core.data.datasets import TrainDataset
    d = scenes / "train"
    table = np.tile(np.arange(64)[:, None], (1, 2))[::-1].copy()          # neighbour of i: 63 - i
    ref = TrainDataset(d / "manifest.jsonl", d, image_size=32, neighbours=table)
    fast = FastTrainViews(d / "manifest.jsonl", d, image_size=32, neighbours=table)
    b = BatchViews()([fast[i] for i in range(4)])
    for i in range(4):
        r = ref[i]
        assert torch.equal(b["spec"][i], r["spec"]) and torch.allclose(b["image"][i], r["image"], atol=1e-6)
        assert torch.allclose(b["image_conc"][i], ref[63 - i]["image"], atol=1e-6)
        assert torch.equal(b["spec_conc"][i], ref[63 - i]["spec"])
    # a_aug: a window of frames of the whole clip's log-mel (4 s clip: 126 frames, window 94)
    full = fast.full_specs[5].float()
    aug = fast[5]["spec_aug"]
    assert full.shape[-1] == 126 and aug.shape == ref[5]["spec"].shape
    assert any(torch.allclose(aug, full[..., o:o + 94]) for o in range(126 - 94 + 1))
    assert b["image_aug"].shape == b["image"].shape


def test_batch_simclr_parameters_do_what_they_say():
    from avsl_core.batch_views import batch_simclr
    torch.manual_seed(0)
    x = torch.rand(4, 3, 16, 16)
    off = dict(scale=(1, 1), ratio=(1, 1), flip_p=0, jitter_p=0, grayscale_p=0, blur_p=0)
    assert torch.allclose(batch_simclr(x, **off), x, atol=1e-5)                          # identity
    assert torch.allclose(batch_simclr(x, **{**off, "flip_p": 1}), x.flip(-1), atol=1e-5)
    g = batch_simclr(x, **{**off, "grayscale_p": 1})
    assert torch.allclose(g[:, 0], g[:, 1]) and torch.allclose(g[:, 1], g[:, 2])
    assert torch.allclose(g[:, 0], (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1), atol=1e-5)
    blurred = batch_simclr(x, **{**off, "blur_p": 1})
    assert blurred.std() < x.std() and torch.allclose(blurred.mean(), x.mean(), atol=0.02)
    same = x[:1].expand(8, 3, 16, 16)
    y = batch_simclr(same)                                   # independent parameters per image
    assert y.min() >= 0 and y.max() <= 1 and (y[0] - y[1:]).abs().amax((1, 2, 3)).min() > 1e-3


def test_ours_uses_nine_pairs_with_conc_views_and_four_without():
    cfg = tiny_cfg(loss={"semantic": True}, neighbours="unused.npy")
    model = AVModel(cfg.model_config)
    method = T.METHODS["ours"](cfg, model)
    batch = torch.utils.data.default_collate([T.SyntheticAV(8, 32)[i] for i in range(8)])
    full = method.loss(model, batch)
    assert sum(k.startswith("L/") for k in full) == 9 and sum(k.startswith("A/") for k in full) == 9
    no_conc = {k: v for k, v in batch.items() if not k.endswith("_conc")}     # a curriculum batch
    part = method.loss(model, no_conc)
    assert sorted(k for k in part if k.startswith("L/")) == ["L/v,a", "L/v,a_aug", "L/v_aug,a", "L/v_aug,a_aug"]


def test_getitems_gathers_the_items_draws(scenes):
    """FastTrainViews.__getitems__ (what the DataLoader calls) = the items of __getitem__, gathered."""
    from avsl_core.batch_views import BatchViews, FastTrainViews, SeededBatch
    from avsl_core.data.datasets import collate
    d = scenes / "train"
    rng = np.random.default_rng(1)
    fast = FastTrainViews(d / "manifest.jsonl", d, image_size=32, neighbours=rng.integers(0, 64, (64, 5)),
                          audio_neighbours=rng.integers(0, 64, (64, 5)), audio_shift=True)
    idx = [5, 17, 3, 60, 5, 41]
    T.reseed_dataset(fast, [0])
    one_by_one = collate([fast[i] for i in idx])
    T.reseed_dataset(fast, [0])
    gathered = fast.__getitems__(idx)
    assert gathered.keys() == one_by_one.keys()
    for k, v in one_by_one.items():
        assert (torch.equal(v, gathered[k]) if isinstance(v, torch.Tensor) else v == gathered[k]), k
    assert gathered["image_u8"].is_contiguous(memory_format=torch.channels_last)
    # a SeededBatch draws from its own seed: the same batch twice gives the same views
    views = BatchViews(anchor={"scale": (0.6, 1.0), "flip_p": 0.5}, channels_last=True)
    a, b = (views(fast.__getitems__(SeededBatch(idx, 99))) for _ in range(2))
    c = views(fast.__getitems__(SeededBatch(idx, 100)))
    for k in ("image", "image_aug", "image_conc", "spec", "spec_aug", "spec_conc"):
        assert torch.equal(a[k], b[k]), k
    assert not torch.equal(a["image_aug"], c["image_aug"])


def test_scenes_views_do_not_depend_on_workers_and_mid_epoch_resume_is_exact(scenes, tmp_path):
    """Each batch's draws come from its (seed, phase, rank, batch) seed: num_workers 0 and 1 train
    the same parameters, and a run stopped inside an epoch and resumed (with the other setting)
    ends where the uninterrupted one does."""
    rng = np.random.default_rng(0)
    np.save(tmp_path / "img_nn.npy", rng.integers(0, 64, (64, 5)).astype(np.int32))
    base = dict(epochs=2, curriculum_steps=2, loss={"semantic": True, "pooling": "topk"},
                neighbours=str(tmp_path / "img_nn.npy"),
                data={"kind": "scenes", "train_dir": str(scenes / "train"), "image_size": 32,
                      "curriculum_dir": str(scenes / "single_train"),
                      "anchor_augment": {"scale": [0.6, 1.0], "flip_p": 0.5, "audio_shift": True}})
    w0 = T.train(tiny_cfg(**base), tmp_path / "w0", progress=False)
    w1 = T.train(tiny_cfg(**base, num_workers=1), tmp_path / "w1", progress=False)
    assert w0["steps"] == w1["steps"] == 2 + 2 * 4
    assert w0["param_sha256"] == w1["param_sha256"]
    stopped = T.train(tiny_cfg(**base, num_workers=1, max_steps=5), tmp_path / "r", progress=False)
    assert stopped["stop_reason"] == "max_steps"
    assert torch.load(tmp_path / "r" / T.CKPT_NAME, weights_only=True)["batch"] == 3     # inside epoch 1
    resumed = T.train(tiny_cfg(**base), tmp_path / "r", resume=True, progress=False)
    assert resumed["param_sha256"] == w0["param_sha256"]
    rows_a = list(csv.DictReader((tmp_path / "w0" / "steps.csv").open()))
    rows_b = list(csv.DictReader((tmp_path / "r" / "steps.csv").open()))
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b]


def test_two_epochs_equal_one_plus_resume_plus_one_with_a_worker(tmp_path):
    """The synthetic set draws from the worker's torch seed (per phase): exact at epoch boundaries."""
    straight = T.train(tiny_cfg(num_workers=1), tmp_path / "straight", progress=False)
    T.train(tiny_cfg(epochs=1, num_workers=1), tmp_path / "split", progress=False)
    resumed = T.train(tiny_cfg(num_workers=1), tmp_path / "split", resume=True, progress=False)
    assert resumed["param_sha256"] == straight["param_sha256"]
