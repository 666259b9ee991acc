"""HTS-AT (Swin transformer) audio encoder of AF-CLAP: 10-s clip -> 64 tokens.

Parameter names follow the official checkpoint (`clap.nvclap.*` minus the prefix) so loading is a
rename-free copy. Only the path AF2 uses is built: a clip of exactly CLIP_SAMPLES samples
("not longer"), whose fusion branch never runs, and no classifier head.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import HTSATDims
from .mel import LogMel, bicubic_resize_matrix, constant


@dataclass(frozen=True)
class Numerics:
    """How the encoder's forward is spelled; the modules and their weights are the same.

    The default (`EAGER`) is the PyTorch path, with fused attention. The ONNX export
    (trt_builders/export.py) traces these same modules with `explicit_attention`:
    softmax(q k^T * scale + bias [+ window mask]) v written out, the window mask broadcast over a
    (batch, windows) view, so the graph keeps a dynamic batch and has no Shape op; and, for its
    fp16-mixed graph, `fp32_islands`: LayerNorm and the softmax (with its bias/mask add) in
    float32 around float16 matmuls, as a TensorRT strongly typed network needs. Every shape in
    the forward is static except the batch (-1), in both spellings.
    """

    explicit_attention: bool = False
    fp32_islands: bool = False


EAGER = Numerics()


def layer_norm(norm: nn.LayerNorm, x: torch.Tensor, nx: Numerics) -> torch.Tensor:
    if not nx.fp32_islands:
        return norm(x)
    y = F.layer_norm(x.float(), norm.normalized_shape, norm.weight.float(), norm.bias.float(), norm.eps)
    return y.to(x.dtype)


def window_partition(x: torch.Tensor, w: int, H: int, W: int, C: int) -> torch.Tensor:
    """(B, H, W, C) -> (B*nW, w*w, C), batch kept dynamic."""
    x = x.reshape(-1, H // w, w, W // w, w, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, w * w, C)


def window_reverse(windows: torch.Tensor, w: int, H: int, W: int, C: int) -> torch.Tensor:
    """(B*nW, w*w, C) -> (B, H, W, C)."""
    x = windows.reshape(-1, H // w, W // w, w, w, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, H, W, C)


def relative_position_index(w: int) -> torch.Tensor:
    coords = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # (w*w, w*w, 2)
    rel[:, :, 0] += w - 1
    rel[:, :, 1] += w - 1
    rel[:, :, 0] *= 2 * w - 1
    return rel.sum(-1)  # (w*w, w*w)


def shifted_window_mask(H: int, W: int, w: int, shift: int) -> torch.Tensor:
    """(nW, w*w, w*w) additive mask (0 / -100) so shifted windows don't mix far-apart regions."""
    img = torch.zeros(1, H, W, 1)
    cnt = 0
    for h in (slice(0, -w), slice(-w, -shift), slice(-shift, None)):
        for v in (slice(0, -w), slice(-w, -shift), slice(-shift, None)):
            img[:, h, v, :] = cnt
            cnt += 1
    mw = window_partition(img, w, H, W, 1).squeeze(-1)  # (nW, w*w)
    diff = mw.unsqueeze(1) - mw.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


