"""avsl_core.launch: the training page's runs in-process, or under torchrun (2 CPU ranks, gloo)."""
import json

from avsl_core import launch
from avsl_core.train import TrainConfig, load_config

CFG = dict(model={"width": 0.125, "vision_stop_at": "layer3", "head_dim": 16, "padding_mode": "reflect"},
           loss={"semantic": False, "pooling": "topk"},
           data={"kind": "synthetic", "image_size": 32, "options": {"n": 64}},
           epochs=1, batch_size=16, lr=1e-3, precision="fp32", channels_last=False, seed=1)


def test_torchrun_command_is_the_command_line_trainer(tmp_path):
    cmd = launch.torchrun_command(tmp_path / "c.yaml", tmp_path / "out", 4, resume=True)
    assert cmd[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m"]
    assert cmd[6:] == ["avsl_core.train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "out"),
                       "--no-progress", "--resume"]


def test_one_rank_trains_in_process(tmp_path):
    s = launch.train_run(TrainConfig.from_dict(CFG), tmp_path / "run", nproc=1)
    assert s["world_size"] == 1 and s["steps"] == 4
    assert not (tmp_path / "run" / "launch_config.yaml").exists()


def test_two_ranks_go_through_torchrun_with_the_same_config(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cfg = TrainConfig.from_dict(CFG)
    s = launch.train_run(cfg, tmp_path / "run", nproc=2, log=lambda *a: None)
    assert s["world_size"] == 2 and s["steps"] == 4          # 64 items, global batch 16 split over 2 ranks
    assert load_config(str(tmp_path / "run" / "launch_config.yaml")) == cfg
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert stored == json.loads(json.dumps(cfg.to_dict()))   # what the training page compares on a rerun
