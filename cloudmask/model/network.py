"""The segmentation network: band encoder -> context at 1/4 and 1/8 resolution -> light full-res head.

Why this shape: clouds and shadows are large objects, so almost all compute runs at reduced
resolution (the band set is average-pooled 4×4 with validity weights, encoded, then refined by
depthwise-separable dilated blocks at 1/8); the full-resolution path is only a linear spectral
projection and two 1×1 convolutions that sharpen edges. No global pooling and no normalisation
that depends on the tile (BatchNorm is a per-channel affine at inference), so tiled inference with
``halo`` pixels of overlap reproduces whole-scene inference.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cloudmask.model.descriptors import N_DESCRIPTOR_FEATURES, descriptor_features, log_feature, normalise_inputs
from cloudmask.model.encoders import FineProjection, make_encoder

N_CLASSES = 4


@dataclass(frozen=True)
class ModelConfig:
    """Architecture hyper-parameters; stored next to the weights so a file always rebuilds its net."""

    encoder: str = "set"  # "set" (O(n)) or "pairwise" (O(n²))
    desc_dim: int = 48
    enc_width: int = 24
    fine_width: int = 8
    c4: int = 32
    c8: int = 64
    dilations: tuple[int, ...] = field(default=(1, 2, 4, 8))
    up_width: int = 8
    head_width: int = 12

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["dilations"] = list(self.dilations)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown architecture fields {sorted(unknown)}")
        kw = dict(d)
        if "dilations" in kw:
            kw["dilations"] = tuple(int(x) for x in kw["dilations"])
        return cls(**kw)


class DSBlock(nn.Module):
    """Depthwise-separable 3×3 (dilated) conv block with a residual when widths match."""

    def __init__(self, c_in: int, c_out: int, dilation: int = 1):
        super().__init__()
        self.dw = nn.Conv2d(c_in, c_in, 3, padding=dilation, dilation=dilation, groups=c_in, bias=False)
        self.bn1 = nn.BatchNorm2d(c_in)
        self.pw = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.residual = c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.pw(torch.relu(self.bn1(self.dw(x)))))
        return torch.relu(y + x if self.residual else y)


def _conv1(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class CloudNet(nn.Module):
    """(B, n, h, w) physical bands + (n, 5) descriptors -> (B, 4, h, w) class logits."""

    #: Input sizes are padded to a multiple of this (two pooling steps: 4 then 2).
    stride = 8

    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        cfg = self.config = config or ModelConfig()
        e = cfg.desc_dim
        self.desc_mlp = nn.Sequential(
            nn.Linear(N_DESCRIPTOR_FEATURES, e), nn.ReLU(), nn.Linear(e, e), nn.ReLU(), nn.Linear(e, e)
        )
        self.encoder = make_encoder(cfg.encoder, e, cfg.enc_width)
        self.fine = FineProjection(e, cfg.fine_width)
        self.stem4 = nn.Sequential(_conv1(self.encoder.out_channels + 1, cfg.c4), DSBlock(cfg.c4, cfg.c4))
        self.down8 = _conv1(cfg.c4, cfg.c8)
        self.ctx8 = nn.Sequential(*[DSBlock(cfg.c8, cfg.c8, d) for d in cfg.dilations])
        self.fuse4 = nn.Sequential(_conv1(cfg.c8 + cfg.c4, cfg.c4), DSBlock(cfg.c4, cfg.c4), _conv1(cfg.c4, cfg.up_width))
        self.head = nn.Sequential(
            nn.Conv2d(cfg.up_width + cfg.fine_width + 1, cfg.head_width, 1),
            nn.ReLU(),
            nn.Conv2d(cfg.head_width, N_CLASSES, 1),
        )

    @property
    def halo(self) -> int:
        """Half the theoretical receptive field in input pixels, rounded up to the stride.

        Pool 4 (4 px), a 3×3 at 1/4 (±4 px), pool 2, dilated 3×3s at 1/8 (±8·d px each), a 3×3
        at 1/4 in the decoder and bilinear upsampling; tiles overlapping by this much see all the
        context the network can use, so blended tiles match whole-scene inference.
        """
        radius = 4 + 4 + 4 + 8 * sum(self.config.dilations) + 4 + 4 + 4
        return int(math.ceil(radius / self.stride) * self.stride)

    def _prepare(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.stride, (-w) % self.stride
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), value=float("nan"))  # padding is nodata, excluded everywhere
        return x, h, w

    def _pool(self, x: torch.Tensor, desc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-pixel stage A: validity-weighted 4×4 band means and valid fractions."""
        v, m = normalise_inputs(x, desc)
        return F.avg_pool2d(v, 4), F.avg_pool2d(m, 4)

    def _context(self, v4: torch.Tensor, m4: torch.Tensor, desc: torch.Tensor, emb: torch.Tensor, chunk: int) -> torch.Tensor:
        """Stage B at 1/4 and 1/8 resolution: band encoder, context blocks, decoder -> (B, up, h/4, w/4)."""
        v4 = v4 / m4.clamp(min=1e-6)
        mask4 = (m4 > 0).to(v4.dtype)
        lv4 = log_feature(v4, desc)
        rows = v4.shape[-2]
        step = max(1, chunk // 4) if chunk else rows
        enc = torch.cat(
            [self.encoder(v4[..., r : r + step, :], lv4[..., r : r + step, :], mask4[..., r : r + step, :], emb)
             for r in range(0, rows, step)],
            dim=-2,
        )
        f4 = self.stem4(torch.cat([enc, m4.amax(dim=1, keepdim=True)], dim=1))
        f8 = self.ctx8(self.down8(F.avg_pool2d(f4, 2)))
        up8 = F.interpolate(f8, size=f4.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse4(torch.cat([up8, f4], dim=1))

    def _head(self, x: torch.Tensor, desc: torch.Tensor, u4: torch.Tensor, fw: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Per-pixel stage C at full resolution for rows matching ``u4`` exactly (x rows = 4 × u4 rows)."""
        v, m = normalise_inputs(x, desc)
        fine = self.fine(v, m, fw)
        up = F.interpolate(u4, scale_factor=4, mode="bilinear", align_corners=False)
        return self.head(torch.cat([up, fine, m.amax(dim=1, keepdim=True)], dim=1))

    def forward(self, x: torch.Tensor, desc: torch.Tensor) -> torch.Tensor:
        """Logits (B, 4, h, w), unchunked (used for training)."""
        x, h, w = self._prepare(x)
        emb = self.desc_mlp(descriptor_features(desc))
        v4, m4 = self._pool(x, desc)
        u4 = self._context(v4, m4, desc, emb, 0)
        return self._head(x, desc, u4, self.fine.weights(emb))[:, :, :h, :w]

    @torch.inference_mode()
    def predict_proba(self, x: torch.Tensor, desc: torch.Tensor, chunk: int = 64) -> torch.Tensor:
        """Class probabilities (B, 4, h, w), computed in row chunks so full-resolution
        intermediates stay in cache (memory traffic, not FLOPs, bounds CPU speed here).

        Pixels where no band is valid get probability 1 for clear, so nodata is never cloud.
        """
        x, h, w = self._prepare(x)
        chunk = max(self.stride, chunk // self.stride * self.stride)
        emb = self.desc_mlp(descriptor_features(desc))
        rows = x.shape[-2]
        pooled = [self._pool(x[..., r : r + chunk, :], desc) for r in range(0, rows, chunk)]
        v4 = torch.cat([p[0] for p in pooled], dim=-2)
        m4 = torch.cat([p[1] for p in pooled], dim=-2)
        del pooled
        u4 = self._context(v4, m4, desc, emb, chunk)
        fw = self.fine.weights(emb)
        out = x.new_empty(x.shape[0], N_CLASSES, h, w)
        q = chunk // 4
        for r in range(0, min(rows, h), chunk):
            lo, hi = max(r // 4 - 1, 0), min((r + chunk) // 4 + 1, u4.shape[-2])
            xs = x[..., max(lo * 4, 0) : hi * 4, :]
            logits = self._head(xs, desc, u4[..., lo:hi, :], fw)
            off = r - lo * 4
            logits = logits[:, :, off : off + min(chunk, h - r), :w]
            prob = torch.softmax(logits, dim=1)
            xr = x[..., r : r + logits.shape[-2], :w]
            nodata = ~torch.isfinite(xr).any(dim=1)
            if nodata.any():
                prob[:, 0].masked_fill_(nodata, 1.0)
                prob[:, 1:].masked_fill_(nodata[:, None], 0.0)
            out[:, :, r : r + logits.shape[-2]] = prob
        del q
        return out


def count_flops_per_pixel(net: CloudNet, n_bands: int = 13, size: int = 256) -> float:
    """Multiply-add FLOPs (2 per MAC) per input pixel, counted by torch's FLOP counter.

    Only matmul/conv/einsum FLOPs are counted (elementwise ops are memory-bound and cheap in FLOPs).
    """
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(1, n_bands, size, size)
    desc = torch.tensor([[0.4 + 0.1 * i, 0.45 + 0.1 * i, 0.5 + 0.1 * i, 0.05, 0.0] for i in range(n_bands)])
    net.eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        net.predict_proba(x, desc)
    return counter.get_total_flops() / (size * size)
