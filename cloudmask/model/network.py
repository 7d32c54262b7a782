"""The segmentation network: spectral encoding -> context at 1/4 and 1/8 resolution -> light full-res head.

Why this shape: clouds and shadows are large objects, so almost all compute runs at reduced
resolution. The band set is average-pooled 4×4 (validity-weighted) into a linear spectral
projection at 1/4 and, pooled again, into the non-linear band encoder (set or pairwise) at 1/8,
where depthwise-separable dilated blocks gather context. The full-resolution path is one
descriptor-generated band mixture plus the upsampled context, a ReLU and a 1×1 layer: CPU
inference is bound by memory traffic at full resolution, not by FLOPs, so it is kept to a handful
of passes and run in row chunks that stay in cache. No global pooling and no tile-dependent
normalisation (BatchNorm is a per-channel affine at inference), so tiles overlapping by ``halo``
reproduce whole-scene inference.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cloudmask.model.descriptors import N_DESCRIPTOR_FEATURES, band_affine, descriptor_features, log_feature, normalise_inputs
from cloudmask.model.encoders import FineProjection, _mix, make_encoder

N_CLASSES = 4


@dataclass(frozen=True)
class ModelConfig:
    """Architecture hyper-parameters; stored next to the weights so a file always rebuilds its net."""

    encoder: str = "set"  # "set" (O(n)) or "pairwise" (O(n²)) band encoder at 1/8
    desc_dim: int = 48
    enc_width: int = 24
    lin4_width: int = 16
    c4: int = 32
    c8: int = 64
    dilations: tuple[int, ...] = field(default=(1, 2, 4, 8))
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
            dil = kw["dilations"]
            if not isinstance(dil, (list, tuple)) or not dil or not all(
                    isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in dil):
                raise ValueError(f"dilations must be a list of whole numbers >= 1, got {dil!r}")
            kw["dilations"] = tuple(dil)
        for name in ("desc_dim", "enc_width", "lin4_width", "c4", "c8", "head_width"):
            v = kw.get(name, 1)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {v!r}")
        cfg = cls(**kw)
        if cfg.encoder not in ("set", "pairwise"):
            raise ValueError(f"unknown band encoder {cfg.encoder!r} (expected 'set' or 'pairwise')")
        return cfg


class Conv1x1(nn.Conv2d):
    """A 1×1 convolution computed as a matrix product (several times faster than mkldnn on CPU)."""

    def __init__(self, c_in: int, c_out: int, bias: bool = True):
        super().__init__(c_in, c_out, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _mix(self.weight.view(self.out_channels, self.in_channels), x, self.bias)


class DSBlock(nn.Module):
    """Depthwise-separable 3×3 (dilated) conv block with a residual when widths match."""

    def __init__(self, c_in: int, c_out: int, dilation: int = 1):
        super().__init__()
        self.dw = nn.Conv2d(c_in, c_in, 3, padding=dilation, dilation=dilation, groups=c_in, bias=False)
        self.bn1 = nn.BatchNorm2d(c_in)
        self.pw = Conv1x1(c_in, c_out, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.residual = c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():  # inference: the same, without a fresh map per step
            y = self.bn2(self.pw(self.bn1(self._depthwise(x)).relu_()))
            return add_relu_(y, x) if self.residual else y.relu_()
        y = self.bn2(self.pw(torch.relu(self.bn1(self.dw(x)))))
        return torch.relu(y + x if self.residual else y)

    def _depthwise(self, x: torch.Tensor) -> torch.Tensor:
        """``self.dw(x)``. From a padding of 7 px up, oneDNN's channels-last depthwise kernel takes a
        slow path (~9× slower at 64 channels); padding first and convolving unpadded stays on the
        fast one (same result to float rounding)."""
        p = self.dw.padding[0]
        if p < 7 or not x.is_contiguous(memory_format=torch.channels_last):
            return self.dw(x)
        return F.conv2d(F.pad(x, (p, p, p, p)), self.dw.weight, self.dw.bias, dilation=self.dw.dilation,
                        groups=self.dw.groups)


def add_relu_(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a.add_(b).relu_()`` in one pass over ``a`` (ATen's fused ``_add_relu_``, a CPU kernel;
    same values)."""
    if _ADD_RELU is not None and a.device.type == "cpu":
        return _ADD_RELU(a, b)
    return a.add_(b).relu_()


