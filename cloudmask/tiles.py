"""Tiled inference as a Dask graph: overlapping windows, feathered blending, no seams.

Why two passes instead of "predict with a halo and crop": a crop makes every pixel depend on exactly
one window, so any tile-dependent behaviour of the model shows up as a hard line. Here every window
is predicted with ``context`` pixels of extra input on each side (enough for the network's receptive
field, ``predictor.halo``) and its *usable* part overlaps its neighbours by ``2 * feather`` pixels,
where the predictions are blended with linear weights that sum to one. With a model whose receptive
field fits in the context the result equals whole-scene inference; with any other model the
transition is smooth.

Graph layout (``map_overlap`` twice, so it runs on the threaded scheduler or a distributed cluster):

1. ``data`` (band, y, x) is chunked into blocks of ``tile × (tile · batch)`` pixels; each block is
   extended by ``depth = context + feather`` pixels (NaN, i.e. nodata, outside the scene) and split
   into ``batch`` windows that go through ``predictor.predict_proba_batch`` together. The block
   returns the weighted probabilities and the weight sum over its *extended* footprint.
2. A second ``map_overlap`` gives each extended block the ``depth``-pixel margins of its neighbours,
   whose extended footprints reach into this block's core; adding them ("overlap-add") and dividing
   by the weight sum gives the blended probabilities of the core.

Memory is bounded by a few blocks per worker thread; nothing scene-sized is ever materialised.
"""

from __future__ import annotations

import functools
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import dask.array as da
import numpy as np
import xarray as xr
from rasterio.errors import RasterioError, RasterioIOError

from cloudmask.errors import BandError, CloudmaskError, ClusterError, SchedulerLostError, first_line
from cloudmask.options import TileOptions
from cloudmask.shadows import ShadowMatcher, ShadowOptions

#: Number of classes the model predicts (0 clear, 1 thick cloud, 2 thin cloud, 3 shadow).
N_CLASSES = 4
#: Mask value for pixels without data.
NODATA = 255
#: Class values and names, in output order.
CLASSES = {0: "clear", 1: "thick_cloud", 2: "thin_cloud", 3: "cloud_shadow"}
#: Channels of a pass-1 block: weighted P(clear), P(thick), P(thin), then the weight sum carrying
#: validity as its sign (+ data, − nodata; a pixel is the same in every window). P(shadow) is
#: 1 − the others, so 4 channels carry everything: the rolling buffer is the largest thing we hold.
_CHANNELS = N_CLASSES
_W = N_CLASSES - 1  # index of the signed weight channel
#: Cap on decoded input chunks kept for overlapping windows. Chunks are cached as stored (16-bit
#: DNs for most products, see ``WeightedGraph.raw``); the planned cache takes only what the scene's
#: shared strips need (:meth:`ChunkReader.expect`), up to this cap: an 8192 px wide 13-band scene in
#: 512 px chunks and 1024 px tiles is then decoded once (192 MB: 1.16×; no cache: ~1.9×); a 4096 px
#: wide one takes ~190 MB.
READER_CACHE_MB = int(os.environ.get("CLOUDMASK_READER_CACHE_MB", "256"))
#: A chunk of a band read over HTTP whose read failed (e.g. the connection dropped mid-body) is
#: read again this many times, after 0.5, 1 and 2 s (on a cluster: its block is computed again).
REMOTE_RETRIES = 3
#: Finished rows are normalised, classified and written this many at a time: the ~10 passes over
#: each slice's planes then run in cache (8192 px wide: 2 MB planes) rather than from memory
#: (64 rows instead of 256: the main thread's per-row work −40 %).
EMIT_ROWS = 64
#: The second pass (matched shadows) reads the uint8 scratch rows back this many at a time.
PASS2_ROWS = 256
#: Window offsets are kept on this grid so the network's pooling grid matches whole-scene inference.
ALIGN = 8


