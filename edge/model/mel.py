"""Log-mel front end of AF-CLAP, in plain torch ops that export to ONNX.

Equal to torchaudio's `MelSpectrogram(SAMPLE_RATE, n_fft=1024, hop=160, center=True, reflect,
power=2, htk mel, f_min=50, f_max=8000, n_mels=64)` + `AmplitudeToDB(top_db=None)`, but the STFT
is a strided convolution with a windowed DFT basis, so the same graph runs in PyTorch, ONNX Runtime
and TensorRT. Also holds the bicubic time resize n_frames(CLIP_SAMPLES) = 1001 -> 1024 frames as a
constant matrix.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from edge.constants import CLIP_SAMPLES, SAMPLE_RATE

N_FFT = 1024
HOP = 160
F_MIN = 50.0
F_MAX = 8000.0


def n_frames(samples: int) -> int:
    """Centred STFT frames of a `samples`-long signal: one every HOP samples, plus the last
    (1001 for a clip of CLIP_SAMPLES)."""
    return samples // HOP + 1


def _hz_to_mel(f: float) -> float:
    return 2595.0 * math.log10(1.0 + f / 700.0)


def mel_filterbank(n_mels: int = 64, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT,
                   f_min: float = F_MIN, f_max: float = F_MAX) -> torch.Tensor:
    """(n_fft//2+1, n_mels) triangular HTK filters without area normalisation (torchaudio's rule)."""
    n_freqs = n_fft // 2 + 1
    all_freqs = torch.linspace(0, sample_rate // 2, n_freqs)
    m_pts = torch.linspace(_hz_to_mel(f_min), _hz_to_mel(f_max), n_mels + 2)
    f_pts = 700.0 * (10 ** (m_pts / 2595.0) - 1.0)
    f_diff = f_pts[1:] - f_pts[:-1]  # (n_mels+1,)
    slopes = f_pts.unsqueeze(0) - all_freqs.unsqueeze(1)  # (n_freqs, n_mels+2)
    down = (-1.0 * slopes[:, :-2]) / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return torch.clamp(torch.minimum(down, up), min=0.0)


def dft_basis(n_fft: int = N_FFT) -> torch.Tensor:
    """(2*(n_fft//2+1), 1, n_fft) conv weights: periodic-Hann-windowed cos rows, then -sin rows."""
    n = torch.arange(n_fft, dtype=torch.float64)
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)
    window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
    angle = 2 * math.pi * torch.outer(k, n) / n_fft  # (n_freqs, n_fft)
    real = torch.cos(angle) * window
    imag = -torch.sin(angle) * window
    return torch.cat([real, imag], 0).unsqueeze(1).float()


def bicubic_resize_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) matrix M with M @ x == interpolate(x, n_out, bicubic, align_corners=True)."""
    eye = torch.eye(n_in, dtype=torch.float64).reshape(n_in, 1, n_in, 1)  # each basis vector an image
    out = F.interpolate(eye, size=(n_out, 1), mode="bicubic", align_corners=True)
    return out.reshape(n_in, n_out).T.contiguous().float()


def constant(fn, like: torch.Tensor, *args) -> torch.Tensor:
    """Build a constant buffer on the CPU (even inside a meta-device context), then move it to
    `like`'s device. After `Module.to_empty()` every module's `init_buffers()` calls this again."""
    with torch.device("cpu"):
        t = fn(*args)
    return t if like.device.type == "meta" else t.to(like.device)


def reflect_indices(n: int, pad: int, side: str) -> torch.Tensor:
    """Indices of one margin of `F.pad(x, (pad, pad), mode="reflect")` in an `n`-sample signal:
    x[pad..1] on the left, x[n-2..n-1-pad] on the right. Gathers of these replace the Pad op,
    whose reflect mode differs across TensorRT versions."""
    return torch.arange(pad, 0, -1) if side == "left" else torch.arange(n - 2, n - 2 - pad, -1)


class LogMel(nn.Module):
    """(B, samples) waveform -> (B, n_frames(samples), 64) log-mel in dB, always computed in
    float32; `samples` is CLIP_SAMPLES unless built for another length."""

    basis: torch.Tensor  # buffers, built by init_buffers
    melW: torch.Tensor
    pad_left: torch.Tensor
    pad_right: torch.Tensor

    def __init__(self, n_mels: int = 64, sample_rate: int = SAMPLE_RATE,
                 samples: int = CLIP_SAMPLES) -> None:
        super().__init__()
        self.n_mels, self.sample_rate, self.samples = n_mels, sample_rate, samples
        self.n_freqs = N_FFT // 2 + 1
        self.frames = n_frames(samples)  # output frames per input
        for name in ("basis", "melW", "pad_left", "pad_right"):
            self.register_buffer(name, None, persistent=False)
        self.init_buffers()

    def init_buffers(self) -> None:
        like = self.basis if self.basis is not None else torch.empty(0, device="cpu")
        self.basis = constant(dft_basis, like)
        self.melW = constant(mel_filterbank, like, self.n_mels, self.sample_rate)
        self.pad_left = constant(reflect_indices, like, self.samples, N_FFT // 2, "left")
        self.pad_right = constant(reflect_indices, like, self.samples, N_FFT // 2, "right")

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """`wav` (B, samples): the clip length the module was built for."""
        x = wav.float().unsqueeze(1)  # (B, 1, N)
        # reflect padding (centred frames) as two index gathers: a graph without a Pad op
        x = torch.cat([x.index_select(2, self.pad_left), x, x.index_select(2, self.pad_right)], 2)
        spec = F.conv1d(x, self.basis.float(), stride=HOP)  # (B, 2*513, frames)
        re, im = spec[:, : self.n_freqs], spec[:, self.n_freqs:]
        power = re * re + im * im  # (B, 513, frames)
        mel = torch.matmul(power.transpose(1, 2), self.melW.float())  # (B, frames, n_mels)
        return 10.0 * torch.log10(torch.clamp(mel, min=1e-10))
