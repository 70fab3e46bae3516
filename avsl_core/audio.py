"""Audio front-ends: robust wav loading, the peers' scipy spectrograms (parity) and a log-mel module.

Paper §4.1 / SPEC §1 "Preprocessing for real data": 16 kHz mono, 3 s windows.

* ``load_audio``        any channels / bit depth / sample rate -> float32 mono at 16 kHz, or a
                        ``DataError`` naming the file (missing, corrupt, truncated, empty, silent, NaN).
* ``scipy_spectrogram`` the two peer pipelines, value for value:
    - ``"official"`` (kaistmm/SSLalignment ``datasets_lvs``): tile to >= 10 s, keep the first 10 s,
      samples [int(16000*3.5), int(16000*6.5)), clip ±1, ``scipy.signal.spectrogram(nperseg=512,
      noverlap=353)``, ``log(S + 1e-7) / 12`` -> [1, 257, 299];
    - ``"ezvsl"`` (EZ-VSL / SLAVC / FNAC ``load_spectrogram``): the window of 3 s starting at
      ``max(D/2 - 1.5 s, 0)`` (the central 3 s; the whole clip if it is shorter), tiled if short,
      clip ±1, ``noverlap=274``, ``log(S + 1e-7) / 12`` -> [1, 257, 200].
* ``LogMel``            a cheap torchaudio log-mel front-end for CPU runs, batch-friendly.
* ``crop_or_tile`` / ``random_time_shift``  fixed-length windows; the latter is the ``a_aug`` view
  (paper §3: "the same clip with a random time shift").
"""
from __future__ import annotations

import math
import os
import struct
from pathlib import Path

import numpy as np
import scipy.signal
import soundfile as sf
import torch
import torchaudio

from avsl_core.errors import DataError

SAMPLE_RATE = 16000
SILENCE_THRESHOLD = 1e-6          # |x| below this everywhere -> "silent"
LOG_EPS = 1e-7                    # peers: log(S + 1e-7)
LOG_SCALE = 12.0                  # peers: Normalize(mean=0, std=12)

# protocol -> (window start rule, window length in samples, noverlap); both use nperseg=512.
_PROTOCOLS = {
    "official": dict(noverlap=353, n_frames=299),
    "ezvsl": dict(noverlap=274, n_frames=200),
}


# ----------------------------------------------------------------------------- loading
def _wav_truncation(path: Path) -> str | None:
    """Return a message if a RIFF/WAVE file's 'data' chunk declares more bytes than the file holds.

    libsndfile silently shortens such files (it reads what is there), so we check the header
    ourselves. Streaming writers put 0 or 0xFFFFFFFF in the size field: those are accepted.
    Non-RIFF formats return None (libsndfile reports their decoding errors itself).
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
            return None
        endian = "<" if head[:4] == b"RIFF" else ">"
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk_id, chunk_size = struct.unpack(endian + "4sI", f.read(8))
            if chunk_id == b"data":
                if chunk_size in (0, 0xFFFFFFFF):
                    return None
                available = size - pos - 8
                if chunk_size > available:
                    return (f"truncated wav: header declares {chunk_size} data bytes, "
                            f"file holds {available}")
                return None
            pos += 8 + chunk_size + (chunk_size & 1)
    return None


def resample(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Polyphase resampling with exact integer ratio (gcd); ``len(out) = ceil(len * up / down)``."""
    if orig_sr == target_sr:
        return wave.astype(np.float32, copy=False)
    g = math.gcd(int(orig_sr), int(target_sr))
    up, down = int(target_sr) // g, int(orig_sr) // g
    return scipy.signal.resample_poly(wave, up, down, axis=0).astype(np.float32)