class WindowAttention(nn.Module):
    def __init__(self, dim: int, w: int, n_head: int, n_windows: int = 1) -> None:
        super().__init__()
        self.dim, self.n_head, self.w, self.n_windows = dim, n_head, w, n_windows
        self.scale = (dim // n_head) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * w - 1) ** 2, n_head))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.register_buffer("relative_position_index", None, persistent=False)
        self.init_buffers()

    def init_buffers(self) -> None:
        self.relative_position_index = constant(relative_position_index, self.qkv.weight, self.w)

    def position_bias(self) -> torch.Tensor:  # (nH, w*w, w*w)
        n = self.w * self.w
        table = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return table.view(n, n, -1).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, nx: Numerics = EAGER) -> torch.Tensor:
        """x (B*nW, N, C) windows, batch-major; mask (nW, N, N) 0/-100 for shifted windows."""
        N, C, nH = self.w * self.w, self.dim, self.n_head
        qkv = self.qkv(x).reshape(-1, N, 3, nH, C // nH).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (Bw, nH, N, hd)
        if nx.explicit_attention:
            out = self._explicit(q, k, v, mask, nx)
        else:
            bias = self.position_bias().to(x.dtype).unsqueeze(0)  # (1, nH, N, N)
            if mask is not None:
                bias = (bias + mask.to(x.dtype).unsqueeze(1)).repeat(x.shape[0] // self.n_windows, 1, 1, 1)
            # softmax(q*scale @ k^T + bias) @ v, fused (3-6x faster than the explicit form on CPU)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(-1, N, C))

    def _explicit(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                  nx: Numerics) -> torch.Tensor:
        N, nH, nW = self.w * self.w, self.n_head, self.n_windows
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.position_bias()
        if nx.fp32_islands:
            attn, bias = attn.float(), bias.float()
        attn = attn + bias.unsqueeze(0)
        if mask is not None:
            attn = attn.view(-1, nW, nH, N, N) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, nH, N, N)
        attn = attn.softmax(dim=-1)
        if nx.fp32_islands:
            attn = attn.to(v.dtype)
        return attn @ v


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwinBlock(nn.Module):
    def __init__(self, dim: int, resolution: int, n_head: int, window: int, shift: int,
                 mlp_ratio: float) -> None:
        super().__init__()
        if resolution <= window:  # one window covers the map: no partition, no shift
            window, shift = resolution, 0
        self.dim, self.res, self.window, self.shift = dim, resolution, window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, n_head, (resolution // window) ** 2)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.register_buffer("attn_mask", None, persistent=False)
        self.init_buffers()

    def init_buffers(self) -> None:
        """(Re)build the constant shifted-window mask (after construction on the meta device)."""
        self.attn_mask = (constant(shifted_window_mask, self.norm1.weight, self.res, self.res,
                                   self.window, self.shift) if self.shift else None)

    def forward(self, x: torch.Tensor, nx: Numerics = EAGER) -> torch.Tensor:  # x: (B, H*W, C)
        H = W = self.res
        C, w = self.dim, self.window
        h = layer_norm(self.norm1, x, nx).reshape(-1, H, W, C)
        if self.shift:
            h = torch.roll(h, shifts=(-self.shift, -self.shift), dims=(1, 2))
        h = self.attn(window_partition(h, w, H, W, C), self.attn_mask, nx)
        h = window_reverse(h, w, H, W, C)
        if self.shift:
            h = torch.roll(h, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + h.reshape(-1, H * W, C)
        return x + self.mlp(layer_norm(self.norm2, x, nx))


class PatchMerging(nn.Module):
    def __init__(self, resolution: int, dim: int) -> None:
        super().__init__()
        self.res, self.dim = resolution, dim
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor, nx: Numerics = EAGER) -> torch.Tensor:  # (B, H*W, C) -> (B, H/2*W/2, 2C)
        H = W = self.res
        C = self.dim
        x = x.reshape(-1, H, W, C)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(layer_norm(self.norm, x.reshape(-1, (H // 2) * (W // 2), 4 * C), nx))


class SwinStage(nn.Module):
    def __init__(self, dim: int, resolution: int, depth: int, n_head: int, window: int,
                 mlp_ratio: float, downsample: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(dim, resolution, n_head, window, 0 if i % 2 == 0 else window // 2, mlp_ratio)
            for i in range(depth)
        )
        self.downsample = PatchMerging(resolution, dim) if downsample else None

    def forward(self, x: torch.Tensor, nx: Numerics = EAGER) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x, nx)
        return self.downsample(x, nx) if self.downsample is not None else x


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int, resolution: int) -> None:
        super().__init__()
        self.dim, self.res = dim, resolution  # patches per side
        self.proj = nn.Conv2d(1, dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, nx: Numerics = EAGER) -> torch.Tensor:  # (B,1,256,256) -> (B, 64*64, dim)
        x = self.proj(x).reshape(-1, self.dim, self.res * self.res).transpose(1, 2)
        return layer_norm(self.norm, x, nx)


class HTSAT(nn.Module):
    """(B, CLIP_SAMPLES) clips in [-1, 1] -> (B, 64, num_features) tokens."""

    def __init__(self, d: HTSATDims) -> None:
        super().__init__()
        self.d = d
        self.mel = LogMel(d.mel_bins)
        self.frames = self.mel.frames  # CLIP_SAMPLES / HOP + 1 with centre padding: 1001
        self.register_buffer("time_resize", None, persistent=False)  # (1024, frames)
        self.bn0 = nn.BatchNorm2d(d.mel_bins)
        res = d.spec_size // d.patch_size
        self.patch_embed = PatchEmbed(d.patch_size, d.embed_dim, res)
        n = len(d.depths)
        self.layers = nn.ModuleList(
            SwinStage(d.embed_dim * 2**i, res // 2**i, d.depths[i], d.num_heads[i], d.window_size,
                      d.mlp_ratio, downsample=i < n - 1)
            for i in range(n)
        )
        self.norm = nn.LayerNorm(d.num_features)
        self.init_buffers()

    def init_buffers(self) -> None:
        self.time_resize = constant(bicubic_resize_matrix, self.norm.weight, self.frames,
                                    self.d.spec_size * self.d.freq_ratio)

    def image(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, frames, 64) log-mel -> (B, 1, 256, 256) Swin input (bn0, resize, fold time onto freq)."""
        d, bn = self.d, self.bn0
        mel = mel.float()
        assert bn.running_mean is not None and bn.running_var is not None  # tracked statistics
        x = (mel - bn.running_mean.float()) * torch.rsqrt(bn.running_var.float() + bn.eps)
        x = x * bn.weight.float() + bn.bias.float()  # eval BatchNorm over mel bins
        # bicubic resize of time frames -> 1024 (align_corners) as a constant matrix product
        x = torch.matmul(x.transpose(1, 2), self.time_resize.float().T)  # (B, 64, 1024)
        x = x.reshape(-1, 1, d.mel_bins, d.freq_ratio, d.spec_size).permute(0, 1, 3, 2, 4)
        return x.reshape(-1, 1, d.spec_size, d.spec_size)

    def forward_mel(self, mel: torch.Tensor, nx: Numerics = EAGER) -> torch.Tensor:
        return self.forward_image(self.image(mel), nx)

    def forward_image(self, image: torch.Tensor, nx: Numerics = EAGER) -> torch.Tensor:
        """(B, 1, 256, 256) float32 Swin input -> (B, 64, C) tokens in the model dtype."""
        d = self.d
        x = self.patch_embed(image.to(self.patch_embed.proj.weight.dtype), nx)
        for stage in self.layers:
            x = stage(x, nx)
        x = layer_norm(self.norm, x, nx)  # (B, 8*8, C)
        C = d.num_features
        side = d.spec_size // d.patch_size // 2 ** (len(d.depths) - 1)  # 8
        x = x.transpose(1, 2).reshape(-1, C, side, side)  # (B, C, F=8, T=8)
        c_freq = side // d.freq_ratio  # 2
        x = x.reshape(-1, C, d.freq_ratio, c_freq, side).permute(0, 1, 3, 2, 4)
        x = x.reshape(-1, C, c_freq * d.freq_ratio * side)  # (B, C, 64)
        return x.transpose(1, 2)  # (B, 64, C)

    def forward(self, clips: torch.Tensor, nx: Numerics = EAGER) -> torch.Tensor:
        return self.forward_mel(self.mel(clips), nx)


def converted_copy(enc: HTSAT, dtype: torch.dtype, device: str | torch.device | None = None) -> HTSAT:
    """A copy of `enc` in `dtype` (and on `device`) whose constant buffers are rebuilt in float32,
    as `AF2.load` builds them."""
    e = copy.deepcopy(enc).to(device=device, dtype=dtype)
    for m in e.modules():
        init = getattr(m, "init_buffers", None)
        if init is not None:
            init()
    return e
