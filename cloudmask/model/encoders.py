"""Band encoders: a set of (band image, descriptor) pairs -> a fixed-width feature map.

Two variants behind one interface (:class:`BandEncoder`), both invariant to band order and
accepting any number of bands, including bands never seen in training:

* :class:`PairwiseEncoder` – the "permutational convolution" idea (SEnSeI v1, re-derived here, not
  copied): every ordered pair of bands (i, j) gets a 1×1 filter generated from both descriptors,
  the pair responses are pooled over all pairs. O(n²) in bands; pairs see band *differences* and
  ratios directly, which is what spectral indices (NDSI, NDVI, cirrus tests) are made of.
* :class:`SetEncoder` – O(n): each band's values go through a small per-band MLP whose weights are
  generated from its descriptor (FiLM-style conditioning), then a masked descriptor-attention
  pooling plus a masked max pooling across bands.

Both treat invalid pixels (validity 0) as absent bands, so partial nodata in one band does not
pollute the pooled features, and an all-invalid pixel pools to zeros.
"""

from __future__ import annotations

import torch
from torch import nn


class BandEncoder(nn.Module):
    """Interface: ``forward(v, lv, m, emb) -> (B, out_channels, h, w)``.

    v, lv, m: (B, n, h, w) normalised value, log-value and validity (0/1 or a fraction);
    emb: (n, E) descriptor embeddings.
    """

    out_channels: int

    def forward(self, v: torch.Tensor, lv: torch.Tensor, m: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _band_softmax_weights(logits: torch.Tensor) -> torch.Tensor:
    """exp(logits) normalised per channel by the max over bands (stable, order-invariant)."""
    return torch.exp(logits - logits.max(dim=0, keepdim=True).values)


class SetEncoder(BandEncoder):
    """O(n) set encoder: descriptor-conditioned per-band MLP + attention/max pooling."""

    #: Pixels per step of the inference path (its intermediates stay in cache).
    infer_chunk = 4096

    def __init__(self, emb_dim: int, width: int):
        super().__init__()
        self.width = width
        self.gen1 = nn.Linear(emb_dim, width * 3)  # per-band weights for [v, lv] and bias
        self.mix = nn.Parameter(torch.randn(width, width) * (2.0 / width) ** 0.5)  # shared C->C
        self.film2 = nn.Linear(emb_dim, width * 2)  # per-band scale/shift after the shared layer
        self.att = nn.Linear(emb_dim, width)  # per-band attention logits per channel
        self.out_channels = 2 * width

    def forward(self, v: torch.Tensor, lv: torch.Tensor, m: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # Channels-last (B, n, h, w, C) so the shared C->C layer is one plain matrix product over a
        # contiguous array (a channels-first layout would need a transposed copy of it first).
        n, c = emb.shape[0], self.width
        g1 = self.gen1(emb).view(n, c, 3)
        f2 = self.film2(emb).view(n, c, 2)

        def per_band(t: torch.Tensor) -> torch.Tensor:  # (n, C) -> broadcastable (1, n, 1, 1, C)
            return t.reshape(1, n, 1, 1, c)

        if not torch.is_grad_enabled():
            return self._infer(v, lv, m, g1, f2, emb)
        h = torch.addcmul(per_band(g1[:, :, 2]), v[..., None], per_band(g1[:, :, 0]))
        h = torch.relu(torch.addcmul(h, lv[..., None], per_band(g1[:, :, 1])))
        h = torch.matmul(h, self.mix.T)
        h = torch.relu(torch.addcmul(per_band(f2[:, :, 1]), h, 1.0 + per_band(f2[:, :, 0]))) * m[..., None]
        ea = _band_softmax_weights(self.att(emb))  # (n, C)
        num = (h * ea.view(1, n, 1, 1, c)).sum(dim=1)  # (B, h, w, C)
        den = torch.matmul(m.permute(0, 2, 3, 1), ea).clamp(min=1e-6)  # (B, h, w, n) @ (n, C)
        return torch.cat([num / den, h.amax(dim=1)], dim=-1).permute(0, 3, 1, 2)  # channels-last, like the context net

    def _infer(self, v: torch.Tensor, lv: torch.Tensor, m: torch.Tensor, g1: torch.Tensor, f2: torch.Tensor,
               emb: torch.Tensor) -> torch.Tensor:
        """The same maths as training, band-major (n, pixels, C) so that each layer is one batched
        product with the per-band FiLM scale folded into the shared C→C matrix, run over
        :attr:`infer_chunk` pixels at a time: the (n, chunk, C) intermediates then stay in cache,
        where whole-map ones (13 × 20k × 25 floats per 1128² window) went to memory and back for
        every layer (~1.5× slower)."""
        b, n, hh, ww = v.shape
        c = self.width
        npx = b * hh * ww
        w1 = g1.transpose(1, 2).contiguous()  # (n, 3, C): weights for [v, lv, 1] (the bias as a weight)
        w2 = (self.mix.T[None] * (1.0 + f2[:, None, :, 0])).contiguous()  # (n, C, C)
        b2 = f2[:, None, :, 1].contiguous()
        vb = v.permute(1, 0, 2, 3).reshape(n, npx)
        lb = lv.permute(1, 0, 2, 3).reshape(n, npx)
        mb = m.permute(1, 0, 2, 3).reshape(n, npx, 1)
        all_valid = bool((mb == 1).all())
        ea = _band_softmax_weights(self.att(emb))  # (n, C)
        out = v.new_empty(npx, 2 * c)
        chunk = self.infer_chunk
        # [v, lv, 1] per band and pixel, in one buffer reused by every chunk: the first layer's bias
        # rides in the product (baddbmm would first copy its broadcast bias into a fresh output)
        inp = v.new_empty(n, min(chunk, npx), 3)
        inp[:, :, 2] = 1.0
        for s in range(0, npx, chunk):
            e = min(s + chunk, npx)
            x3 = inp[:, : e - s]
            x3[:, :, 0] = vb[:, s:e]
            x3[:, :, 1] = lb[:, s:e]
            h = torch.bmm(x3, w1).relu_()  # (n, p, C)
            h = torch.bmm(h, w2).add_(b2).relu_()
            if not all_valid:
                h.mul_(mb[:, s:e])
            num, peak = out[s:e, :c], out[s:e, c:]
            torch.mul(h[0], ea[0], out=num)
            peak.copy_(h[0])
            for i in range(1, n):
                num.addcmul_(h[i], ea[i])
                torch.maximum(peak, h[i], out=peak)
            num.div_(ea.sum(0) if all_valid else torch.mm(mb[:, s:e, 0].T, ea).clamp_(min=1e-6))
        return out.view(b, hh, ww, 2 * c).permute(0, 3, 1, 2)


class PairwiseEncoder(BandEncoder):
    """O(n²) permutational encoder: a generated 1×1 filter per ordered band pair, pooled over pairs."""

    def __init__(self, emb_dim: int, width: int, chunk: int = 32):
        super().__init__()
        self.width, self.chunk = width, chunk
        self.pair = nn.Sequential(nn.Linear(2 * emb_dim, 2 * emb_dim), nn.ReLU(), nn.Linear(2 * emb_dim, width * 5))
        self.out_channels = 2 * width

    def forward(self, v: torch.Tensor, lv: torch.Tensor, m: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        n, c = emb.shape[0], self.width
        ii, jj = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        keep = ii != jj
        ii, jj = ii[keep], jj[keep]
        w = self.pair(torch.cat([emb[ii], emb[jj]], dim=1)).view(-1, c, 5)  # (P, C, 5)
        b_, _, hh, ww = v.shape
        total = v.new_zeros(b_, c, hh, ww)
        count = v.new_zeros(b_, 1, hh, ww)
        peak = v.new_zeros(b_, c, hh, ww)
        for s in range(0, len(ii), self.chunk):
            i, j, wc = ii[s : s + self.chunk], jj[s : s + self.chunk], w[s : s + self.chunk]
            feats = torch.stack([v[:, i], lv[:, i], v[:, j], lv[:, j]], dim=2)  # (B, P, 4, h, w)
            h = torch.relu(torch.einsum("bpkhw,pck->bpchw", feats, wc[:, :, :4]) + wc[None, :, :, 4, None, None])
            mij = m[:, i] * m[:, j]
            h = h * mij[:, :, None]
            total = total + h.sum(dim=1)
            count = count + mij.sum(dim=1, keepdim=True)
            peak = torch.maximum(peak, h.amax(dim=1))
        return torch.cat([total / count.clamp(min=1e-6), peak], dim=1)


def _mix(weight: torch.Tensor, t: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """(K, n) @ (B, n, h, w) [+ bias (K,)] -> (B, K, h, w) via BLAS (much faster than a 1×1 conv on CPU).

    Written as mm/bmm on the (n, h·w) view: ``torch.matmul`` with a broadcast batch would transpose
    the feature map into a contiguous copy first, which costs more than the product itself.
    """
    b, n, h, w = t.shape
    k = weight.shape[0]
    if not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        # channels-last: (b·h·w, n) @ (n, K), and the result is again a channels-last view
        rows = t.permute(0, 2, 3, 1).reshape(b * h * w, n)
        y = torch.mm(rows, weight.t()) if bias is None else torch.addmm(bias, rows, weight.t())
        return y.view(b, h, w, k).permute(0, 3, 1, 2)
    flat = t.reshape(b, n, h * w)
    if b == 1:
        y = torch.mm(weight, flat[0]) if bias is None else torch.addmm(bias[:, None], weight, flat[0])
        return y.view(1, k, h, w)
    y = torch.bmm(weight.expand(b, k, n), flat)
    return (y if bias is None else y.add_(bias[None, :, None])).view(b, k, h, w)


class FineProjection(nn.Module):
    """Linear-cost spectral projection: K descriptor-generated band mixtures (learned indices).

    out_k = sum_b W_kb v_b / sum_b a_b m_b, where a_b > 0 are descriptor attention weights and
    W_kb = a_b g_k(desc_b). The single shared denominator renormalises when bands are missing at a
    pixel, and when every band is valid it is a constant that folds into the weights, so at full
    resolution this is one small matrix product per pixel.
    """

    def __init__(self, emb_dim: int, width: int):
        super().__init__()
        self.width = width
        self.gen = nn.Linear(emb_dim, width)
        self.att = nn.Linear(emb_dim, 1)

    def weights(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, n) value weights and (1, n) validity weights; computed once per band set."""
        ea = _band_softmax_weights(self.att(emb))  # (n, 1)
        return (ea * self.gen(emb)).T.contiguous(), ea.T.contiguous()

    def forward(self, v: torch.Tensor, m: torch.Tensor | None, weights: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """v: (B, n, h, w) normalised values (0 where invalid); m: validity or None if all valid."""
        wv, wm = weights
        if m is None:
            return _mix(wv / wm.sum(), v)
        return _mix(wv, v) / _mix(wm, m).clamp(min=1e-4)


def make_encoder(kind: str, emb_dim: int, width: int) -> BandEncoder:
    """Build the band encoder named in the architecture config."""
    if kind == "set":
        return SetEncoder(emb_dim, width)
    if kind == "pairwise":
        return PairwiseEncoder(emb_dim, width)
    raise ValueError(f"unknown band encoder {kind!r} (expected 'set' or 'pairwise')")