class ProbaPredictor(Protocol):
    """What tiling needs from a model (see :class:`cloudmask.model.Predictor`). A model may also
    accept ``region=(y0, y1, x0, x1)`` to return only that part of each window, and ``finite=True``
    (no NaN/inf in the input, already checked); each is used when present."""

    halo: int

    def predict_proba_batch(self, x: np.ndarray, descriptors: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class TilePlan:
    """The resolved geometry: window core size, context, feather and Dask block shape."""

    tile: int
    context: int
    feather: int
    block_y: int
    block_x: int

    @property
    def depth(self) -> int:
        return self.context + self.feather


def _round_up(v: int, m: int = ALIGN) -> int:
    return int(-(-int(v) // m) * m)


def plan_tiles(options: TileOptions, halo: int) -> TilePlan:
    """Resolve user options against the model's halo.

    The overlap is split into context (at least the halo when the overlap allows it) and a feather
    zone of at least 8 px. Everything is a multiple of 8 so window origins sit on the model's
    pooling grid.
    """
    from cloudmask.errors import UsageError

    if options.tile_size < 16:
        raise UsageError(f"--tile-size must be at least 16 pixels, got {options.tile_size}")
    if options.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {options.batch_size}")
    halo = _round_up(max(0, halo))
    tile = _round_up(options.tile_size)
    overlap = halo + 8 if options.overlap is None else int(options.overlap)
    if overlap < 0:
        raise UsageError(f"--overlap must be zero or positive, got {overlap}")
    overlap = _round_up(overlap)
    if overlap == 0:
        context, feather = 0, 0
    elif overlap > halo:
        context, feather = halo, overlap - halo
    else:  # less overlap than the model wants: keep a feather, accept less context
        feather = min(overlap, max(ALIGN, _round_up(overlap // 4)))
        context = overlap - feather
    feather = min(feather, tile // 2 // ALIGN * ALIGN)  # on the grid too (tile 104: 48, not 52)
    depth = context + feather
    # Dask blocks hold whole windows and must be at least ``depth`` wide for the overlap-add pass.
    rows = max(1, -(-depth // tile))
    cols = max(options.batch_size, rows)
    return TilePlan(tile=tile, context=context, feather=feather, block_y=tile * rows, block_x=tile * cols)


def feather_weights(tile: int, context: int, feather: int) -> np.ndarray:
    """1-D weight over a window of ``tile + 2 * (context + feather)`` pixels.

    Zero in the context margins (those predictions lack context), a linear ramp across the feather
    zone on each side, one in the middle. Ramps of neighbouring windows sum to exactly one.
    """
    depth = context + feather
    c = np.arange(tile + 2 * depth, dtype="float64") - depth  # core coordinates
    if feather == 0:
        w = ((c >= 0) & (c < tile)).astype("float64")
    else:
        up = (c + feather + 0.5) / (2 * feather)
        down = (tile + feather - c - 0.5) / (2 * feather)
        w = np.clip(np.minimum(up, down), 0.0, 1.0)
    return w.astype("float32")


@functools.lru_cache(maxsize=64)
def _window_weights(cy: int, cx: int, context: int, feather: int) -> np.ndarray:
    """The 2-D weights of a ``cy`` × ``cx`` core's window inside its context margins (where they
    are not zero), read-only: made once per window shape, not once per block."""
    w = np.outer(feather_weights(cy, context, feather), feather_weights(cx, context, feather))
    w = w[context : w.shape[0] - context, context : w.shape[1] - context].copy()
    w.flags.writeable = False
    return w


def even_split(size: int, target: int, minimum: int = 1, align: int = ALIGN) -> tuple[int, ...]:
    """Split ``size`` px into the number of parts closest to ``size / target``, as equal as the
    ``align`` grid allows (every part a multiple of ``align`` except the last; none under ``minimum``
    unless there is only one).

    Why not ``target``-sized parts plus a remainder: a thin last part still costs a full window of
    context around it (a 4096 px edge in 768 px tiles is 5 tiles + 256 px, 36 % more model work).
    """
    units, rest = divmod(int(size), align)
    n = max(1, round(size / max(1, target)))
    while n > 1 and (units // n) * align < max(minimum, 1):
        n -= 1
    if n == 1 or units == 0:
        return (int(size),)
    q, r = divmod(units, n)
    # the r larger parts go to the ends (first, last, second, second-to-last, …): interior parts
    # then share one size more often, and every window shape costs the model a one-off kernel setup
    ends = [k // 2 if k % 2 == 0 else n - 1 - k // 2 for k in range(r)]
    parts = [q * align] * n
    for k in ends:
        parts[k] += align
    parts[-1] += rest
    return tuple(parts)


def _chunks_1d(size: int, block: int, depth: int) -> tuple[int, ...]:
    """Dask block sizes along one axis: near-equal, none thinner than ``depth`` (the overlap-add
    pass reaches ``depth`` px into a neighbour)."""
    return even_split(size, block, minimum=depth)


def _with_margins(chunks: tuple[int, ...], d: int) -> tuple[int, ...]:
    """Chunk sizes of an axis padded by ``d`` on both ends: the outer blocks absorb the pad."""
    if len(chunks) == 1:
        return (chunks[0] + 2 * d,)
    return (chunks[0] + d, *chunks[1:-1], chunks[-1] + d)


def _predict_block(
    block: np.ndarray, predictor: ProbaPredictor, descriptors: np.ndarray, plan: TilePlan, batch_size: int,
    edges: tuple[bool, bool, bool, bool] = (False, False, False, False), *, owned: bool = False,
    stored: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Pass 1: (bands, Hb+2d, Wb+2d) input → (4, Hb+2d, Wb+2d): weighted P(clear, thick, thin) and
    the weight sum signed by validity (so the blended result also says which pixels had data).

    ``edges`` (top, bottom, left, right) says which sides of the block lie on the scene's edge, where
    its ``d`` px margin is outside the scene. Windows there are cut flush with the scene instead of
    being fed that margin as nodata: the model then sees the scene edge exactly as whole-scene
    inference does (window origins stay on the 8 px grid), and does no work on padding.

    ``owned``: ``block`` is this call's own array (a reader's fresh window), so it may be changed in
    place. ``stored`` = per band (scale, offset, nodata): ``block`` holds stored integers that the
    model converts itself (its ``predict_proba_batch`` takes ``stored=``); a pixel is nodata where
    any band holds its nodata value.
    """
    _use_torch_threads()
    t, d = plan.tile, plan.depth
    n, eh, ew = block.shape
    h, w = eh - 2 * d, ew - 2 * d
    # rows/cols of the block that are scene: [in_y0, in_y1) × [in_x0, in_x1)
    in_y0, in_y1 = d * edges[0], eh - d * edges[1]
    in_x0, in_x1 = d * edges[2], ew - d * edges[3]
    # Window cores split the block evenly (multiples of 8 px, so origins stay on the pooling grid);
    # each window is its core plus ``d`` px all round, so no window is padded past the block.
    min_core = max(2 * plan.feather, 1)
    ys, xs = even_split(h, t, min_core), even_split(w, t, min_core)
    c = plan.context
    # One window (the default plan): its weighted part is written, not added, and only the rest of
    # the block is zeroed (an 18 MB block is otherwise zeroed, then summed into: ~4 ms a window).
    single = len(ys) == 1 and len(xs) == 1
    acc = np.empty((_CHANNELS, eh, ew), dtype="float32") if single else np.zeros((_CHANNELS, eh, ew), dtype="float32")
    if single:
        acc[:, :c] = 0.0
        acc[:, eh - c :] = 0.0
        acc[:, c : eh - c, :c] = 0.0
        acc[:, c : eh - c, ew - c :] = 0.0
    valid = np.zeros((eh, ew), dtype=bool)
    x = block if stored is not None else block.astype("float32", copy=False)
    inside = x[:, in_y0:in_y1, in_x0:in_x1]
    # one pass each: a NaN/inf makes the sum non-finite; stored values are checked against nodata
    if stored is not None and _stored_all_valid(inside, stored[2]):
        valid[in_y0:in_y1, in_x0:in_x1] = True  # the usual window: one scalar reduction, no per-pixel map
    else:
        valid[in_y0:in_y1, in_x0:in_x1] = _stored_valid(inside, stored[2]) if stored is not None else np.isfinite(inside.sum(axis=0))
    all_finite = bool(valid[in_y0:in_y1, in_x0:in_x1].all())  # then the model need not check again
    if not all_finite and stored is None:
        finite = np.isfinite(inside)
        valid[in_y0:in_y1, in_x0:in_x1] = finite.all(axis=0)
        if not finite.all():
            if not x.flags.writeable or (x is block and not owned):
                x = x.copy()
                inside = x[:, in_y0:in_y1, in_x0:in_x1]
            inside[~finite] = np.nan  # ±inf is nodata too
        del finite
    # Feather weights are zero in each window's ``context`` margins: only the inner part (core +
    # feather) carries weight. A model that can skip outputs (``region``) is asked for that part
    # alone, so its full-resolution work shrinks by ~45 % of the window's area.
    # windows grouped by (cut window box, output box) relative to the window origin, so that a
    # batch stacks windows of one shape
    groups: dict[tuple[int, ...], list[tuple[int, int]]] = {}
    for cy, y0 in zip(ys, np.cumsum((0, *ys[:-1]))):
        for cx, x0 in zip(xs, np.cumsum((0, *xs[:-1]))):
            y0, x0 = int(y0), int(x0)
            wy, wx = cy + 2 * d, cx + 2 * d
            w2 = _window_weights(cy, cx, c, plan.feather)
            inner = valid[y0 + c : y0 + wy - c, x0 + c : x0 + wx - c]
            wch = acc[_W, y0 + c : y0 + wy - c, x0 + c : x0 + wx - c]
            if single:
                wch[...] = w2
                if not inner.all():  # nodata, or rows and columns beyond the scene's edge
                    np.negative(wch, out=wch, where=~inner)
            else:
                wch += np.where(inner, w2, -w2)
            ya, yb = max(0, in_y0 - y0), min(wy, in_y1 - y0)
            xa, xb = max(0, in_x0 - x0), min(wx, in_x1 - x0)
            oy0, oy1 = max(c, ya), min(wy - c, yb)
            ox0, ox1 = max(c, xa), min(wx - c, xb)
            skip = not inner.any()  # no valid pixel where the window carries weight: all nodata there
            if single and (skip or (oy0, oy1, ox0, ox1) != (c, wy - c, c, wx - c)):
                acc[:_W, c : wy - c, c : wx - c] = 0.0  # part of it is not written below
            if skip:
                continue
            # (ya:yb, xa:xb) is the window cut to the scene, (oy0:oy1, ox0:ox1) the weighted part of it
            groups.setdefault((cy, cx, ya, yb, xa, xb, oy0, oy1, ox0, ox1), []).append((y0, x0))
    region = _accepts(predictor, "region")
    hint: dict[str, Any] = {"finite": True} if all_finite and _accepts(predictor, "finite") else {}
    if stored is not None:
        hint["stored"] = stored
    for (cy, cx, ya, yb, xa, xb, oy0, oy1, ox0, ox1), todo in groups.items():
        w2 = _window_weights(cy, cx, c, plan.feather)[oy0 - c : oy1 - c, ox0 - c : ox1 - c]
        for i in range(0, len(todo), batch_size):
            group = todo[i : i + batch_size]
            if len(group) == 1:  # a view, no copy (the model reads it row chunk by row chunk)
                y0, x0 = group[0]
                stack = x[None, :, y0 + ya : y0 + yb, x0 + xa : x0 + xb]
            else:
                stack = np.stack([x[:, y0 + ya : y0 + yb, x0 + xa : x0 + xb] for y0, x0 in group])
            box = (oy0 - ya, oy1 - ya, ox0 - xa, ox1 - xa)
            if region:
                proba = predictor.predict_proba_batch(stack, descriptors, region=box, **hint)
            else:
                proba = np.asarray(predictor.predict_proba_batch(stack, descriptors, **hint))[:, :, box[0] : box[1], box[2] : box[3]]
            proba = np.asarray(proba, dtype="float32")
            if proba.shape != (len(group), N_CLASSES, oy1 - oy0, ox1 - ox0):
                raise ValueError(f"model returned shape {proba.shape}, expected {(len(group), N_CLASSES, oy1 - oy0, ox1 - ox0)}")
            for (y0, x0), p in zip(group, proba):
                dst = acc[:_W, y0 + oy0 : y0 + oy1, x0 + ox0 : x0 + ox1]
                # one window writes its share; overlapping ones add theirs (one temporary: the
                # model's array is not ours)
                p3 = np.multiply(p[:_W], w2, out=dst) if single else p[:_W] * w2
                if not np.isfinite(p3.sum()):  # a model that leaves NaN at nodata (one pass to find out)
                    np.nan_to_num(p3, copy=False)
                if not single:
                    dst += p3
    return acc


def _stored_all_valid(x: np.ndarray, nodata: np.ndarray) -> bool:
    """Whether no pixel of the stored (band, h, w) ``x`` holds a nodata value, answered at once for
    the usual unsigned data with nodata 0 (a scalar minimum: ~2x cheaper than the per-pixel map);
    False (ask :func:`_stored_valid`) otherwise."""
    if x.size == 0 or np.isnan(nodata).all():
        return True  # nothing to check, or no band has a nodata value
    if x.dtype.kind == "u" and np.all(nodata == 0):
        return bool(x.min() > 0)
    return False


def _stored_valid(x: np.ndarray, nodata: np.ndarray) -> np.ndarray:
    """(h, w) True where no band of the stored (band, h, w) ``x`` holds its nodata value (NaN: none)."""
    bands = np.flatnonzero(~np.isnan(nodata))
    if len(bands) == 0:
        return np.ones(x.shape[1:], dtype=bool)
    if len(bands) == x.shape[0] and np.all(nodata == 0) and x.dtype.kind == "u":
        return x.min(axis=0) > 0  # unsigned with nodata 0 everywhere (the usual case): one reduction
    ok = x[bands[0]] != x.dtype.type(nodata[bands[0]])
    for b in bands[1:]:
        ok &= x[b] != x.dtype.type(nodata[b])
    return ok


def _predict_ext_block(block: np.ndarray, predictor: ProbaPredictor, descriptors: np.ndarray, plan: TilePlan,
                       batch_size: int, ny: int, nx: int, block_id: tuple[int, ...] = (0, 0, 0)) -> np.ndarray:
    """:func:`_predict_block` for block ``block_id`` of an ``ny`` × ``nx`` grid (Dask's map_blocks)."""
    _, i, j = block_id
    return _predict_block(block, predictor, descriptors, plan, batch_size, (i == 0, i == ny - 1, j == 0, j == nx - 1))


@functools.lru_cache(maxsize=32)
def _accepts_type(kind: type, name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(kind.predict_proba_batch).parameters
    except (TypeError, ValueError, AttributeError):
        return False


def _accepts(predictor: Any, name: str) -> bool:
    """Whether ``predictor.predict_proba_batch`` takes the keyword ``name`` (cloudmask's Predictor
    takes ``region=`` and ``finite=``; other models may take neither)."""
    return _accepts_type(type(predictor), name)


def _fold_axis(e: np.ndarray, axis: int, d: int) -> np.ndarray:
    """Overlap-add along one axis: [nbr tail d | own d | core | own d | nbr head d] → core."""
    length = e.shape[axis]
    core = length - 4 * d

    def sl(a: int, b: int) -> tuple[slice, ...]:
        idx = [slice(None)] * e.ndim
        idx[axis] = slice(a, b)
        return tuple(idx)

    out = e[sl(2 * d, 2 * d + core)].copy()
    if d and core >= d:
        out[sl(0, d)] += e[sl(0, d)]
        out[sl(core - d, core)] += e[sl(length - d, length)]
    return out


def _fold_block(e: np.ndarray, depth: int) -> np.ndarray:
    """Pass 2: neighbours' margins added to the core, then normalised by the weight sum."""
    out = _fold_axis(_fold_axis(e, 1, depth), 2, depth)
    return _normalise(out)


def _normalise(out: np.ndarray) -> np.ndarray:
    """Accumulated (4, h, w) channels → (4, h, w) probabilities (shadow = 1 − the others)."""
    proba = np.empty(out.shape, dtype="float32")
    weight = np.abs(out[_W])
    # where no window put weight the sums are zero too: any positive divisor gives 0 there
    np.maximum(weight, np.float32(1e-30), out=weight)
    np.divide(out[:_W], weight, out=proba[:_W])
    rest = np.add(proba[0], proba[1])  # the same sum, in place (a sum over the outer axis is strided)
    for k in range(2, _W):
        rest += proba[k]
    np.subtract(np.float32(1.0), rest, out=rest)
    np.clip(rest, 0.0, 1.0, out=proba[_W])
    return proba


def _valid(out: np.ndarray) -> np.ndarray:
    return out[_W] > 0


@dataclass(frozen=True)
class WeightedGraph:
    """Pass 1 as a Dask array: block (i, j) is core block (i, j) plus ``depth`` px on every side."""

    plan: TilePlan
    ychunks: tuple[int, ...]
    xchunks: tuple[int, ...]
    shape: tuple[int, int]
    source: da.Array  # the (band, y, x) float32 scene
    args: tuple[Any, ...]  # (predictor, descriptors, plan, batch_size) for _predict_block
    raw: Any = None  # cloudmask.scene.RawBands behind ``source`` (chunked alike), for the local reader

    @functools.cached_property
    def weighted(self) -> da.Array:
        """(4, Σ(ychunks + 2d), Σ(xchunks + 2d)) float32, built on first use: the streaming path
        (:func:`stream_mask`) reads windows itself and never needs the whole graph."""
        return _weighted_array(self)

    def _window(self, i: int, j: int) -> tuple[int, int, int, int]:
        """Scene rows/cols (y0, y1, x0, x1) that block (i, j) needs, halo included (may overhang)."""
        d = self.plan.depth
        y0 = int(sum(self.ychunks[:i])) - d
        x0 = int(sum(self.xchunks[:j])) - d
        return y0, y0 + self.ychunks[i] + 2 * d, x0, x0 + self.xchunks[j] + 2 * d

    def block(self, i: int, j: int) -> da.Array:
        """Pass-1 block (i, j) as a standalone one-chunk graph that reads only its own window.

        Same values as ``weighted.blocks[:, i, j]``, but the generic halo exchange materialises whole
        neighbouring blocks to cut their margins; reading the exact window keeps a task's memory to
        one window of bands.
        """
        h, w = self.shape
        y0, y1, x0, x1 = self._window(i, j)
        win = self.source[:, max(0, y0) : min(h, y1), max(0, x0) : min(w, x1)]
        pads = ((0, 0), (max(0, -y0), max(0, y1 - h)), (max(0, -x0), max(0, x1 - w)))
        win = win.rechunk(-1)
        if any(p for pair in pads for p in pair):  # in the task: da.pad cuts the margin into pieces
            # as wide as the edge chunk (a 1 px scene: ~300² one-pixel tasks per band, no end)
            win = win.map_blocks(np.pad, pads, mode="constant", constant_values=np.nan,
                                 chunks=((win.shape[0],), (y1 - y0,), (x1 - x0,)), dtype=win.dtype)
        return win.map_blocks(_predict_block, *self.args, edges=self._edges(i, j), chunks=((_CHANNELS,), (y1 - y0,), (x1 - x0,)),
                              dtype="float32")

    def _edges(self, i: int, j: int) -> tuple[bool, bool, bool, bool]:
        """Which sides (top, bottom, left, right) of block (i, j) are on the scene's edge."""
        return i == 0, i == len(self.ychunks) - 1, j == 0, j == len(self.xchunks) - 1

    def cluster_block(self, i: int, j: int) -> Any:
        """Pass-1 block (i, j) for a Dask cluster: :meth:`block_reader`'s callable when the bands
        are read straight from their files (it travels with its reader, which each worker keeps
        once: chunks decoded once per worker, stored values to the model, no per-chunk graph),
        else :meth:`block`'s graph."""
        if self.raw is not None and self.raw.files is not None and all(f is not None for f in self.raw.files) \
                and self.reader.files is not None:
            return self.block_reader(i, j)
        return self.block(i, j)

    def block_reader(self, i: int, j: int, nir_band: int | None = None) -> Any:
        """Like :meth:`block`, as a local callable that reads the window one band at a time, so the
        transient memory of reading is one band's chunks rather than all of them at once.

        With ``nir_band`` it returns ``(block, nir)``: that band's values over the block's core, as
        read (stored or physical, see :meth:`core_to_physical`), for the shadow step's darkness test
        (reading the band again later would decode the scene's blocks a second time)."""
        y0, y1, x0, x1 = self._window(i, j)
        reader, args, edges = self.reader, self.args, self._edges(i, j)
        stored = reader.stored if _accepts(args[0], "stored") else None
        d, ch, cw = self.plan.depth, self.ychunks[i], self.xchunks[j]

        def run() -> Any:
            # _predict_block cuts windows flush with the scene edges: it never reads beyond them
            if stored is not None:  # the model converts the stored values, chunk by chunk
                win = reader.window_stored(y0, y1, x0, x1)
            else:
                win = reader.window(y0, y1, x0, x1, outside=None)
            nir = None if nir_band is None else win[nir_band, d : d + ch, d : d + cw].copy()  # the model may reuse win
            block = _predict_block(win, *args, edges, owned=True, stored=stored)
            return block if nir_band is None else (block, nir, stored is not None)

        return run

    def core_to_physical(self, band: int, values: np.ndarray, is_stored: bool) -> np.ndarray:
        """Core values from :meth:`block_reader` as physical float32 (stored ones converted)."""
        if not is_stored or self.reader.convert is None:
            return values.astype("float32", copy=False)
        out = np.empty(values.shape, "float32")
        self.reader.convert[band].into(values[None], out[None])
        return out

    @functools.cached_property
    def reader(self) -> ChunkReader:
        if self.raw is not None:  # cache stored (e.g. 16-bit) chunks, convert what windows copy
            return ChunkReader(self.raw.data, convert=self.raw.convert, files=self.raw.files,
                               retries=REMOTE_RETRIES if self.raw.remote else 0)
        return ChunkReader(self.source)


#: Readers unpickled in this process (Dask workers), by the token of the reader they copy: the
#: tasks of one run share one; the latest two are kept (two runs may share a cluster).
_SHARED_READERS: dict[str, ChunkReader] = {}
_SHARED_READERS_LOCK = threading.Lock()


def _shared_reader(identity: str, state: dict[str, Any]) -> ChunkReader:
    with _SHARED_READERS_LOCK:
        r = _SHARED_READERS.get(identity)
        if r is None:
            r = ChunkReader.__new__(ChunkReader)
            r.__dict__.update(state)
            r._start(READER_CACHE_MB)
            while len(_SHARED_READERS) >= 2:  # scenes are masked one after the other
                _SHARED_READERS.pop(next(iter(_SHARED_READERS)))
            _SHARED_READERS[identity] = r
        return r


class ChunkReader:
    """Reads windows of a lazy (band, y, x) array chunk by chunk, one band chunk at a time.

    Why not ``arr[:, y0:y1, x0:x1].compute()``: every ``compute`` re-optimises and culls the whole
    scene graph (thousands of tasks), which cost more than the model per window. Here the graph is
    optimised once and each chunk's small sub-graph is culled once and run with the synchronous
    scheduler in the calling thread.

    Overlapping windows share chunks, so decoded chunks are cached up to ``cache_mb``. Given the
    windows to come, in order (:meth:`expect`), a chunk is dropped right after its last use, and
    when the cache is full the chunk needed furthest in the future goes first (Belady's rule: with
    windows in raster order, plain LRU would evict exactly the chunks the next block row needs
    first). Without a plan it is an LRU cache.
    """

    def __init__(self, arr: da.Array, cache_mb: int = 64, convert: Sequence[Any] | None = None,
                 files: Sequence[tuple[str, int] | None] | None = None, retries: int = 0) -> None:
        """``convert``: with ``arr`` holding stored values (e.g. 16-bit DNs, one band per chunk),
        per band a converter (a "function") whose ``into(stored, out)`` writes physical float32 values
        (:class:`cloudmask.scene.ToPhysical`), applied to what a window copies, so the cache holds
        the compact stored chunks.

        ``files``: per band, the (path, 1-based band index) that ``arr``'s band is, pixel for pixel
        (:attr:`cloudmask.scene.RawBands.files`). When every band has one, chunks are read with
        rasterio directly (a dataset per thread): the Dask + xarray path cost ~0.4 ms per chunk on
        top of GDAL's ~1.5 ms, 6–8 % of a whole ``mask`` run.

        ``retries``: times a chunk whose read failed is read again (after 0.5 s, 1 s, …), for bands
        read over HTTP: GDAL repeats a request answered 429/5xx itself, not one whose connection
        dropped half-way through the body, which would otherwise end the scene."""
        import dask
        from dask.core import flatten

        if convert is not None and (len(convert) != arr.shape[0] or any(c != 1 for c in arr.chunks[0])):
            raise ValueError("convert needs one function per band and one band per chunk")
        self.convert = list(convert) if convert is not None else None

        one_band_chunks = all(c == 1 for c in arr.chunks[0])
        self.files = list(files) if files is not None and len(files) == arr.shape[0] and one_band_chunks \
            and all(f is not None for f in files) else None
        self.retries = retries
        # what a worker shares this reader's cache by: this reader, not its files (on a cluster
        # that outlives a run, a file rewritten since must not be read from an old cache)
        self._token = uuid.uuid4().hex
        # the graph is only run when chunks are not read from their files (optimising it cost
        # ~0.2 s for an 8192² scene)
        (opt,) = (arr,) if self.files is not None else dask.optimize(arr)
        self.dsk = dict(opt.__dask_graph__()) if self.files is None else {}
        self.keys = np.empty(opt.numblocks, dtype=object)
        for key in flatten(opt.__dask_keys__()):
            self.keys[key[1:]] = key
        self.offsets = [np.concatenate([[0], np.cumsum(c)]).astype(int) for c in opt.chunks]
        self.shape = opt.shape
        self._dtype = np.dtype(opt.dtype)
        self._start(cache_mb)
        self.stored = self._stored_affine(arr.dtype)

    #: what a pickled reader leaves behind: its threads' datasets, its lock, its cache and plan
    _RUNTIME = ("_local", "_lock", "_cache", "_cached_bytes", "cache_bytes", "_pending", "_sub", "_uses", "_order")

    def _start(self, cache_mb: int) -> None:
        """A fresh (empty) cache, lock and per-thread datasets."""
        from collections import OrderedDict

        self._local = threading.local()  # per thread: {path: open rasterio dataset}
        self._sub: dict[Any, dict[Any, Any]] = {}
        self._pending: dict[Any, Future[np.ndarray]] = {}  # chunks being decoded, by key
        self._lock = threading.Lock()
        self._cache: OrderedDict[Any, np.ndarray] = OrderedDict()
        self._cached_bytes = 0
        self.cache_bytes = cache_mb * 2**20
        # planned reads: per chunk, the indices of the windows still to read it (ascending)
        self._uses: dict[Any, list[int]] | None = None
        self._order: dict[tuple[int, int, int, int], int] = {}

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled (to Dask workers, with each block task) without its cache or datasets, and
        unpickled through a per-process cache: the tasks of one scene on one worker share one
        reader, so the chunks neighbouring windows share are decoded once there too (an LRU
        cache, as the worker does not know the order of the blocks it will get)."""
        state = {k: v for k, v in self.__dict__.items() if k not in self._RUNTIME}
        return _shared_reader, (self._token, state)

    def _stored_affine(self, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Per band (scale, offset, nodata) when the chunks hold small integers that every band maps
        affinely to physical values: windows can then go to the model as stored (see
        :meth:`window_stored`). None otherwise (float files, thermal radiance, 32-bit integers)."""
        from cloudmask.model.predictor import STORED_DTYPES

        if self.convert is None or np.dtype(dtype) not in STORED_DTYPES:
            return None
        affine = [getattr(c, "affine", None) for c in self.convert]
        if any(a is None for a in affine):
            return None
        info = np.iinfo(dtype)
        values = [getattr(c, "nodata", None) for c in self.convert]
        nodata = [v if v is not None and np.isfinite(v) and float(v).is_integer() and info.min <= v <= info.max
                  else np.nan for v in values]  # a value the type cannot hold never occurs
        return (np.array([a[0] for a in affine], "float32"), np.array([a[1] for a in affine], "float32"),
                np.array(nodata, "float32"))

    def _keys(self, y0: int, y1: int, x0: int, x1: int) -> list[tuple[Any, int, int]]:
        """(chunk key, y-chunk, x-chunk) that window rows y0:y1, cols x0:x1 touch, column by column."""
        n, h, w = self.shape
        ya, yb, xa, xb = max(0, y0), min(h, y1), max(0, x0), min(w, x1)
        if ya >= yb or xa >= xb:
            return []
        _, yoff, xoff = self.offsets
        iys = range(int(np.searchsorted(yoff, ya, "right")) - 1, int(np.searchsorted(yoff, yb, "left")))
        ixs = range(int(np.searchsorted(xoff, xa, "right")) - 1, int(np.searchsorted(xoff, xb, "left")))
        return [(self.keys[ib, iy, ix], iy, ix) for ix in ixs for iy in iys for ib in range(self.keys.shape[0])]

    def expect(self, windows: list[tuple[int, int, int, int]], cache_mb: int) -> None:
        """Plan the windows (y0, y1, x0, x1) that will be read, roughly in this order.

        The cache is sized to the plan, at most ``cache_mb``: the most bytes of chunks that are
        ever between their first and last read (each chunk then decoded once), plus one window's
        chunks, since the next window is read while one is still reading. A scene that needs less
        than the cap takes less memory."""
        boff, yoff, xoff = self.offsets
        size = self._dtype.itemsize

        def nbytes(key: Any) -> int:
            ib, iy, ix = key[1:]
            return int(boff[ib + 1] - boff[ib]) * int(yoff[iy + 1] - yoff[iy]) * int(xoff[ix + 1] - xoff[ix]) * size

        uses: dict[Any, list[int]] = {}
        window_bytes = 0
        for k, win in enumerate(windows):
            keys = [key for key, _, _ in self._keys(*win)]
            window_bytes = max(window_bytes, sum(map(nbytes, keys)))
            for key in keys:
                uses.setdefault(key, []).append(k)
        live = np.zeros(len(windows) + 1, dtype=np.int64)  # change in held bytes at each window
        for key, at in uses.items():
            if len(at) > 1:
                live[at[0]] += nbytes(key)
                live[at[-1]] -= nbytes(key)
        need = int(np.cumsum(live).max()) + window_bytes if windows else 0
        with self._lock:
            self._uses = uses
            self._order = {tuple(win): k for k, win in enumerate(windows)}
            self.cache_bytes = min(cache_mb * 2**20, need)

    def _next_use(self, key: Any) -> int:
        if self._uses is None:
            return 0
        left = self._uses.get(key)
        return left[0] if left else -1

    def _chunk(self, key: Any, now: int | None) -> np.ndarray:
        from dask.local import get_sync
        from dask.optimization import cull

        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                self._used(key, now)
                return hit
            # Neighbouring windows run at once and share chunks: a chunk another thread is decoding
            # is waited for, not decoded twice (that was ~8 % of all decoding with two workers).
            pending = self._pending.get(key)
            if pending is None:
                self._pending[key] = Future()
                sub = self._sub.get(key)
        if pending is not None:
            value = pending.result()
            with self._lock:
                self._used(key, now)
            return value
        try:
            for attempt in range(self.retries + 1):
                try:
                    if self.files is not None:
                        value = self._read_file_chunk(key)
                    else:
                        if sub is None:
                            sub = self._sub[key] = cull(self.dsk, [key])[0]
                        value = np.asarray(get_sync(sub, key))
                    break
                except RasterioIOError:
                    if attempt == self.retries:
                        raise
                    self._forget_handle(key)
                    time.sleep(0.5 * 2**attempt)
        except BaseException as exc:  # Ctrl-C too: whoever waits must not wait for ever
            with self._lock:
                self._pending.pop(key).set_exception(exc)
            raise
        with self._lock:
            self._used(key, now)
            if key not in self._cache and value.nbytes <= self.cache_bytes and self._next_use(key) >= 0:
                self._cache[key] = value
                self._cached_bytes += value.nbytes
                self._evict()
            self._pending.pop(key).set_result(value)
        return value

    def _forget_handle(self, key: Any) -> None:
        """Before reading chunk ``key`` again: drop what GDAL keeps of its file (the cut response)
        and close this thread's dataset of it."""
        from cloudmask.scene import forget_remote_data

        if self.files is None:  # read through the graph: which file failed is not known here
            forget_remote_data()
            return
        path = self.files[key[1]][0]
        forget_remote_data(path)
        ds = getattr(self._local, "handles", {}).pop(path, None)
        if ds is not None:
            ds.close()

    def _read_file_chunk(self, key: Any) -> np.ndarray:
        """Chunk ``key`` (band, y-chunk, x-chunk) straight from its file, through this thread's
        own dataset handle (GDAL handles are not shared between threads)."""
        import warnings

        import rasterio
        from rasterio.errors import NotGeoreferencedWarning
        from rasterio.windows import Window

        ib, iy, ix = key[1:]
        path, index = self.files[ib]
        handles = getattr(self._local, "handles", None)
        if handles is None:
            handles = self._local.handles = {}
        ds = handles.get(path)
        if ds is None:
            if "://" in path:  # on a Dask worker too: retry a failed range request
                from cloudmask.scene import configure_remote_reads

                configure_remote_reads()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                ds = handles[path] = rasterio.open(path)
        _, yoff, xoff = self.offsets
        win = Window(int(xoff[ix]), int(yoff[iy]), int(xoff[ix + 1] - xoff[ix]), int(yoff[iy + 1] - yoff[iy]))
        return ds.read(index, window=win)[None].astype(self._dtype, copy=False)

    def _evict(self) -> None:
        """Shrink to the cap (lock held): furthest next use first when planned, else oldest."""
        while self._cached_bytes > self.cache_bytes and self._cache:
            if self._uses is None:
                _, old = self._cache.popitem(last=False)
            else:
                far = max(self._cache, key=self._next_use)
                old = self._cache.pop(far)
            self._cached_bytes -= old.nbytes

    def _used(self, key: Any, now: int | None) -> None:
        """Window ``now`` has read ``key`` (lock held): after its last planned use, forget it."""
        if self._uses is None or now is None or key not in self._uses:
            return
        left = self._uses[key]
        if now in left:  # only this window's use: an earlier window may still be reading (threads)
            left.remove(now)
        if not left:
            del self._uses[key]
            self._sub.pop(key, None)
            old = self._cache.pop(key, None)
            if old is not None:
                self._cached_bytes -= old.nbytes

    def window(self, y0: int, y1: int, x0: int, x1: int, outside: float | None = np.nan) -> np.ndarray:
        """(band, y1-y0, x1-x0) float32; ``outside`` (NaN: nodata) beyond the array, or left
        uninitialised there with ``outside=None`` (for a caller that never reads it)."""
        n, h, w = self.shape
        ya, yb, xa, xb = max(0, y0), min(h, y1), max(0, x0), min(w, x1)
        shape = (n, y1 - y0, x1 - x0)
        if (ya, yb, xa, xb) == (y0, y1, x0, x1) or outside is None:
            out = np.empty(shape, dtype="float32")  # every pixel that matters is copied below
        else:
            out = np.full(shape, outside, dtype="float32")
        self._fill(out, y0, y1, x0, x1, convert=self.convert is not None)
        return out

    def band_rows(self, band: int, y0: int, y1: int) -> np.ndarray:
        """Rows ``y0:y1`` of one band over the full width, physical float32 (for the shadow step's
        darkness test: one band instead of all)."""
        _, _, w = self.shape
        out = np.empty((y1 - y0, w), dtype="float32")
        boff, yoff, xoff = self.offsets
        ib = int(np.searchsorted(boff, band, "right")) - 1
        for key, iy, ix in self._keys(y0, y1, 0, w):
            if key[1] != ib:
                continue
            chunk = self._chunk(key, None)
            sy0, sy1 = max(y0, yoff[iy]), min(y1, yoff[iy + 1])
            part = chunk[band - boff[ib] : band - boff[ib] + 1, sy0 - yoff[iy] : sy1 - yoff[iy], :]
            dst = out[None, sy0 - y0 : sy1 - y0, xoff[ix] : xoff[ix + 1]]
            if self.convert is not None:
                self.convert[ib].into(part, dst)
            else:
                dst[...] = part
        return out

    def window_stored(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """(band, y1-y0, x1-x0) as stored (e.g. uint16), uninitialised beyond the array: for a model
        that converts values itself (:attr:`stored` says how)."""
        n = self.shape[0]
        out = np.empty((n, y1 - y0, x1 - x0), dtype=self.dtype)
        self._fill(out, y0, y1, x0, x1, convert=False)
        return out

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    def _fill(self, out: np.ndarray, y0: int, y1: int, x0: int, x1: int, convert: bool) -> None:
        """Copy (``convert``: to physical values) the chunks' part of window y0:y1, x0:x1 into ``out``."""
        n, h, w = self.shape
        ya, yb, xa, xb = max(0, y0), min(h, y1), max(0, x0), min(w, x1)
        boff, yoff, xoff = self.offsets
        now = self._order.get((y0, y1, x0, x1))
        # Column by column, so the right-hand chunks (the next window's left-hand ones) are freshest.
        for key, iy, ix in self._keys(y0, y1, x0, x1):
            ib = key[1]
            chunk = self._chunk(key, now)
            cy0, cx0 = yoff[iy], xoff[ix]
            sy0, sy1 = max(ya, cy0), min(yb, yoff[iy + 1])
            sx0, sx1 = max(xa, cx0), min(xb, xoff[ix + 1])
            part = chunk[:, sy0 - cy0 : sy1 - cy0, sx0 - cx0 : sx1 - cx0]
            dst = out[boff[ib] : boff[ib + 1], sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0]
            if convert:
                self.convert[ib].into(part, dst)  # straight into the window, no temporaries
            else:
                dst[...] = part


def _band_yx(data: xr.DataArray | da.Array | np.ndarray, descriptors: np.ndarray) -> da.Array:
    """``data`` as a (band, y, x) Dask array whose bands are the descriptors' rows.

    A DataArray with a ``band`` dimension is put in that order whatever its dimension order (e.g.
    (y, x, band)); anything else must already be (band, y, x). Checked here, not when computed,
    where a mismatch showed as an error about descriptor shapes."""
    if isinstance(data, xr.DataArray):
        if data.ndim != 3:
            raise BandError(f"expected a 3-D (band, y, x) scene, got dimensions {data.dims}")
        if "band" in data.dims and data.dims[0] != "band":
            data = data.transpose("band", ...)
        arr = data.data
    else:
        arr = data
    if not isinstance(arr, da.Array):
        arr = da.from_array(np.asarray(arr))
    if arr.ndim != 3:
        raise BandError(f"expected a 3-D (band, y, x) scene, got shape {arr.shape}")
    n = np.shape(descriptors)[0] if np.ndim(descriptors) == 2 else None
    if n is not None and arr.shape[0] != n:
        raise BandError(f"{n} band descriptors for a scene of {arr.shape[0]} bands along its first axis "
                        f"(shape {arr.shape}; expected (band, y, x))")
    return arr


def weighted_graph(
    data: xr.DataArray | da.Array | np.ndarray,
    descriptors: np.ndarray,
    predictor: ProbaPredictor,
    options: TileOptions | None = None,
    raw: Any = None,
) -> WeightedGraph:
    """Pass 1 of the tiler (``map_overlap``-style halo exchange, NaN outside the scene).

    ``raw`` (:class:`cloudmask.scene.RawBands`, e.g. ``scene.raw``): the stored values behind
    ``data``; the streaming reader then caches those instead of float32 (same results).
    """
    options = options or TileOptions()
    arr = _band_yx(data, descriptors).astype("float32")
    plan = plan_tiles(options, int(getattr(predictor, "halo", 0)))
    d = plan.depth
    _, h, w = arr.shape
    ychunks, xchunks = _chunks_1d(h, plan.block_y, d), _chunks_1d(w, plan.block_x, d)
    descriptors = np.asarray(descriptors, dtype="float32")
    if raw is not None and (raw.data.shape != arr.shape or raw.data.chunks != arr.chunks):
        raw = None  # not the values behind ``data`` as given (e.g. a re-chunked or cut array)
    return WeightedGraph(plan, ychunks, xchunks, (h, w), arr, (predictor, descriptors, plan, options.batch_size), raw)


def _weighted_array(g: WeightedGraph) -> da.Array:
    """The whole of pass 1 as one Dask array (see :attr:`WeightedGraph.weighted`)."""
    d = g.plan.depth
    arr = g.source.rechunk({0: -1, 1: g.ychunks, 2: g.xchunks})
    if d == 0:
        return arr.map_blocks(_predict_block, *g.args, chunks=((_CHANNELS,), g.ychunks, g.xchunks), dtype="float32")
    padded = da.pad(arr, ((0, 0), (d, d), (d, d)), mode="constant", constant_values=np.nan)
    padded = padded.rechunk({0: -1, 1: _with_margins(g.ychunks, d), 2: _with_margins(g.xchunks, d)})
    # Each block of ``padded`` is one core block plus its outer scene margin; the overlap adds the
    # inner margins from neighbours, so every block arrives as core + d on all sides.
    return _map_extended(padded, g.ychunks, g.xchunks, d, _predict_ext_block, *g.args, len(g.ychunks), len(g.xchunks))


def predict_proba(
    data: xr.DataArray | da.Array,
    descriptors: np.ndarray,
    predictor: ProbaPredictor,
    options: TileOptions | None = None,
) -> da.Array:
    """Lazy (4, y, x) float32 class probabilities of a (band, y, x) scene, blended across tiles."""
    g = weighted_graph(data, descriptors, predictor, options)
    d = g.plan.depth
    if d == 0:
        return g.weighted.map_blocks(_fold_block, 0, chunks=((N_CLASSES,), g.ychunks, g.xchunks), dtype="float32")
    return _fold_graph(g.weighted, g.ychunks, g.xchunks, d)


def _map_extended(padded: da.Array, ychunks, xchunks, d, func, *args) -> da.Array:
    """Apply ``func`` to each core block extended by ``d`` on every side (outer margins are NaN)."""
    ext = da.overlap.overlap(padded, depth={0: 0, 1: d, 2: d}, boundary="none")
    # ``ext`` blocks: the first/last along an axis got no overlap on their outer side, but they carry
    # the NaN pad instead, so every block is exactly core + 2d.
    return ext.map_blocks(
        func, *args,
        chunks=((_CHANNELS,), tuple(c + 2 * d for c in ychunks), tuple(c + 2 * d for c in xchunks)),
        dtype="float32",
    )


def _fold_graph(weighted: da.Array, ychunks, xchunks, d) -> da.Array:
    """Pass 2 on extended blocks: gather neighbours' margins (zeros outside) and overlap-add."""
    ext = da.overlap.overlap(weighted, depth={0: 0, 1: d, 2: d}, boundary=0.0)
    return ext.map_blocks(_fold_block, d, chunks=((N_CLASSES,), ychunks, xchunks), dtype="float32")


def classify(
    proba: np.ndarray, valid: np.ndarray, threshold: float | None = None
) -> np.ndarray:
    """(4, h, w) probabilities → uint8 classes, 255 where ``valid`` is False.

    Without a threshold each pixel takes the most probable class. With one, a pixel is cloud when
    P(thick) + P(thin) ≥ threshold (thick or thin by whichever is likelier), otherwise clear or
    shadow by the likelier of the two — a single knob that trades cloud recall for precision.
    """
    if threshold is None:
        cls = _argmax_classes(proba)
    else:
        cloud = proba[1] + proba[2] >= threshold
        cls = np.where(proba[3] > proba[0], np.uint8(3), np.uint8(0))
        cls = np.where(cloud, np.where(proba[1] >= proba[2], np.uint8(1), np.uint8(2)), cls).astype("uint8")
    np.maximum(cls, np.logical_not(valid).view(np.uint8) * np.uint8(NODATA), out=cls)  # 255 beats any class
    return cls


def _argmax_classes(proba: np.ndarray) -> np.ndarray:
    """``np.argmax(proba, axis=0)`` as uint8 (first class on ties).

    For the usual 4 planes, a knockout: the winner of (0, 1) against the winner of (2, 3), put
    together in uint8 arithmetic, which numpy vectorises (masked stores such as ``cls[m] = k`` are
    element by element, and an argmax over the outer axis walks the planes with a stride): ~3.5x
    faster, and classes are made for every pixel of the scene in the main thread."""
    if proba.shape[0] != 4:
        cls = np.zeros(proba.shape[1:], dtype="uint8")
        best = proba[0].copy()
        for k in range(1, proba.shape[0]):
            np.copyto(cls, np.uint8(k), where=proba[k] > best)
            np.maximum(best, proba[k], out=best)
        return cls
    a = np.greater(proba[1], proba[0]).view(np.uint8)
    b = np.greater(proba[3], proba[2]).view(np.uint8)
    c = np.greater(np.maximum(proba[2], proba[3]), np.maximum(proba[0], proba[1])).view(np.uint8)
    cls = np.add(b, np.uint8(2))  # a + c·(2 + b − a): never below zero, as a ≤ 1
    cls -= a
    cls *= c
    cls += a
    return cls


#: Dilation priority: a grown class only overwrites classes ranked below it.
_RANK = np.array([0, 3, 2, 1], dtype="uint8")  # clear < shadow < thin < thick


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return (yy * yy + xx * xx) <= radius * radius


def dilate_classes(cls: np.ndarray, radius: int) -> np.ndarray:
    """Buffer clouds and shadows by ``radius`` px (disk). Thick > thin > shadow > clear; nodata stays."""
    from scipy import ndimage

    if radius <= 0:
        return cls
    out = cls.copy()
    fp = _disk(radius)
    valid = cls != NODATA
    for c in (3, 2, 1):  # lowest priority first, so higher classes win where buffers meet
        grown = ndimage.binary_dilation(cls == c, structure=fp)
        rank_now = np.where(valid, _RANK[np.where(valid, out, 0)], 255)
        out[grown & valid & (rank_now < _RANK[c])] = c
    return out


def to_binary(cls: np.ndarray) -> np.ndarray:
    """Cloud (thick or thin) → 1, everything else → 0, nodata kept."""
    out = ((cls == 1) | (cls == 2)).astype("uint8")
    out[cls == NODATA] = NODATA
    return out


def mask_graph(
    data: xr.DataArray | da.Array,
    descriptors: np.ndarray,
    predictor: ProbaPredictor,
    options: TileOptions | None = None,
    threshold: float | None = None,
    dilate: int = 0,
    binary: bool = False,
) -> tuple[da.Array, da.Array]:
    """Lazy (y, x) uint8 mask and (4, y, x) float32 probabilities for a scene."""
    arr = _band_yx(data, descriptors)
    proba = predict_proba(arr, descriptors, predictor, options)
    valid = da.isfinite(arr.astype("float32")).all(axis=0).rechunk(proba.chunks[1:])
    cls = da.map_blocks(
        lambda p, v: classify(p, v, threshold), proba, valid, drop_axis=0, dtype="uint8", chunks=proba.chunks[1:]
    )
    if dilate > 0:
        cls = cls.map_overlap(dilate_classes, depth=dilate, boundary=NODATA, radius=dilate, dtype="uint8")
    if binary:
        cls = cls.map_blocks(to_binary, dtype="uint8")
    return cls, proba


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def limit_memory_growth(gdal_cache_mb: int = 64) -> None:
    """Process-wide settings that keep peak RSS flat during long runs (CLI and benchmarks call it).

    GDAL's block cache defaults to 5 % of RAM and fills with decoded input tiles we never reread;
    glibc gives each thread its own heap arena and a dynamic mmap threshold, so freed window-sized
    arrays (tens of MB) stay mapped per thread and RSS ratchets up. Measured on a 4096² scene with
    two threads: 1.53 GB peak by default, 1.29 GB with one arena, at the same speed. With one heap,
    window-sized arrays (~60 MB) are best reused from it: a 32 MB mmap threshold mapped and zeroed
    each one afresh, ~12 % slower end to end at the same peak; 128 MB keeps them in the heap.
    """
    try:
        from rasterio.env import get_gdal_config, set_gdal_config

        current = get_gdal_config("GDAL_CACHEMAX")
        if not current or int(current) > gdal_cache_mb * 2**20:
            set_gdal_config("GDAL_CACHEMAX", gdal_cache_mb * 2**20)  # decoded tiles are rarely reread
    except Exception:  # noqa: BLE001 - tuning only
        pass
    try:
        import ctypes
        import sys

        if sys.platform.startswith("linux"):
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(-8, 1)  # M_ARENA_MAX: one heap; per-thread arenas kept ~300 MB of freed windows
            mb = int(os.environ.get("CLOUDMASK_MMAP_THRESHOLD_MB", "128"))
            if mb > 0:
                libc.mallopt(-3, mb * 2**20)  # M_MMAP_THRESHOLD: only larger arrays are mapped per use
                libc.mallopt(-1, mb * 2**20)  # M_TRIM_THRESHOLD
    except Exception:  # noqa: BLE001 - not glibc: nothing to tune
        pass


#: torch intra-op threads per worker thread (set by :func:`configure_torch_threads`).
_TORCH_THREADS = 1


def configure_torch_threads(dask_threads: int) -> None:
    """Split cores between worker threads and torch's intra-op pool instead of oversubscribing.

    Applied per thread in :func:`_use_torch_threads`: OpenMP's thread count is a per-thread setting,
    so setting it once in the main thread leaves every worker thread at "all cores", and on a busy
    machine the spinning OpenMP teams made inference ~10x slower in CPU time.
    """
    global _TORCH_THREADS
    _TORCH_THREADS = 1 if dask_threads > 1 else max(1, min(default_threads(), int(os.environ.get("CLOUDMASK_TORCH_THREADS", "1"))))
    _use_torch_threads()


def _use_torch_threads() -> None:
    try:
        import torch

        if torch.get_num_threads() != _TORCH_THREADS:
            torch.set_num_threads(_TORCH_THREADS)
    except Exception:  # noqa: BLE001 - torch missing: the predictor is something else
        pass


def proba_to_uint8(proba: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(4, h, w) probabilities → uint8 percent (0–100), 255 where nodata."""
    out = np.clip(np.rint(proba * 100.0), 0, 100).astype("uint8")
    out[:, ~valid] = NODATA
    return out


# --------------------------------------------------------------------------- streaming execution


class LocalRunner:
    """Computes pass-1 blocks on local threads, at most ``threads`` at a time.

    Why not one ``dask.compute`` of the whole graph: the threaded scheduler happily reads and
    predicts far ahead of what has been written, so peak memory grows with the scene. Feeding blocks
    in raster order with a bounded number in flight keeps memory flat from 1 to 67+ Mpx.
    """

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads or default_threads()

    @property
    def slots(self) -> int:
        return self.threads

    def run(self, blocks: Iterable[tuple[Any, Any]], may_submit: Callable[[], bool] | None = None):
        """Yield (key, result) as blocks finish. ``may_submit`` lets the consumer hold back new work
        (it is ignored when nothing is running, so the run always progresses)."""
        from concurrent.futures import FIRST_COMPLETED, wait

        configure_torch_threads(self.threads)
        todo = iter(blocks)
        with ThreadPoolExecutor(max_workers=self.threads) as pool:
            running: dict[Any, Any] = {}

            def fill() -> None:
                while len(running) < self.threads and (not running or may_submit is None or may_submit()):
                    try:
                        key, arr = next(todo)
                    except StopIteration:
                        return
                    job = arr if callable(arr) and not isinstance(arr, da.Array) else functools.partial(arr.compute, scheduler="sync")
                    running[pool.submit(job)] = key

            fill()
            while running:
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                finished = [(running.pop(fut), fut) for fut in done]
                fill()  # first: the workers keep busy while the consumer blends what finished
                for key, fut in finished:
                    yield key, fut.result()
                fill()


@dataclass(frozen=True)
class _ClusterTask:
    """One pass-1 block as ONE cluster task (a block reader, or :func:`_run_graph` on the block's
    small read-and-predict graph), so that a read error is handled where it happens:

    - GDAL's reason (which file, which block) is the ``__cause__`` of rasterio's "Read failed. See
      previous exception" and cannot travel back (rasterio's CPLE errors do not unpickle); it is
      raised again as the message of a plain :class:`RasterioIOError`;
    - ``retries``: a band read over HTTP is read again after this worker has dropped what GDAL
      cached of it (a response cut short stays there as if whole). A block reader retries in its
      ChunkReader instead (0 here)."""

    run: Callable[[], Any]
    retries: int = 0

    def __call__(self) -> Any:
        for attempt in range(self.retries + 1):
            if attempt:
                from cloudmask.scene import forget_remote_data

                forget_remote_data()
                time.sleep(0.5 * 2 ** (attempt - 1))
            try:
                return self.run()
            except RasterioIOError as exc:
                reason = first_line(exc)
        raise RasterioIOError(reason)  # outside the handler: no GDAL error chained to it


def _run_graph(dsk: dict[Any, Any], key: Any) -> np.ndarray:
    from dask.local import get_sync

    return np.asarray(get_sync(dsk, key))


class DistributedRunner:
    """Computes pass-1 blocks on a dask.distributed cluster, a bounded number in flight."""

    def __init__(self, client: Any, retries: int = 0) -> None:
        """``retries``: times a block whose read failed is computed again (a band read over HTTP;
        see :data:`REMOTE_RETRIES`)."""
        self.client = client
        self.retries = retries

    @property
    def slots(self) -> int:
        return max(2, 2 * sum(self.client.nthreads().values()))

    def run(self, blocks: Iterable[tuple[Any, Any]], may_submit: Callable[[], bool] | None = None):
        from dask.core import flatten
        from distributed import as_completed

        slots = self.slots
        todo = iter(blocks)
        inflight: dict[str, tuple[Any, Any]] = {}  # future key → (block key, future)
        # results are gathered here, one finished block at a time: with as_completed's own gathering
        # (with_results) the blocks of a failed scene were still being gathered when its client
        # closed, and tornado printed a traceback of each over the one-line error
        queue = as_completed([], loop=self.client.loop)

        def top_up() -> None:
            while len(inflight) < slots and (not inflight or may_submit is None or may_submit()):
                try:
                    key, arr = next(todo)
                except StopIteration:
                    return
                if hasattr(arr, "__dask_graph__"):
                    (out,) = flatten(arr.__dask_keys__())
                    task = _ClusterTask(functools.partial(_run_graph, dict(arr.__dask_graph__()), out), self.retries)
                else:  # a block reader (WeightedGraph.cluster_block): retries in its ChunkReader
                    task = _ClusterTask(arr)
                fut = self.client.submit(task, pure=False)
                inflight[fut.key] = (key, fut)
                queue.add(fut)

        top_up()
        try:
            for fut in queue:
                key, _ = inflight.pop(fut.key)
                value = fut.result()  # a failed or cancelled block raises its error here
                fut.release()
                yield key, value
                top_up()
        except CloudmaskError:
            raise
        except Exception as exc:  # noqa: BLE001 - sorted below, into what the caller can say in one line
            failure = self._failure(exc)
            if failure is exc:
                raise  # as it came: rasterio's "See previous exception" needs its cause (first_line)
            raise failure from None
        finally:
            if inflight:  # the scene failed or stopped: its other blocks are dropped, not gathered
                self._drop(queue, [fut for _, fut in inflight.values()])

    def _drop(self, queue: Any, futures: list[Any]) -> None:
        """Cancel a failed scene's blocks still in flight. Why: left running, their results were
        gathered for a client being closed, and tornado printed a traceback over the one-line error."""
        try:
            queue.clear()
            if getattr(self.client, "status", "running") == "running":
                self.client.cancel(futures)
        except Exception:  # noqa: BLE001 - cleanup after a failure: the failure is what to report
            pass

    def _failure(self, exc: Exception) -> Exception:
        """What a block's failure on the cluster means for the scene (or the run)."""
        if getattr(self.client, "status", "running") != "running":
            # the scheduler is gone (the client reconnects, then gives up and cancels every block):
            # "cancelled" or "ConnectionPool closing" would hide that, and every later scene fails too
            address = getattr(getattr(self.client, "scheduler", None), "address", None) or "its address"
            return SchedulerLostError(f"lost the Dask scheduler at {address}")
        from distributed import KilledWorker

        if isinstance(exc, KilledWorker):
            return ClusterError("cluster workers died again and again running one of its blocks (out of memory? "
                                "see the workers' logs)")
        if isinstance(exc, (RasterioError, OSError, RuntimeError, ValueError)):
            return exc
        text = str(exc) or type(exc).__name__
        if "Rasterio" in text or "CPLE_" in text:  # e.g. Exception("RasterioIOError('Read failed…')"): it could not travel as itself
            return RasterioIOError(f"on a cluster worker: {text.splitlines()[0][:300]}")
        return RuntimeError(f"on a cluster worker: {text.splitlines()[0][:300]}")


class _RowDilator:
    """Applies :func:`dilate_classes` to rows arriving top to bottom, emitting rows once the
    ``radius`` rows below them are known (scene edges count as nodata)."""

    def __init__(self, radius: int, height: int) -> None:
        self.r, self.h = radius, height
        self.buf: np.ndarray | None = None
        self.buf0 = 0
        self.ctx: np.ndarray | None = None

    def push(self, y0: int, rows: np.ndarray) -> list[tuple[int, np.ndarray]]:
        if self.r <= 0:
            return [(y0, rows)]
        self.buf = rows if self.buf is None else np.concatenate([self.buf, rows])
        end = y0 + rows.shape[0]
        ready = end if end >= self.h else end - self.r
        if ready <= self.buf0:
            return []
        ctx = self.ctx if self.ctx is not None else self.buf[:0]
        stack = np.concatenate([ctx, self.buf])
        out = dilate_classes(stack, self.r)[len(ctx) : len(ctx) + ready - self.buf0]
        done = np.concatenate([ctx, self.buf[: ready - self.buf0]])
        self.ctx = done[-self.r :].copy()
        self.buf = self.buf[ready - self.buf0 :].copy()
        emitted = [(self.buf0, out)]
        self.buf0 = ready
        return emitted


class _BandRows:
    """One band's rows in increasing order, read a strip of whole chunk rows at a time: rows are
    asked for in slices shorter than a chunk, and a chunk read per slice would decode it again."""

    def __init__(self, reader: ChunkReader, band: int) -> None:
        self.reader, self.band = reader, band
        self.edges = reader.offsets[1]
        self.y0, self.rows = 0, np.empty((0, reader.shape[2]), "float32")

    def __call__(self, y0: int, y1: int) -> np.ndarray:
        if not (self.y0 <= y0 and y1 <= self.y0 + self.rows.shape[0]):
            a = int(self.edges[np.searchsorted(self.edges, y0, "right") - 1])
            b = int(self.edges[np.searchsorted(self.edges, y1, "left")])
            self.y0, self.rows = a, self.reader.band_rows(self.band, a, b)
        return self.rows[y0 - self.y0 : y1 - self.y0]


class _CoreRows:
    """One band's rows assembled from the block cores that carry them (:meth:`WeightedGraph.block_reader`
    with a band), kept per block row until asked for; rows are asked for in increasing order."""

    def __init__(self, graph: WeightedGraph, band: int) -> None:
        self.graph, self.band, self.w = graph, band, graph.shape[1]
        self.cy = np.concatenate([[0], np.cumsum(graph.ychunks)]).astype(int)  # scene row of core row i
        self.cx = np.concatenate([[0], np.cumsum(graph.xchunks)]).astype(int)
        self.rows: dict[int, np.ndarray] = {}  # block row → (its rows, w) float32

    def keep(self, i: int, j: int, values: np.ndarray, is_stored: bool) -> None:
        rows = self.rows.get(i)
        if rows is None:
            rows = self.rows[i] = np.empty((self.graph.ychunks[i], self.w), "float32")
        rows[:, self.cx[j] : self.cx[j + 1]] = self.graph.core_to_physical(self.band, values, is_stored)

    def __call__(self, y0: int, y1: int) -> np.ndarray:
        """Rows y0:y1; block rows wholly above y0 are dropped (never asked for again)."""
        cy = self.cy
        for i in [k for k in self.rows if cy[k + 1] <= y0]:
            del self.rows[i]
        out = np.empty((y1 - y0, self.w), "float32")
        for i, rows in self.rows.items():
            a, b = max(y0, cy[i]), min(y1, cy[i + 1])
            if a < b:
                out[a - y0 : b - y0] = rows[a - cy[i] : b - cy[i]]
        return out


def stream_mask(
    graph: WeightedGraph,
    runner: LocalRunner | DistributedRunner,
    write_mask: Any,
    write_proba: Any = None,
    *,
    threshold: float | None = None,
    dilate: int = 0,
    binary: bool = False,
    on_block: Any = None,
    shadows: ShadowOptions | None = None,
    scratch: Any = None,
    nir_band: int | None = None,
) -> ShadowMatcher | None:
    """Run pass 1 block by block and overlap-add into a rolling buffer a few block rows tall.

    Rows are finished (normalised, classified, dilated, written with ``write_mask(y0, rows)``) as
    soon as no pending window can reach them, so memory depends on the scene *width* only. Gives
    exactly the blended result of :func:`predict_proba`.

    With ``shadows`` (and not ``binary``) the classes go to ``scratch`` first (``scratch[y0:y1, :] =
    rows``, ``scratch.read(y0, y1)``) while a :class:`~cloudmask.shadows.ShadowMatcher` learns the
    scene's cloud–shadow displacement; a second, cheap pass over the uint8 rows resolves shadow
    candidates, then dilates and writes them. Returns that matcher (what it learnt), else None.
    ``nir_band``: the band its darkness test reads (:func:`cloudmask.shadows.nir_band`), if on.
    """
    h, w = graph.shape
    d = graph.plan.depth
    ny, nx = len(graph.ychunks), len(graph.xchunks)
    yoff = np.concatenate([[0], np.cumsum(graph.ychunks)]).astype(int)  # padded row where ext block i starts
    xoff = np.concatenate([[0], np.cumsum(graph.xchunks)]).astype(int)
    local = isinstance(runner, LocalRunner)
    ctx, feather = graph.plan.context, graph.plan.feather

    if local:  # every window is read once, in this order: let the reader keep shared chunks
        graph.reader.expect([graph._window(i, j) for i in range(ny) for j in range(nx)], READER_CACHE_MB)

    def jobs():
        for i in range(ny):
            for j in range(nx):
                yield (i, j), (graph.block_reader(i, j, nir_band if dark else None) if local else graph.cluster_block(i, j))

    # One preallocated buffer, tall enough for a block row plus both margins: rows are shifted up in
    # place as they are finished, never reallocated (a growing concatenate briefly doubles it).
    acc = np.zeros((_CHANNELS, max(graph.ychunks) + 2 * d, w + 2 * d), dtype="float32")
    base = 0  # padded row of acc[:, 0]
    left = [nx] * ny  # blocks still missing per block row
    next_row = 0  # first block row not yet finalised
    fin = d  # first padded row not yet written (rows above d are the outer pad)
    dil = _RowDilator(dilate, h)
    total = ny * nx
    matcher = ShadowMatcher(h, w, shadows) if shadows is not None and not binary else None
    if matcher is not None and scratch is None:
        raise ValueError("shadow matching needs a scratch raster for the second pass")
    dark = matcher is not None and matcher.dark and nir_band is not None
    # the darkness test's NIR rows: locally each block brings its core's NIR along; on a cluster
    # the band is read again (GDAL decodes it once more)
    cores = _CoreRows(graph, nir_band) if dark and local else None
    nir_rows = cores if cores is not None else (_BandRows(graph.reader, nir_band) if dark else None)

    def finish(y0: int, cls: np.ndarray) -> None:
        for yy, rows in dil.push(y0, cls):
            write_mask(yy, to_binary(rows) if binary else rows)

    def emit(p0: int, p1: int) -> None:
        for q0 in range(p0, p1, EMIT_ROWS):  # in slices: per-row temporaries stay small on wide scenes
            emit_rows(q0, min(q0 + EMIT_ROWS, p1))

    def emit_rows(p0: int, p1: int) -> None:
        sub = acc[:, p0 - base : p1 - base, d : d + w]
        proba = _normalise(sub)
        valid = _valid(sub)
        y0 = p0 - d
        if write_proba is not None:
            write_proba(y0, proba_to_uint8(proba, valid))
        cls = classify(proba, valid, threshold)
        if matcher is None:
            finish(y0, cls)
        else:
            nir = nir_rows(y0, y0 + cls.shape[0]) if nir_rows is not None else None
            scratch[y0 : y0 + cls.shape[0], 0:w] = matcher.observe(y0, proba, cls, nir)

    def fits(i: int) -> bool:
        return int(yoff[i]) + graph.ychunks[i] + 2 * d <= base + acc.shape[1]

    def accept(i: int, j: int, block: np.ndarray) -> None:
        """Overlap-add one extended block, then finish every block row that is now complete."""
        nonlocal next_row, fin, base
        top = int(yoff[i])
        x0 = int(xoff[j])
        # a block's outer ``context`` px carry no weight (exact zeros): add only what is inside them
        bh, bw = block.shape[1:]
        cy, cx = min(ctx, bh // 2), min(ctx, bw // 2)
        o = top - base
        # Only this block weights its core less the feather zones (neighbours reach ``feather`` px
        # into it), so that part is copied into the zeros there, the frame around it added: one
        # stream fewer over ~90 % of the block (the same sums: 0 + x is x).
        a0, a1, b0, b1 = d + feather, bh - d - feather, d + feather, bw - d - feather
        if cy <= a0 < a1 <= bh - cy and cx <= b0 < b1 <= bw - cx:
            for (r0, r1), (c0, c1) in (((cy, a0), (cx, bw - cx)), ((a1, bh - cy), (cx, bw - cx)),
                                       ((a0, a1), (cx, b0)), ((a0, a1), (b1, bw - cx))):
                acc[:, o + r0 : o + r1, x0 + c0 : x0 + c1] += block[:, r0:r1, c0:c1]
            acc[:, o + a0 : o + a1, x0 + b0 : x0 + b1] = block[:, a0:a1, b0:b1]
        else:
            acc[:, o + cy : o + bh - cy, x0 + cx : x0 + bw - cx] += block[:, cy : bh - cy, cx : bw - cx]
        left[i] -= 1
        while next_row < ny and left[next_row] == 0:
            next_row += 1
            limit = int(yoff[next_row]) if next_row < ny else h + 2 * d  # next pending window's top
            limit = min(limit, h + d)
            if limit > fin:
                emit(fin, limit)
                fin = limit
            if fin > base:  # (also when nothing was emitted: a first block row just ``d`` tall
                # leaves only the outer pad above ``fin``, which must go for the next row to fit)
                drop = fin - base
                keep = max(0, acc.shape[1] - drop)
                for r0 in range(0, keep, drop):  # pieces that don't overlap: no temporary copy
                    acc[:, r0 : min(r0 + drop, keep)] = acc[:, r0 + drop : min(r0 + 2 * drop, keep + drop)]
                acc[:, keep:] = 0.0
                base = fin

    # Blocks are submitted in raster order without waiting for a block row to drain (no idle
    # thread at row ends). A block of the next row that finishes before its rows are in the buffer
    # waits in ``early``; while ``early`` is full no new work starts, so memory stays bounded.
    early: list[tuple[int, int, np.ndarray]] = []
    max_early = max(1, int(getattr(runner, "slots", 1)))
    done_blocks = 0
    for (i, j), block in runner.run(jobs(), may_submit=lambda: len(early) < max_early):
        if isinstance(block, tuple):  # (weighted block, the NIR of its core, whether stored values)
            cores.keep(i, j, block[1], block[2])
            block = block[0]
        done_blocks += 1
        if on_block:
            on_block(done_blocks, total)
        if not fits(i):
            early.append((i, j, block))
            continue
        accept(i, j, block)
        del block
        while True:  # finished rows free buffer space: place what was waiting, in row order
            ready = [e for e in early if fits(e[0])]
            if not ready:
                break
            for e in ready:
                early.remove(e)
                accept(*e)
    if early:  # cannot happen: every row completes once its blocks have arrived
        raise RuntimeError(f"{len(early)} tiled blocks were never placed")
    if matcher is not None:
        matcher.resolve()

        def load(y0: int) -> np.ndarray:
            return matcher.apply(y0, scratch.read(y0, min(y0 + PASS2_ROWS, h)))

        # The model's workers are done: one thread reads and resolves the next rows while this one
        # writes (two datasets, so no handle is shared), instead of one core doing both in turn.
        starts = list(range(0, h, PASS2_ROWS))
        with ThreadPoolExecutor(1) as ahead:
            coming = ahead.submit(load, 0) if starts else None
            for k, y0 in enumerate(starts):
                rows = coming.result()  # type: ignore[union-attr]
                if k + 1 < len(starts):
                    coming = ahead.submit(load, starts[k + 1])
                finish(y0, rows)
    return matcher


__all__: list[Any] = [
    "CLASSES", "NODATA", "N_CLASSES", "TileOptions", "TilePlan", "plan_tiles", "feather_weights",
    "predict_proba", "weighted_graph", "WeightedGraph", "stream_mask", "LocalRunner", "DistributedRunner", "classify", "dilate_classes", "to_binary", "mask_graph", "proba_to_uint8",
]