def load_audio(path: str | os.PathLike, target_sr: int = SAMPLE_RATE, *, channel: int | None = None,
               allow_silent: bool = False) -> np.ndarray:
    """Read an audio file as float32 mono at ``target_sr``, values in [-1, 1].  -> [T]

    Any format libsndfile reads (wav with u8/16/24/32-bit int or float samples, flac, ogg, ...).
    Channels are mixed to mono by averaging (as EZ-VSL/SLAVC do); ``channel=k`` keeps channel k
    instead (the official SSLalignment loader keeps channel 0). Sample-rate conversion is
    ``scipy.signal.resample_poly`` with the exact ratio. The result is clipped to [-1, 1] (float files
    may exceed it; resampling can overshoot slightly), as both peer pipelines clip before the STFT.

    Raises ``DataError`` naming the file for: a missing file, an empty (0-byte) file, an unreadable or
    corrupt file (libsndfile's message included), a truncated wav, zero samples, NaN/inf samples and
    silence (all |x| < 1e-6 after channel selection; pass ``allow_silent=True`` for ambience-only
    negatives that may legitimately be silent).
    """
    p = Path(path)
    if not p.exists():
        raise DataError(p, "audio file not found")
    if not p.is_file():
        raise DataError(p, "expected an audio file, found a directory or special file")
    if p.stat().st_size == 0:
        raise DataError(p, "empty file (0 bytes)")
    problem = _wav_truncation(p)
    if problem:
        raise DataError(p, problem)
    try:
        with sf.SoundFile(p) as f:
            expected, sr, n_channels = f.frames, f.samplerate, f.channels
            data = f.read(dtype="float32", always_2d=True)           # [T, C]
    except (sf.LibsndfileError, RuntimeError, ValueError) as e:
        raise DataError(p, f"unreadable or corrupt audio ({e})") from e
    if data.shape[0] < expected:
        raise DataError(p, f"truncated audio: header declares {expected} frames, read {data.shape[0]}")
    if data.shape[0] == 0:
        raise DataError(p, "zero-length audio (0 samples)")
    if not np.isfinite(data).all():
        raise DataError(p, "audio contains NaN or infinite samples")
    if channel is None:
        wave = data.mean(axis=1)                                     # [T]
    else:
        if not 0 <= channel < n_channels:
            raise DataError(p, f"channel {channel} requested, file has {n_channels} channel(s)")
        wave = data[:, channel]
    if not allow_silent and np.abs(wave).max() < SILENCE_THRESHOLD:
        raise DataError(p, f"silent audio (all |samples| < {SILENCE_THRESHOLD:g})")
    wave = resample(wave, sr, target_sr)
    return np.clip(wave, -1.0, 1.0).astype(np.float32, copy=False)


# ----------------------------------------------------------------------------- windows
def _check_wave(wave: np.ndarray, n_samples: int) -> np.ndarray:
    wave = np.asarray(wave)
    if wave.ndim != 1 or wave.shape[0] == 0:
        raise ValueError(f"expected a non-empty 1-D waveform, got shape {wave.shape}")
    if n_samples <= 0:
        raise ValueError(f"n_samples must be positive, got {n_samples}")
    return wave


def crop_or_tile(wave: np.ndarray, n_samples: int, offset: int | None = None,
                 rng: np.random.Generator | None = None) -> np.ndarray:
    """A window of exactly ``n_samples``.  [T] -> [n_samples]

    Long clips (T > n_samples): the window starts at ``offset`` (in [0, T - n_samples]), or at a
    uniform random start when ``rng`` is given, else at 0. Short clips (T <= n_samples) are tiled
    (repeated end to end, as all peers do); ``offset`` (in [0, T)) or ``rng`` then picks the phase
    of the repetition, i.e. a circular shift.
    """
    wave = _check_wave(wave, n_samples)
    t = wave.shape[0]
    max_offset = t - n_samples if t > n_samples else t - 1
    if offset is None:
        offset = int(rng.integers(0, max_offset + 1)) if rng is not None else 0
    if not 0 <= offset <= max_offset:
        raise ValueError(f"offset {offset} outside [0, {max_offset}] for a clip of {t} samples")
    if t > n_samples:
        return wave[offset:offset + n_samples]
    reps = math.ceil((offset + n_samples) / t)
    return np.tile(wave, reps)[offset:offset + n_samples]