_ADD_RELU = getattr(torch, "_add_relu_", None)


def _conv1(c_in: int, c_out: int) -> nn.Sequential:
    # in place: BatchNorm's backward needs its input, not its output, so training is unaffected
    return nn.Sequential(Conv1x1(c_in, c_out, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


_UP_KERNELS: dict[tuple[int, int, torch.dtype, str], torch.Tensor] = {}


def upsample(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Bilinear upsampling by an integer ``scale`` (``align_corners=False``, edges clamped), equal to
    ``F.interpolate`` to float rounding. At inference it is a depthwise transposed convolution of
    the edge-padded map with the separable ramp kernel the interpolation amounts to: oneDNN runs it
    1.4–1.8× faster than ATen's interpolation kernel, which took ~12 % of a window's time in the head.
    """
    if torch.is_grad_enabled() or scale % 2:  # (the padding below needs an even scale)
        return F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
    c = x.shape[1]
    key = (c, scale, x.dtype, str(x.device))
    k = _UP_KERNELS.get(key)
    if k is None:
        ramp = (2 * torch.arange(scale, dtype=torch.float64) + 1) / (2 * scale)
        k1 = torch.cat([ramp, ramp.flip(0)])  # e.g. ×4: 1, 3, 5, 7, 7, 5, 3, 1 eighths (exact in float32)
        k = _UP_KERNELS[key] = (k1[:, None] * k1[None, :]).to(x.dtype, copy=True).expand(c, 1, -1, -1).contiguous().to(x.device)
    # one replicated row/column each side reproduces the clamping; padding trims to scale × size
    return F.conv_transpose2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, stride=scale,
                              padding=scale // 2 + scale, groups=c)


def _mean4(x: torch.Tensor) -> torch.Tensor:
    """4×4 mean of (B, C, h, w) with h, w multiples of 4, as strided sums: about twice as fast on
    CPU as ``avg_pool2d`` (which this equals to float rounding), and it reads strided views as is."""
    b, c, h, w = x.shape
    rows = x.reshape(b, c, h // 4, 4, w)
    y = rows[:, :, :, 0] + rows[:, :, :, 1]
    y += rows[:, :, :, 2]
    y += rows[:, :, :, 3]
    # then every 4th column: strided adds beat a reduction over a last axis of 4
    z = y[..., 0::4] + y[..., 1::4]
    z += y[..., 2::4]
    z += y[..., 3::4]
    return z.mul_(1.0 / 16)


def stored_to_physical(x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, nodata: torch.Tensor,
                       mask: bool = True, buffer: torch.Tensor | None = None) -> torch.Tensor:
    """Stored integers (B, n, h, w) → physical float32, ``x * scale + offset`` per band, NaN where a
    band holds its ``nodata`` value (NaN: none). The same float32 operations, in the same order, as
    :class:`cloudmask.scene.ToPhysical`, so both paths give identical values. ``mask=False``: the
    caller knows no nodata value occurs (skips the comparisons). ``buffer``: a flat float32 tensor
    of at least ``x.numel()`` values to write into (a chunk loop reuses memory that is already in
    cache instead of writing fresh pages each time)."""
    out = stored_to_float(x, buffer)
    out.mul_(scale.view(1, -1, 1, 1)).add_(offset.view(1, -1, 1, 1))
    if mask:
        for i in torch.nonzero(~torch.isnan(nodata)).flatten().tolist():
            out[:, i].masked_fill_(x[:, i] == nodata[i], float("nan"))
    return out


def stored_to_float(x: torch.Tensor, buffer: torch.Tensor | None = None) -> torch.Tensor:
    """Stored integers as float32, unscaled (into ``buffer`` when given, as
    :func:`stored_to_physical`). Where a chunk needs no masking, its scale and offset are applied
    by the first linear step that reads it instead (:meth:`CloudNet._pool`, :meth:`CloudNet._head`):
    two passes fewer over every full-resolution value."""
    if buffer is None:
        return x.to(torch.float32)
    out = buffer[: x.numel()].view(x.shape)
    out.copy_(x)
    return out


def _compose(desc: torch.Tensor, affine: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The network's per-band input normalisation (:func:`band_affine`), preceded by ``affine`` =
    (scale, offset) from stored values to physical ones when given: one per-band affine map."""
    scale, offset = band_affine(desc)
    if affine is None:
        return scale, offset
    return affine[0] * scale, affine[1] * scale + offset


def _nodata_free(x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, nodata: torch.Tensor) -> bool:
    """True when stored values ``x`` certainly convert to finite numbers: no band declares a nodata
    value, or the smallest value is above every declared one (one reduction, in numpy: torch has
    no min for uint16), and the scales and offsets are finite. A window that touches nodata
    somewhere then masks only its row chunks that hold some."""
    if not (bool(torch.isfinite(scale).all()) and bool(torch.isfinite(offset).all())):
        return False
    declared = nodata[~torch.isnan(nodata)]
    if declared.numel() == 0:
        return True
    if x.device.type != "cpu" or x.numel() == 0:
        return False
    return float(x.numpy().min()) > float(declared.max())


def _cat_channels_last(parts: list[torch.Tensor]) -> torch.Tensor:
    """``torch.cat(parts, 1)`` laid out channels-last. At inference ``cat`` writes straight into a
    channels-last buffer (``out=``); converting its channels-first result after costs 3× more.
    ``out=`` has no gradient, so training converts."""
    if torch.is_grad_enabled():
        return torch.cat(parts, 1).contiguous(memory_format=torch.channels_last)
    b, _, h, w = parts[0].shape
    out = torch.empty(b, sum(p.shape[1] for p in parts), h, w, dtype=parts[0].dtype, device=parts[0].device,
                      memory_format=torch.channels_last)
    return torch.cat(parts, 1, out=out)


def _wpool(v: torch.Tensor, m: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Validity-weighted k×k mean of ``v`` (already zero where invalid) and the valid fraction."""
    mk = F.avg_pool2d(m, k)
    return F.avg_pool2d(v, k) / mk.clamp(min=1e-6), mk


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
        half = max(1, cfg.lin4_width // 2)
        self.lin4 = FineProjection(e, half)
        self.lin4_log = FineProjection(e, cfg.lin4_width - half)
        self.stem4 = nn.Sequential(_conv1(cfg.lin4_width + 1, cfg.c4), DSBlock(cfg.c4, cfg.c4))
        self.encoder = make_encoder(cfg.encoder, e, cfg.enc_width)
        self.down8 = _conv1(cfg.c4 + self.encoder.out_channels + 1, cfg.c8)
        self.ctx8 = nn.Sequential(*[DSBlock(cfg.c8, cfg.c8, d) for d in cfg.dilations])
        self.lift8 = nn.Sequential(Conv1x1(cfg.c8, cfg.c4, bias=False), nn.BatchNorm2d(cfg.c4))
        self.fuse4 = nn.Sequential(DSBlock(cfg.c4, cfg.c4), Conv1x1(cfg.c4, cfg.head_width))
        self.fine = FineProjection(e, cfg.head_width)
        self.out = Conv1x1(cfg.head_width, N_CLASSES)

    @property
    def halo(self) -> int:
        """Half the theoretical receptive field in input pixels, rounded up to the stride.

        Pool 4 (4 px), a 3×3 at 1/4 (±4 px), pool 2, dilated 3×3s at 1/8 (±8·d px each), a 3×3
        at 1/4 in the decoder and bilinear upsampling; tiles overlapping by this much see all the
        context the network can use, so blended tiles match whole-scene inference.
        """
        radius = 4 + 4 + 4 + 8 * sum(self.config.dilations) + 4 + 4 + 4
        return int(math.ceil(radius / self.stride) * self.stride)

    # ------------------------------------------------------------------ stages

    def _prepare(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.stride, (-w) % self.stride
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), value=float("nan"))  # padding is nodata, excluded everywhere
        return x, h, w

    @staticmethod
    def _all_valid(x: torch.Tensor, desc: torch.Tensor, finite: bool = False,
                   affine: tuple[torch.Tensor, torch.Tensor] | None = None) -> bool:
        """True when no pixel needs masking: one reduction pass (a NaN/inf makes the sum non-finite),
        skipped when the caller already knows every value is ``finite``. ``affine``: ``x`` holds
        unscaled stored values, physical = x · scale + offset (for the thermal fill-value test)."""
        if not finite and not bool(torch.isfinite(x.sum())):
            return False
        th = torch.nonzero(desc[:, 4] > 0.5).flatten()
        if th.numel() == 0:
            return True
        t = x[:, th]
        if affine is not None:
            t = t * affine[0][th].view(1, -1, 1, 1) + affine[1][th].view(1, -1, 1, 1)
        return bool((t > 100.0).all())

    def _pool(self, x: torch.Tensor, desc: torch.Tensor, fast: bool,
              affine: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Stage A (per pixel): 4×4 sums of normalised values (zero where invalid) and valid
        fractions (None when ``fast``: every pixel valid). ``affine`` (only with ``fast``): ``x``
        holds unscaled stored values; their scale and offset are applied to the 16× fewer means."""
        if fast:
            scale, offset = _compose(desc, affine)
            return _mean4(x).mul_(scale.view(1, -1, 1, 1)).add_(offset.view(1, -1, 1, 1)), None
        if affine is not None:
            raise ValueError("unscaled stored values need the fast path (no pixel to mask)")
        v, m = normalise_inputs(x, desc)
        return _mean4(v), _mean4(m)

    def _context(self, v4: torch.Tensor, m4: torch.Tensor | None, desc: torch.Tensor, emb: torch.Tensor,
                 keep: tuple[int, int, int, int] | None = None) -> torch.Tensor:
        """Stage B at 1/4 and 1/8: -> (B, head_width, h/4, w/4), the head's upsampled input.
        ``m4=None``: every input pixel was valid (the masking passes are skipped; same result).
        ``keep`` = (r0, r1, c0, c1) at 1/4 resolution (inference only): return just those rows and
        columns; the decoder after the 1/8 context then runs on them alone (see :meth:`_decode`)."""
        if m4 is None:  # every pixel valid: no masking passes
            v4n, mask4 = v4.clamp(-4.0, 4.0), None
            lv4 = log_feature(v4n, desc)
            any4 = torch.ones_like(v4[:, :1])
        else:
            mask4 = (m4 > 0).to(v4.dtype)
            v4n = (v4 / m4.clamp(min=1e-6)).clamp(-4.0, 4.0) * mask4
            lv4 = log_feature(v4n, desc) * mask4
            any4 = m4.amax(dim=1, keepdim=True)
        lin = torch.cat([self.lin4(v4n, mask4, self.lin4.weights(emb)), self.lin4_log(lv4, mask4, self.lin4_log.weights(emb))], 1)
        # The context runs channels-last: oneDNN's depthwise 3×3 is up to 25× faster on it than on
        # channels-first maps this size, and the 1×1 layers (_mix) are plain products either way.
        f4 = self.stem4(_cat_channels_last([lin, any4]))
        if mask4 is None:
            v8 = F.avg_pool2d(v4n, 2)
            lv8, mask8 = log_feature(v8, desc), torch.ones_like(v8)
        else:
            v8, m8 = _wpool(v4n, mask4, 2)  # v4n is already zero where invalid
            mask8 = (m8 > 0).to(v8.dtype)
            v8 = v8 * mask8
            lv8 = log_feature(v8, desc) * mask8
        enc = self.encoder(v8, lv8, mask8, emb)
        f8 = self.down8(_cat_channels_last([F.avg_pool2d(f4, 2), enc, F.avg_pool2d(any4, 2)]))
        f8 = self.ctx8(f8)
        if keep is not None and not torch.is_grad_enabled():
            return self._decode(f8, f4, keep)
        # project to c4 at 1/8 *before* upsampling (linear ops commute), then add: no wide concat at 1/4
        up8 = F.interpolate(self.lift8(f8), size=f4.shape[-2:], mode="bilinear", align_corners=False)
        up8 = torch.relu(up8 + f4) if torch.is_grad_enabled() else add_relu_(up8, f4)
        return self.fuse4(up8).contiguous()  # the head slices it by rows: channels-first

    def _decode(self, f8: torch.Tensor, f4: torch.Tensor, keep: tuple[int, int, int, int]) -> torch.Tensor:
        """The decoder (lift, 2× upsampling, add, DS block, 1×1) for rows r0:r1 and columns c0:c1
        of the 1/4-resolution map only, equal to the same crop of the whole map.

        Why: a tiled window's output region is ~56 % of its area, and the decoder (a quarter of the
        context's time) needs only that plus a few pixels, unlike the stem and encoder, which feed
        the 1/8 context everywhere. Margins: 1 px at 1/4 for the DS block's 3×3 (rows beyond it are
        dropped, so its zero padding matters only at the map's own edges, as in the full map), and
        1 px at 1/8 beyond the bilinear neighbours, so the crop's edge clamping never differs from
        the full map's (same sampling positions: the scale is exactly 2 in both)."""
        r0, r1, c0, c1 = keep
        h4, w4 = f4.shape[-2:]
        h8, w8 = f8.shape[-2:]
        e0, e1, g0, g1 = max(r0 - 1, 0), min(r1 + 1, h4), max(c0 - 1, 0), min(c1 + 1, w4)
        s0, s1 = max(e0 // 2 - 1, 0), min(-(-e1 // 2) + 1, h8)
        t0, t1 = max(g0 // 2 - 1, 0), min(-(-g1 // 2) + 1, w8)
        cl = torch.channels_last
        src = f8[..., s0:s1, t0:t1].contiguous(memory_format=cl)
        up8 = upsample(self.lift8(src), 2)
        up8 = up8[..., e0 - 2 * s0 : e1 - 2 * s0, g0 - 2 * t0 : g1 - 2 * t0].contiguous(memory_format=cl)
        up8 = add_relu_(up8, f4[..., e0:e1, g0:g1])
        return self.fuse4(up8)[..., r0 - e0 : r1 - e0, c0 - g0 : c1 - g0].contiguous()

    def _head(self, x: torch.Tensor, desc: torch.Tensor, a4: torch.Tensor, fw: tuple[torch.Tensor, torch.Tensor],
              fast: bool, cols: tuple[int, int] | None = None,
              affine: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Stage C (per pixel, full resolution) for rows matching ``a4`` (x rows = 4 × a4 rows).

        ``cols`` = (c0, c1): ``a4`` covers only columns c0:c1 of ``x`` (c1 − c0 = 4 × its width).
        ``affine`` (only with ``fast``): ``x`` holds unscaled stored values (folded into the weights).
        Returns logits and, when some pixel needed masking, the any-band-valid map.
        """
        if not fast and affine is not None:
            raise ValueError("unscaled stored values need the fast path (no pixel to mask)")
        if fast:  # no invalid pixel: fold the thermal affine and the constant denominator into the weights
            scale, offset = _compose(desc, affine)
            wv, wm = fw
            wv = wv / wm.sum()
            # the mixture runs on whole rows (a plain product, where a column slice would be copied
            # first) and is sliced after; its constant goes on a4 before the upsampling (the
            # bilinear weights sum to one), 16× fewer values than adding it at full resolution
            fine = _mix(wv * scale.view(1, -1), x)
            if cols is not None:
                fine = fine[..., cols[0] : cols[1]]
            a4 = a4 + (wv @ offset).view(1, -1, 1, 1)
            valid = None
        else:
            if cols is not None:
                x = x[..., cols[0] : cols[1]]
            v, m = normalise_inputs(x, desc)
            fine = self.fine(v, m, fw)
            valid = m.amax(dim=1)
        up = upsample(a4, 4)
        return self.out(torch.relu(up + fine) if torch.is_grad_enabled() else add_relu_(up, fine)), valid

    # ------------------------------------------------------------------ entry points

    def forward(self, x: torch.Tensor, desc: torch.Tensor) -> torch.Tensor:
        """Logits (B, 4, h, w), unchunked, with the general masking path (used for training)."""
        x, h, w = self._prepare(x)
        emb = self.desc_mlp(descriptor_features(desc))
        v4, m4 = self._pool(x, desc, fast=False)
        a4 = self._context(v4, m4, desc, emb)
        logits, _ = self._head(x, desc, a4, self.fine.weights(emb), fast=False)
        return logits[:, :, :h, :w]

    def _stored_chunk(self, xs: torch.Tensor, desc: torch.Tensor, stored: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                      finite: bool, buf: torch.Tensor | None) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """A row chunk of stored values for the pooling or the head: unscaled float32 values and
        their (scale, offset) when no pixel needs masking (the next linear step applies them), else
        physical values (NaN at nodata) and None."""
        if finite or _nodata_free(xs, *stored):
            xf = stored_to_float(xs, buf)
            if self._all_valid(xf, desc, True, stored[:2]):
                return xf, (stored[0], stored[1])
            # a thermal fill value: physical values (the same float operations as stored_to_physical)
            return xf.mul_(stored[0].view(1, -1, 1, 1)).add_(stored[1].view(1, -1, 1, 1)), None
        return stored_to_physical(xs, *stored, mask=True, buffer=buf), None

    @torch.inference_mode()
    def predict_proba(self, x: torch.Tensor, desc: torch.Tensor, chunk: int = 64,
                      region: tuple[int, int, int, int] | None = None, finite: bool = False,
                      stored: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Class probabilities (B, 4, h, w), computed in row chunks so full-resolution
        intermediates stay in cache (memory traffic, not FLOPs, bounds CPU speed here).

        ``region`` = (y0, y1, x0, x1) returns only those rows and columns, (B, 4, y1-y0, x1-x0):
        the context still sees the whole input, but the full-resolution head runs on the region
        alone (tiled inference discards the outputs in a window's context margins anyway).
        Equal to the same crop of the full output. Pixels where no band is valid get probability
        1 for clear, so nodata is never cloud. ``finite=True`` promises that ``x`` holds no NaN or
        inf (a tiler that has checked its window already), saving a pass over it per row chunk.

        ``stored`` = (scale, offset, nodata) per band: ``x`` holds a file's stored integers (e.g.
        16-bit DNs), converted to physical values here one cache-sized row chunk at a time (see
        :func:`stored_to_physical`; ``finite`` then means that no nodata value occurs). Why: a
        float32 copy of a whole window is written to memory and read back; DNs are half the bytes,
        and each chunk is converted where it is used.
        """
        if stored is not None and (x.is_floating_point() or x.shape[-2] % self.stride or x.shape[-1] % self.stride):
            x, stored = stored_to_physical(x, *stored, mask=not finite), None  # off the pooling grid: convert once
        size = x.shape[-2:]
        x, h, w = self._prepare(x)
        finite = finite and x.shape[-2:] == size  # the stride padding is NaN
        y0, y1, x0, x1 = region if region is not None else (0, h, 0, w)
        if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
            raise ValueError(f"region {region} is not inside the {h}×{w} input")
        chunk = max(self.stride, chunk // self.stride * self.stride)
        emb = self.desc_mlp(descriptor_features(desc))
        rows = x.shape[-2]
        # one conversion buffer for every row chunk (its largest is a head chunk: + 2 rows at 1/4)
        buf = None if stored is None else x.new_empty(x.shape[0] * x.shape[1] * (chunk + 8) * x.shape[-1],
                                                        dtype=torch.float32)
        pooled = []
        for r in range(0, rows, chunk):
            xs, clean, affine = x[..., r : r + chunk, :], finite, None
            if stored is not None:  # unscaled values with their affine, or physical ones to mask
                xs, affine = self._stored_chunk(xs, desc, stored, finite, buf)
                clean = False  # physical values come back only for a nodata (NaN) or thermal fill value
            pooled.append(self._pool(xs, desc, affine is not None or self._all_valid(xs, desc, clean), affine))
        v4 = torch.cat([p[0] for p in pooled], dim=-2)
        # every chunk valid: the context skips its masking (m4 None), with the same result
        m4 = None if all(m is None for _, m in pooled) else torch.cat(
            [torch.ones_like(v) if m is None else m for v, m in pooled], dim=-2)
        del pooled
        # Rows and columns of the region plus one 1/4-res row or column each side, so bilinear
        # upsampling of a slice equals the same part of the full upsampling (row chunks below too).
        h4, w4 = v4.shape[-2:]
        rlo, rhi = max(y0 // 4 - 1, 0), min(-(-y1 // 4) + 1, h4)
        clo, chi = max(x0 // 4 - 1, 0), min(-(-x1 // 4) + 1, w4)
        a4 = self._context(v4, m4, desc, emb, keep=(rlo, rhi, clo, chi))  # rows rlo:rhi, cols clo:chi
        cols = (clo * 4, chi * 4)
        coff = x0 - clo * 4
        fw = self.fine.weights(emb)
        out = a4.new_empty(x.shape[0], N_CLASSES, y1 - y0, x1 - x0)  # float32, whatever x holds
        for r in range(y0, y1, chunk):
            lo, hi = max(r // 4 - 1, rlo), min((r + chunk) // 4 + 1, rhi)
            xs = x[..., lo * 4 : hi * 4, :]
            a4s = a4[..., lo - rlo : hi - rlo, :]
            if stored is None:
                fast = self._all_valid(xs[..., cols[0] : cols[1]], desc, finite)
                logits, valid = self._head(xs, desc, a4s, fw, fast, cols)
            else:  # convert only the columns the head reads
                xs, affine = self._stored_chunk(xs[..., cols[0] : cols[1]], desc, stored, finite, buf)
                fast = affine is not None or self._all_valid(xs, desc, False)
                logits, valid = self._head(xs, desc, a4s, fw, fast, None, affine)
            off = r - lo * 4
            n_rows = min(chunk, y1 - r)
            prob = torch.softmax(logits[:, :, off : off + n_rows, coff : coff + x1 - x0], dim=1)
            if valid is not None:
                nodata = valid[:, off : off + n_rows, coff : coff + x1 - x0] == 0
                prob[:, 0].masked_fill_(nodata, 1.0)
                prob[:, 1:].masked_fill_(nodata[:, None], 0.0)
            out[:, :, r - y0 : r - y0 + n_rows] = prob
        return out


def fold_batchnorm(net: CloudNet) -> CloudNet:
    """Fold every eval-mode BatchNorm into the convolution before it (inference only: fewer passes
    over the feature maps, identical outputs up to float rounding). Returns the same module."""
    net.eval()

    def fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * scale
        with torch.no_grad():
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
            if conv.bias is None:
                conv.bias = nn.Parameter(shift.clone())
            else:
                conv.bias.add_(shift)

    def visit(seq: nn.Module) -> None:
        for name, mod in list(seq.named_children()):
            if isinstance(mod, DSBlock):
                fold(mod.dw, mod.bn1)
                fold(mod.pw, mod.bn2)
                mod.bn1, mod.bn2 = nn.Identity(), nn.Identity()  # type: ignore[assignment]
            elif isinstance(mod, nn.Sequential):
                children = list(mod.children())
                for i, c in enumerate(children[:-1]):
                    if isinstance(c, nn.Conv2d) and isinstance(children[i + 1], nn.BatchNorm2d):
                        fold(c, children[i + 1])
                        mod[i + 1] = nn.Identity()
                visit(mod)
            else:
                visit(mod)

    visit(net)
    return net


def count_flops_per_pixel(net: CloudNet, n_bands: int = 13, size: int = 256) -> float:
    """Multiply-add FLOPs (2 per MAC) per input pixel of :meth:`CloudNet.predict_proba`,
    counted by torch's FLOP counter (matmul/conv/einsum only; elementwise ops are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(1, n_bands, size, size)
    desc = torch.tensor([[0.4 + 0.1 * i, 0.45 + 0.1 * i, 0.5 + 0.1 * i, 0.05, 0.0] for i in range(n_bands)])
    net.eval()
    with FlopCounterMode(display=False) as counter:
        net.predict_proba(x, desc)
    return counter.get_total_flops() / (size * size)
