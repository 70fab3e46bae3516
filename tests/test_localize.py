"""`python -m avsl_core.localize` on a user's own files: any image mode, any wav, clear failures."""
import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from avsl_core import localize as L
from avsl_core import train as T


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt")
    torch.set_num_threads(1)
    cfg = T.TrainConfig.from_dict(dict(
        model={"width": 0.125, "vision_stop_at": "layer3", "head_dim": 16},
        loss={"semantic": False}, data={"kind": "synthetic", "image_size": 48, "options": {"n": 16}},
        epochs=1, batch_size=8, precision="fp32", channels_last=False))
    T.train(cfg, out, progress=False)
    return out / T.CKPT_NAME


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    wav = tmp_path / "clip.wav"        # stereo, 44.1 kHz, 24-bit: mixed and resampled on load
    sf.write(wav, 0.3 * rng.standard_normal((44100, 2)), 44100, subtype="PCM_24")
    return tmp_path, wav


def test_writes_overlay_and_map_at_the_photo_size(ckpt, files):
    tmp, wav = files
    img = tmp / "photo.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(img)
    out = tmp / "heat.png"
    assert L.main(["--checkpoint", str(ckpt), "--image", str(img), "--audio", str(wav), "--out", str(out)]) == 0
    m = np.load(tmp / "heat.npy")
    assert m.shape == (60, 80) and m.dtype == np.float32 and np.isfinite(m).all()
    assert np.abs(m).max() <= 1 + 1e-5 and m.std() > 0          # cosine units, not a constant
    png = Image.open(out)
    assert png.size == (80, 60) and png.mode == "RGB"
    assert L.checkpoint_inputs(ckpt) == {"image_size": 48, "frontend": "logmel"}


@pytest.mark.parametrize("mode,ext", [("L", "png"), ("P", "png"), ("LA", "png"), ("RGBA", "png"),
                                      ("CMYK", "jpg"), ("I;16", "png"), ("1", "bmp")])
def test_accepts_any_image_mode(ckpt, files, mode, ext):
    tmp, wav = files
    img = tmp / f"x.{ext}"
    Image.new("RGB", (40, 30), (200, 30, 30)).convert(mode).save(img)
    m = L.localize(ckpt, img, wav, tmp / "h.png")
    assert m.shape == (30, 40)


def test_fails_clearly_on_bad_inputs(ckpt, files, capsys):
    tmp, wav = files
    img = tmp / "ok.png"
    Image.new("RGB", (32, 32)).save(img)
    bad_img, bad_wav, bad_ckpt = tmp / "notes.jpg", tmp / "broken.wav", tmp / "c.pt"
    bad_img.write_text("not an image")
    bad_wav.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    bad_ckpt.write_text("nope")
    for args, name in [((str(ckpt), str(bad_img), str(wav)), "notes.jpg"),
                       ((str(ckpt), str(img), str(bad_wav)), "broken.wav"),
                       ((str(bad_ckpt), str(img), str(wav)), "c.pt"),
                       ((str(ckpt), str(img), str(tmp / "missing.wav")), "missing.wav")]:
        rc = L.main(["--checkpoint", args[0], "--image", args[1], "--audio", args[2], "--out", str(tmp / "o.png")])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("error: ") and name in err, err
    assert not (tmp / "o.png").exists()
