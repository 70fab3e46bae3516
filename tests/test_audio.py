"""Audio front-end: loading every kind of wav (and every bad one), peer-parity spectrograms, log-mel."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
import soundfile as sf
import torch

from avsl_core.audio import (LogMel, crop_or_tile, load_audio, peer_window, random_time_shift,
                             scipy_spectrogram)
from avsl_core.errors import DataError

SR = 16000


def sine(freq: float, seconds: float, sr: int = SR, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(wave: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / sr)[spec.argmax()])


# ----------------------------------------------------------------------------- good inputs
@pytest.mark.parametrize("subtype,tol", [("PCM_U8", 8e-3), ("PCM_16", 4e-5), ("PCM_24", 1e-6),
                                         ("PCM_32", 1e-6), ("FLOAT", 0.0), ("DOUBLE", 0.0)])
def test_bit_depths_read_as_float_in_range(tmp_path, subtype, tol):
    x = sine(440, 0.25)
    path = tmp_path / f"clip_{subtype}.wav"
    sf.write(path, x, SR, subtype=subtype)
    y = load_audio(path)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert np.abs(y - x).max() <= tol + 1e-7


def test_u8_silence_is_midpoint(tmp_path):
    # unsigned 8-bit stores 0 as 128: soundfile must give 0.0, so the file counts as silent.
    path = tmp_path / "u8_silent.wav"
    sf.write(path, np.zeros(800, np.float32), SR, subtype="PCM_U8")
    assert np.array_equal(load_audio(path, allow_silent=True), np.zeros(800, np.float32))
    with pytest.raises(DataError, match="u8_silent.wav.*silent"):
        load_audio(path)


def test_stereo_is_averaged_or_channel_selected(tmp_path):
    left, right = sine(440, 0.2, amp=0.6), sine(880, 0.2, amp=0.2)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], 1), SR, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path), (left + right) / 2, atol=1e-7)
    np.testing.assert_array_equal(load_audio(path, channel=0), left)
    np.testing.assert_array_equal(load_audio(path, channel=1), right)
    with pytest.raises(DataError, match="stereo.wav.*channel 2"):
        load_audio(path, channel=2)


def test_44k1_is_resampled_with_frequency_kept(tmp_path):
    path = tmp_path / "cd_rate.wav"
    sf.write(path, sine(1000, 1.0, sr=44100), 44100, subtype="PCM_16")
    y = load_audio(path)
    assert y.shape == (16000,)                    # 44100 * 160 / 441 exactly
    assert peak_hz(y, SR) == pytest.approx(1000, abs=1.0)
    assert np.abs(y[2000:-2000]).max() == pytest.approx(0.5, abs=0.01)   # amplitude kept


def test_8k_is_upsampled(tmp_path):
    path = tmp_path / "phone.wav"
    sf.write(path, sine(500, 0.5, sr=8000), 8000, subtype="PCM_16")
    y = load_audio(path)
    assert y.shape == (8000,)
    assert peak_hz(y, SR) == pytest.approx(500, abs=2.0)


def test_float_wav_beyond_unit_range_is_clipped(tmp_path):
    path = tmp_path / "hot.wav"
    sf.write(path, np.array([0.5, 2.0, -3.0, 0.1], np.float32), SR, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(path), np.float32([0.5, 1.0, -1.0, 0.1]))


# ----------------------------------------------------------------------------- bad inputs
def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="nothere.wav.*not found"):
        load_audio(tmp_path / "nothere.wav")


def test_truncated_wav(tmp_path):
    path = tmp_path / "cut.wav"
    sf.write(path, sine(440, 0.5), SR, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])       # header still says 0.5 s
    with pytest.raises(DataError, match="cut.wav.*truncated"):
        load_audio(path)


def test_corrupt_bytes(tmp_path):
    path = tmp_path / "noise.wav"
    path.write_bytes(b"this is not a wav file" * 20)
    with pytest.raises(DataError, match=r"noise.wav.*unreadable.*\(.*\)"):   # libsndfile text kept
        load_audio(path)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="empty.wav.*0 bytes"):
        load_audio(path)


def test_zero_length_wav(tmp_path):
    path = tmp_path / "nosamples.wav"
    sf.write(path, np.zeros(0, np.float32), SR, subtype="PCM_16")
    with pytest.raises(DataError, match="nosamples.wav.*zero-length"):
        load_audio(path)


def test_silent_wav(tmp_path):
    path = tmp_path / "quiet.wav"
    sf.write(path, np.zeros(1600, np.float32), SR, subtype="PCM_16")
    with pytest.raises(DataError, match="quiet.wav.*silent"):
        load_audio(path)
    assert load_audio(path, allow_silent=True).shape == (1600,)


def test_nan_samples(tmp_path):
    path = tmp_path / "nan.wav"
    sf.write(path, np.array([0.1, np.nan, 0.2], np.float32), SR, subtype="FLOAT")
    with pytest.raises(DataError, match="nan.wav.*NaN"):
        load_audio(path)


# ----------------------------------------------------------------------------- windows
def test_crop_or_tile():
    w = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(crop_or_tile(w, 4), [0, 1, 2, 3])
    np.testing.assert_array_equal(crop_or_tile(w, 4, offset=6), [6, 7, 8, 9])
    np.testing.assert_array_equal(crop_or_tile(w, 25), np.tile(w, 3)[:25])
    np.testing.assert_array_equal(crop_or_tile(w, 12, offset=3), [3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4])
    with pytest.raises(ValueError):
        crop_or_tile(w, 4, offset=7)
    starts = {crop_or_tile(w, 4, rng=np.random.default_rng(s))[0] for s in range(200)}
    assert starts == set(range(7))                 # uniform over every valid start


def test_random_time_shift_changes_equal_length_clip():
    w = np.arange(48000, dtype=np.float32)
    rng = np.random.default_rng(0)
    views = [random_time_shift(w, 48000, rng) for _ in range(5)]
    for v in views:
        assert v.shape == (48000,)
        assert np.array_equal(np.sort(v), w)       # a circular shift: same samples
    assert len({v[0] for v in views}) > 1


# ----------------------------------------------------------------------------- peer spectrograms
def test_official_parity_with_direct_scipy_call():
    rng = np.random.default_rng(1)
    wave = rng.uniform(-1.2, 1.2, 5 * SR).astype(np.float32)      # short (tiled) and out of range
    ours = scipy_spectrogram(wave, "official")
    ref_in = np.tile(wave, 3)[: 10 * SR][int(16000 * 3.5): int(16000 * 6.5)]
    _, _, spec = scipy.signal.spectrogram(np.clip(ref_in, -1, 1), 16000, nperseg=512, noverlap=353)
    ref = (np.log(spec + 1e-7) / 12)[None]
    assert ours.shape == (1, 257, 299) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_ezvsl_takes_central_three_seconds():
    rng = np.random.default_rng(2)
    wave = rng.uniform(-1, 1, 7 * SR + 1).astype(np.float32)
    ours = scipy_spectrogram(wave, "ezvsl")
    start = (7 * SR + 1 - 3 * SR) // 2                            # max(D/2 - 1.5 s, 0) in samples
    _, _, spec = scipy.signal.spectrogram(wave[start:start + 3 * SR], 16000, nperseg=512, noverlap=274)
    assert ours.shape == (1, 257, 200)
    np.testing.assert_allclose(ours, (np.log(spec + 1e-7) / 12)[None], rtol=1e-5, atol=1e-6)
    short = np.arange(SR, dtype=np.float32)                       # 1 s clip: whole clip, tiled
    np.testing.assert_array_equal(peer_window(short, "ezvsl"), np.tile(short, 3))


def test_official_window_of_long_clip():
    w = np.arange(12 * SR, dtype=np.float32)
    np.testing.assert_array_equal(peer_window(w, "official"), w[56000:104000])


@pytest.mark.parametrize("protocol", ["official", "ezvsl"])
def test_sine_peaks_in_known_bin(protocol):
    spec = scipy_spectrogram(sine(1000, 3.0), protocol)[0]        # bins are 16000/512 = 31.25 Hz
    assert (spec.argmax(axis=0) == 32).all()


def test_unknown_protocol():
    with pytest.raises(ValueError, match="lvs"):
        scipy_spectrogram(np.ones(100, np.float32), "lvs")


# ----------------------------------------------------------------------------- log-mel
def test_logmel_shapes_and_batching():
    m = LogMel()
    batch = np.stack([sine(300, 3.0), sine(3000, 3.0)])
    out = m(torch.from_numpy(batch))
    assert out.shape == (2, 1, 64, m.n_frames(48000)) and out.dtype == torch.float32
    assert 64 <= out.shape[-1] <= 96
    torch.testing.assert_close(m(batch[1]), out[1:])             # [T] input == row of the batch
    assert out[0, 0].mean(1).argmax() < out[1, 0].mean(1).argmax()   # higher tone, higher band
    silent = m(torch.zeros(48000))
    torch.testing.assert_close(silent, torch.full_like(silent, float(np.log(1e-6) / 12)))


def test_logmel_configurable():
    m = LogMel(n_mels=40, n_fft=1024, hop_length=320)
    assert m(torch.zeros(2, 16000)).shape == (2, 1, 40, 51)