def random_time_shift(wave: np.ndarray, n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """The ``a_aug`` view (paper §3): the same clip seen through a randomly shifted window.

    Clips longer than the window get a uniform random window; clips of the window's length or shorter
    get a uniform random circular shift (so a 3 s clip with a 3 s window still changes).  -> [n_samples]
    """
    return crop_or_tile(wave, n_samples, rng=rng)


# ----------------------------------------------------------------------------- peer spectrograms
def peer_window(wave: np.ndarray, protocol: str = "official", sample_rate: int = SAMPLE_RATE
                ) -> np.ndarray:
    """The 3 s segment each peer feeds to its STFT (before clipping).  [T] -> [3 * sample_rate]"""
    wave = _check_wave(wave, 1)
    n3 = 3 * sample_rate
    if protocol == "official":
        n10 = 10 * sample_rate
        if wave.shape[0] < n10:
            wave = np.tile(wave, n10 // wave.shape[0] + 1)
        return wave[:n10][int(sample_rate * 3.5):int(sample_rate * 6.5)]
    if protocol == "ezvsl":
        # PyAV seeks to max(D/2 - 1.5 s, 0) and decodes 3 s; a shorter clip is decoded whole, tiled.
        start = max((wave.shape[0] - n3) // 2, 0)
        seg = wave[start:start + n3]
        if seg.shape[0] < n3:
            seg = np.tile(seg, n3 // seg.shape[0] + 1)
        return seg[:n3]
    raise ValueError(f"unknown spectrogram protocol {protocol!r}; expected one of {sorted(_PROTOCOLS)}")


def scipy_spectrogram(wave: np.ndarray, protocol: str = "official", sample_rate: int = SAMPLE_RATE
                      ) -> np.ndarray:
    """Peer-parity log spectrogram (window + clip + scipy STFT + log(S + 1e-7) / 12).

    [T] float mono at 16 kHz -> float32 [1, 257, 299] ("official") or [1, 257, 200] ("ezvsl").
    scipy defaults apply as in the peers: Tukey(0.25) window, constant detrend, one-sided "density".
    """
    if protocol not in _PROTOCOLS:
        raise ValueError(f"unknown spectrogram protocol {protocol!r}; expected one of {sorted(_PROTOCOLS)}")
    seg = np.clip(peer_window(wave, protocol, sample_rate), -1.0, 1.0)
    _, _, spec = scipy.signal.spectrogram(seg, sample_rate, nperseg=512,
                                          noverlap=_PROTOCOLS[protocol]["noverlap"])
    return (np.log(spec + LOG_EPS) / LOG_SCALE).astype(np.float32)[None]   # [1, 257, frames]


# ----------------------------------------------------------------------------- log-mel
class LogMel(torch.nn.Module):
    """Log-mel front-end for cheap CPU runs: ``log(mel_power + eps) / scale``.

    Defaults: 64 mel bands (Slaney scale and area norm, so no band is empty at n_fft = 512),
    n_fft = 512, hop = 512 (32 ms), centred frames -> a 3 s clip at 16 kHz gives 94 frames.
    The /12 scale mirrors the peers' ``Normalize(0, 12)`` so values stay roughly in [-1.2, 1].
    forward: wave [T] or [B, T] (tensor or numpy) -> [B, 1, n_mels, frames] float32.
    """

    def __init__(self, sample_rate: int = SAMPLE_RATE, n_mels: int = 64, n_fft: int = 512,
                 hop_length: int = 512, win_length: int | None = None, f_min: float = 0.0,
                 f_max: float | None = None, eps: float = 1e-6, scale: float = LOG_SCALE):
        super().__init__()
        self.hop_length, self.n_mels, self.eps, self.scale = hop_length, n_mels, eps, scale
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=n_fft, win_length=win_length, hop_length=hop_length,
            f_min=f_min, f_max=f_max, n_mels=n_mels, power=2.0, center=True,
            norm="slaney", mel_scale="slaney")

    def n_frames(self, n_samples: int) -> int:
        """Number of frames for a clip of ``n_samples`` (centred STFT)."""
        return 1 + n_samples // self.hop_length

    def forward(self, wave: torch.Tensor | np.ndarray) -> torch.Tensor:
        if isinstance(wave, np.ndarray):
            wave = torch.from_numpy(np.ascontiguousarray(wave))
        if wave.dim() == 1:
            wave = wave[None]                                        # [1, T]
        if wave.dim() != 2:
            raise ValueError(f"LogMel expects [T] or [B, T], got {tuple(wave.shape)}")
        mel = self.mel(wave.float())                                 # [B, n_mels, frames]
        return (torch.log(mel + self.eps) / self.scale)[:, None]      # [B, 1, n_mels, frames]
