"""Tiled inference: feathered overlap-add reproduces whole-scene inference; class post-processing."""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pytest
import rasterio
import rasterio.errors

from cloudmask.errors import UsageError
from cloudmask.model import Predictor
from cloudmask.registry import load_registry
from cloudmask.testing import random_reflectance
from cloudmask.tiles import (
    NODATA,
    TileOptions,
    classify,
    dilate_classes,
    even_split,
    feather_weights,
    mask_graph,
    plan_tiles,
    predict_proba,
    to_binary,
)


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.random(seed=0, dilations=(1,))  # halo 32: small windows keep the test fast


@pytest.fixture(scope="module")
def s2_desc() -> np.ndarray:
    s = load_registry().get_sensor("sentinel2")
    return s.descriptors(list(s.bands))


def test_feather_weights_of_neighbouring_windows_sum_to_one():
    tile, context, feather = 64, 32, 16
    w = feather_weights(tile, context, feather)
    depth = context + feather
    assert w.shape == (tile + 2 * depth,)
    assert (w[:context] == 0).all() and (w[-context:] == 0).all()
    total = np.zeros(4 * tile + 2 * depth)
    for k in range(4):
        total[k * tile : k * tile + w.size] += w
    inner = total[depth + feather : depth + 4 * tile - feather]
    np.testing.assert_allclose(inner, 1.0, atol=1e-6)


@pytest.mark.parametrize("tile, batch, shape, extra", [(64, 2, (232, 296), None), (96, 1, (232, 296), None),
                                                      (64, 1, (229, 301), None), (40, 1, (229, 301), 64)])
def test_tiled_equals_whole_scene_edges_included(predictor, s2_desc, tile, batch, shape, extra):
    """Windows on the scene's edge are cut flush with it, so even edge pixels (and scene sizes off
    the 8 px grid) get exactly the whole-scene result. ``extra``: an overlap that much beyond the
    halo, more feather than half a 40 px tile allows (the cap must stay on the 8 px grid)."""
    x = random_reflectance(13, *shape, seed=3)
    x[:, 100:140, 150:170] = np.nan  # a nodata hole crossing tile borders
    whole = predictor.predict_proba(x, s2_desc)
    overlap = None if extra is None else predictor.halo + extra
    opts = TileOptions(tile_size=tile, batch_size=batch, overlap=overlap)
    assert plan_tiles(opts, predictor.halo).depth % 8 == 0
    proba = predict_proba(da.from_array(x, chunks=(13, 50, 70)), s2_desc, predictor, opts)
    assert proba.shape == (4, *shape) and len(proba.chunks[1]) > 1  # really tiled
    tiled = proba.compute(scheduler="threads")
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    np.testing.assert_allclose(tiled.sum(0), 1.0, atol=1e-5)


def test_small_overlap_still_blends_without_gaps(predictor, s2_desc):
    x = random_reflectance(13, 100, 130, seed=4)
    tiled = predict_proba(x, s2_desc, predictor, TileOptions(tile_size=32, overlap=8)).compute()
    assert np.isfinite(tiled).all()
    np.testing.assert_allclose(tiled.sum(0), 1.0, atol=1e-5)


def test_plan_rounds_to_the_pooling_grid_and_rejects_bad_options():
    plan = plan_tiles(TileOptions(tile_size=100, overlap=50, batch_size=2), halo=32)
    assert plan.tile % 8 == 0 and plan.depth % 8 == 0 and plan.context == 32
    assert plan.block_y >= plan.depth and plan.block_x == 2 * plan.tile
    with pytest.raises(UsageError, match="tile-size"):
        plan_tiles(TileOptions(tile_size=4), halo=32)
    with pytest.raises(UsageError, match="batch-size"):
        plan_tiles(TileOptions(batch_size=0), halo=32)


def test_all_nodata_scene_gives_nodata_mask_without_calling_the_model(s2_desc):
    class Exploding:
        halo = 16

        def predict_proba_batch(self, x, d):  # pragma: no cover - must not run
            raise AssertionError("model called on an empty window")

    x = np.full((13, 64, 80), np.nan, dtype="float32")
    cls, _ = mask_graph(x, s2_desc, Exploding(), TileOptions(tile_size=32))
    assert (cls.compute() == NODATA).all()


def test_a_model_leaving_nan_at_nodata_does_not_poison_the_blend(s2_desc):
    from cloudmask.tiles import _predict_block

    class NaNAtNodata:
        halo = 8

        def predict_proba_batch(self, x, d):
            p = np.zeros((x.shape[0], 4, *x.shape[2:]), dtype="float32")
            p[:, 1] = 1.0
            p[:, :, ~np.isfinite(x).all(axis=1)[0]] = np.nan
            return p

    x = random_reflectance(13, 96, 96, seed=2)
    x[:, 40:50, 30:70] = np.nan
    plan = plan_tiles(TileOptions(tile_size=32), 8)
    acc = _predict_block(x, NaNAtNodata(), s2_desc, plan, 1)
    assert np.isfinite(acc).all()
    cls, _ = mask_graph(x, s2_desc, NaNAtNodata(), TileOptions(tile_size=32))
    cls = cls.compute()
    assert (cls[40:50, 30:70] == NODATA).all() and (cls[:40] == 1).all()


@pytest.mark.parametrize("edges", [(False, False, False, False), (True, False, True, False), (False, True, False, True)])
def test_a_one_window_block_holds_the_window_weighted(s2_desc, edges):
    """A block holding one window (the default): the model's output times the feather weights, the
    weight signed by validity, zeros in the unweighted margins and outside the scene, and an
    all-nodata block (a 116 × 136 window with 16 px of context and 8 of feather)."""
    from cloudmask.tiles import _predict_block, feather_weights

    class Pixelwise:  # each pixel's output from its own values: the same in any window
        halo = 16

        def predict_proba_batch(self, x, d, region=None):
            b, _, h, w = x.shape
            p = np.empty((b, 4, h, w), dtype="float32")
            p[:, 0] = 0.5 * x[:, 0]
            p[:, 1] = 0.5 * x[:, 1]
            p[:, 2] = 0.05
            p[:, 3] = 1.0 - p[:, :3].sum(1)
            y0, y1, x0, x1 = region if region is not None else (0, h, 0, w)
            return p[:, :, y0:y1, x0:x1]

    plan = plan_tiles(TileOptions(tile_size=100, overlap=24), 16)
    assert (plan.context, plan.feather) == (16, 8)
    d = plan.depth
    x = random_reflectance(13, 68 + 2 * d, 88 + 2 * d, seed=5)  # core 68 × 88: one window
    x[:, 30:34, 40:44] = np.nan
    acc = _predict_block(x, Pixelwise(), s2_desc, plan, 1, edges)
    eh, ew = x.shape[1:]
    top, bottom, left, right = (d * e for e in edges)
    want = np.zeros_like(acc)
    wy, wx = feather_weights(68, 16, 8), feather_weights(88, 16, 8)
    w2 = np.outer(wy, wx)
    inside = np.zeros((eh, ew), bool)
    inside[top : eh - bottom, left : ew - right] = True
    valid = inside & np.isfinite(x).all(0)
    p = Pixelwise().predict_proba_batch(x[None], s2_desc)[0]
    want[:3] = np.where(inside, np.nan_to_num(p[:3] * w2), 0.0)  # a NaN output counts as 0
    want[3] = np.where(valid, w2, -w2)  # weight signed by validity (outside the scene: invalid)
    np.testing.assert_allclose(acc, want, atol=1e-6)
    assert (acc[:, :16] == 0).all() and (acc[:, :, -16:] == 0).all()  # unweighted margins
    empty = np.full_like(x, np.nan)
    out = _predict_block(empty, Pixelwise(), s2_desc, plan, 1, edges)
    assert (out[:3] == 0).all() and (out[3] <= 0).all()


def test_class_argmax_equals_numpy_ties_included():
    from cloudmask.tiles import _argmax_classes

    rng = np.random.default_rng(3)
    p = rng.integers(0, 4, (4, 50, 60)).astype("float32")  # many ties: the first class must win
    np.testing.assert_array_equal(_argmax_classes(p), np.argmax(p, axis=0))
    p = rng.random((4, 7, 9), dtype="float32")
    np.testing.assert_array_equal(_argmax_classes(p), np.argmax(p, axis=0))
    assert _argmax_classes(p).dtype == np.uint8
    for planes in (3, 5):  # other plane counts take the general loop
        p = rng.integers(0, 3, (planes, 20, 30)).astype("float32")
        np.testing.assert_array_equal(_argmax_classes(p), np.argmax(p, axis=0))


def test_classify_argmax_threshold_and_nodata():
    p = np.zeros((4, 1, 4), dtype="float32")
    p[:, 0, 0] = [0.5, 0.2, 0.2, 0.1]  # clear by argmax, cloud (0.4) with threshold 0.3
    p[:, 0, 1] = [0.1, 0.05, 0.15, 0.7]
    p[:, 0, 2] = [0.1, 0.6, 0.2, 0.1]
    p[:, 0, 3] = [0.7, 0.1, 0.1, 0.1]
    valid = np.array([[True, True, True, False]])
    assert classify(p, valid).tolist() == [[0, 3, 1, NODATA]]
    assert classify(p, valid, threshold=0.3).tolist() == [[1, 3, 1, NODATA]]
    assert to_binary(np.array([[0, 1, 2, 3, NODATA]], dtype="uint8")).tolist() == [[0, 1, 1, 0, NODATA]]


def test_dilate_buffers_by_radius_with_class_priority():
    cls = np.zeros((21, 21), dtype="uint8")
    cls[10, 10] = 1
    cls[10, 14] = 3
    cls[0, :] = NODATA
    out = dilate_classes(cls, 2)
    assert out[10, 12] == 1 and out[8, 10] == 1 and out[12, 10] == 1  # disk of radius 2 around the cloud
    assert out[7, 10] == 0 and out[8, 8] == 0  # outside the disk
    assert out[10, 16] == 3  # shadow grows too
    assert out[10, 12] == 1  # where buffers meet, cloud wins over shadow
    assert (out[0] == NODATA).all()
    assert out[10, 14] == 3  # an existing class is never downgraded by a lower-priority buffer


def test_dilation_across_dask_blocks_matches_whole_array(s2_desc):
    class Stripes:
        halo = 8

        def predict_proba_batch(self, x, d):
            b, _, h, w = x.shape
            p = np.zeros((b, 4, h, w), dtype="float32")
            p[:, 0] = 1.0
            return p

    x = random_reflectance(13, 90, 90)
    cls, _ = mask_graph(x, s2_desc, Stripes(), TileOptions(tile_size=32), dilate=3)
    base = np.zeros((90, 90), dtype="uint8")
    assert (cls.compute() == dilate_classes(base, 3)).all()
    # direct check of the map_overlap path with clouds on block borders
    arr = np.zeros((90, 90), dtype="uint8")
    arr[31, 31] = 1
    arr[64, 5] = 3
    lazy = da.from_array(arr, chunks=32).map_overlap(dilate_classes, depth=3, boundary=NODATA, radius=3, dtype="uint8")
    assert (lazy.compute() == dilate_classes(arr, 3)).all()


@pytest.mark.parametrize("dilate, binary, threshold", [(0, False, None), (3, False, None), (2, True, 0.3)])
def test_streaming_execution_equals_the_lazy_graph(predictor, s2_desc, dilate, binary, threshold):
    from cloudmask.tiles import LocalRunner, stream_mask, weighted_graph

    x = random_reflectance(13, 210, 150, seed=5)
    x[:, :12] = np.nan
    x[:, 90:100, 40:60] = np.nan
    opts = TileOptions(tile_size=32, threads=2)
    lazy_cls, lazy_proba = mask_graph(x, s2_desc, predictor, opts, threshold=threshold, dilate=dilate, binary=binary)
    want_cls, want_proba = lazy_cls.compute(), lazy_proba.compute()
    got = np.full((210, 150), 77, dtype="uint8")
    got_p = np.zeros((4, 210, 150), dtype="uint8")
    rows_seen: list[int] = []

    def put(y0, rows):
        rows_seen.append(y0)
        got[y0 : y0 + rows.shape[0]] = rows

    def put_p(y0, rows):
        got_p[:, y0 : y0 + rows.shape[1]] = rows

    graph = weighted_graph(x, s2_desc, predictor, opts)
    assert len(graph.ychunks) > 2  # several block rows are streamed
    stream_mask(graph, LocalRunner(2), put, put_p, threshold=threshold, dilate=dilate, binary=binary)
    assert rows_seen == sorted(rows_seen) and len(rows_seen) > 1  # written top to bottom, in pieces
    np.testing.assert_array_equal(got, want_cls)
    valid = np.isfinite(x).all(0)
    np.testing.assert_allclose(got_p[:, valid], np.rint(want_proba[:, valid] * 100), atol=1)
    assert (got_p[:, ~valid] == NODATA).all()


@pytest.mark.parametrize("size, target", [(4096, 768), (100, 32), (8, 768), (1000, 1000), (250, 64)])
def test_even_split_is_near_equal_on_the_pooling_grid(size, target):
    parts = even_split(size, target, minimum=16)
    assert sum(parts) == size
    assert all(p % 8 == 0 for p in parts[:-1])  # origins stay on the model's pooling grid
    assert max(parts) - min(parts) <= 8 + size % 8
    assert len(parts) == max(1, min(round(size / target), size // 16))


def test_even_split_avoids_a_thin_last_window():
    # 4096 in 768 px tiles used to be 5 × 768 + 256 (the 256 px window cost a full window of context)
    assert even_split(4096, 768) == (824, 816, 816, 816, 824)  # larger parts at the ends: one interior size
    assert even_split(8192, 768) == (752, *[744] * 10)


def _counted_chunks(base: np.ndarray) -> tuple[da.Array, list[tuple[int, ...]]]:
    """``base`` in (1, 32, 40) chunks, and the list each chunk's location is added to when decoded."""
    calls: list[tuple[int, ...]] = []

    def decode(block, block_info=None):
        calls.append(tuple(block_info[0]["chunk-location"]))
        return block + 0.0

    return da.from_array(base, chunks=(1, 32, 40)).map_blocks(decode, dtype="float32"), calls


def test_chunk_reader_decodes_each_shared_chunk_once_when_planned():
    from cloudmask.tiles import ChunkReader

    base = np.arange(2 * 96 * 120, dtype="float32").reshape(2, 96, 120)
    arr, calls = _counted_chunks(base)
    windows = [(y0 - 8, y0 + 40, x0 - 8, x0 + 48) for y0 in (0, 32, 64) for x0 in (0, 40, 80)]  # overlapping
    planned = ChunkReader(arr)
    planned.expect(windows, cache_mb=64)
    padded = np.pad(base, ((0, 0), (8, 8), (8, 8)), constant_values=np.nan)  # NaN outside the array
    want = {win: padded[:, win[0] + 8 : win[1] + 8, win[2] + 8 : win[3] + 8] for win in windows}
    for win in windows:
        np.testing.assert_array_equal(planned.window(*win), want[win])
    assert len(calls) == len(set(calls)) == 2 * 3 * 3  # every chunk decoded exactly once
    assert planned._cached_bytes == 0 and not planned._cache  # all dropped after their last use
    # ... with a cache sized to the plan, not the 64 MB cap: at the 4th window 8 of the 9 chunks
    # per band lie between their first and last read, plus the largest window's chunks (the
    # middle one touches all 9 per band)
    chunk = 32 * 40 * 4
    assert planned.cache_bytes == (2 * 8 + 2 * 9) * chunk
    capped = ChunkReader(arr)
    capped.expect(windows, cache_mb=1)
    assert capped.cache_bytes == planned.cache_bytes  # the plan needs less than the cap
    capped.expect(windows, cache_mb=0)
    assert capped.cache_bytes == 0

    calls.clear()
    tiny = ChunkReader(arr)
    tiny.expect(windows, cache_mb=0)  # nothing fits: correct, just slower
    for win in windows:
        np.testing.assert_array_equal(tiny.window(*win), want[win])
    assert len(calls) > 2 * 3 * 3


def test_chunk_reader_decodes_a_chunk_once_when_two_threads_want_it_at_once():
    """Neighbouring windows run on two threads at once: the second waits for the first's decode
    (and sees its error), instead of decoding the shared chunks again."""
    import threading
    import time

    from cloudmask.tiles import ChunkReader

    calls: list[tuple[int, ...]] = []
    base = np.arange(2 * 64 * 80, dtype="float32").reshape(2, 64, 80)

    def decode(block, block_info=None):
        calls.append(tuple(block_info[0]["chunk-location"]))
        time.sleep(0.05)  # both threads are inside the same chunks' decoding at once
        return block + 0.0

    arr = da.from_array(base, chunks=(1, 32, 40)).map_blocks(decode, dtype="float32")
    windows = [(0, 64, 0, 48), (0, 64, 32, 80)]  # share the chunks of columns 32:40
    reader = ChunkReader(arr)
    reader.expect(windows, cache_mb=64)
    got: dict[int, np.ndarray] = {}
    start = threading.Barrier(2)

    def read(k: int) -> None:
        start.wait()
        got[k] = reader.window(*windows[k])

    threads = [threading.Thread(target=read, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, (y0, y1, x0, x1) in enumerate(windows):
        np.testing.assert_array_equal(got[k], base[:, y0:y1, x0:x1])
    assert sorted(calls) == sorted(set(calls)) and len(calls) == 2 * 2 * 2  # each chunk once
    assert not reader._pending

    def broken(block, block_info=None):
        time.sleep(0.05)
        raise OSError("read failed")

    bad = ChunkReader(da.from_array(base, chunks=(1, 32, 40)).map_blocks(broken, dtype="float32"))
    errors: list[BaseException] = []

    def read_bad(k: int) -> None:
        start.wait()
        try:
            bad.window(*windows[k])
        except OSError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read_bad, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads) and len(errors) == 2  # nobody waits for ever
    assert not bad._pending


def test_chunk_reader_leaves_no_pending_chunk_when_building_its_task_fails(monkeypatch):
    """A chunk's Dask task is built (culled) after it is marked as being decoded: a failure there
    must clear the mark too, or the next window to want that chunk would wait for ever."""
    import dask.optimization

    from cloudmask.tiles import ChunkReader

    base = np.zeros((1, 8, 8), dtype="float32")
    reader = ChunkReader(da.from_array(base, chunks=(1, 4, 4)) + 1)

    def broken(*args, **kwargs):
        raise RuntimeError("cull failed")

    monkeypatch.setattr(dask.optimization, "cull", broken)
    with pytest.raises(RuntimeError, match="cull failed"):
        reader.window(0, 4, 0, 4)
    assert not reader._pending
    monkeypatch.undo()
    np.testing.assert_array_equal(reader.window(0, 4, 0, 4), np.ones((1, 4, 4), "float32"))


def test_chunk_reader_caches_stored_values_and_converts_what_it_copies():
    from cloudmask.registry import Scaling
    from cloudmask.scene import ToPhysical
    from cloudmask.tiles import ChunkReader

    rng = np.random.default_rng(0)
    dn = rng.integers(0, 12000, (3, 70, 90)).astype("uint16")
    dn[:, :5] = 0  # nodata rows
    convert = [ToPhysical(Scaling(1e-4, -0.1 * k, 0), True, 0.0) for k in range(3)]
    phys = np.stack([f(b) for f, b in zip(convert, dn)])
    raw = da.from_array(dn, chunks=(1, 32, 40))
    windows = [(-8, 40, -8, 48), (24, 72, 32, 90), (40, 78, 60, 98)]
    reader = ChunkReader(raw, convert=convert)
    reader.expect(windows, cache_mb=64)
    padded = np.pad(phys, ((0, 0), (8, 8), (8, 8)), constant_values=np.nan)
    for y0, y1, x0, x1 in windows:
        np.testing.assert_array_equal(reader.window(y0, y1, x0, x1), padded[:, y0 + 8 : y1 + 8, x0 + 8 : x1 + 8])
    first = ChunkReader(raw, convert=convert)
    first.window(0, 32, 0, 40)
    assert first._cached_bytes == 3 * 32 * 40 * 2  # uint16 chunks, not float32
    with pytest.raises(ValueError, match="one function per band"):
        ChunkReader(raw, convert=convert[:2])


def test_chunk_reader_hands_stored_values_to_a_model_that_converts_them():
    from cloudmask.registry import Scaling
    from cloudmask.scene import ToPhysical
    from cloudmask.tiles import ChunkReader

    dn = np.random.default_rng(1).integers(1, 12000, (3, 70, 90)).astype("uint16")
    convert = [ToPhysical(Scaling(1e-4, -0.1 * k, 0), True, 0.0) for k in range(3)]
    reader = ChunkReader(da.from_array(dn, chunks=(1, 32, 40)), convert=convert)
    scale, offset, nodata = reader.stored
    np.testing.assert_array_equal(scale, np.float32(1e-4))
    np.testing.assert_allclose(offset, [0.0, -0.1, -0.2])
    np.testing.assert_array_equal(nodata, 0.0)
    np.testing.assert_array_equal(reader.window_stored(10, 60, 30, 85), dn[:, 10:60, 30:85])
    assert reader.window_stored(0, 8, 0, 8).dtype == np.uint16
    # what cannot go to the model as stored: floats, 32-bit integers, thermal radiance (Planck)
    assert ChunkReader(da.from_array(dn.astype("float32"), chunks=(1, 32, 40))).stored is None
    assert ChunkReader(da.from_array(dn.astype("int32"), chunks=(1, 32, 40)), convert=convert).stored is None
    planck = [*convert[:2], ToPhysical(Scaling(3.3e-4, 0.1, 0, k1=774.9, k2=1321.1), True, 0.0)]
    assert ChunkReader(da.from_array(dn, chunks=(1, 32, 40)), convert=planck).stored is None
    # a nodata value the type cannot hold never occurs: no comparison for that band
    odd = [ToPhysical(Scaling(1e-4, 0.0, None), True, -9999.0), *convert[1:]]
    assert np.isnan(ChunkReader(da.from_array(dn, chunks=(1, 32, 40)), convert=odd).stored[2][0])


def test_chunk_reader_reads_file_bands_directly_with_the_same_values(tmp_path, monkeypatch):
    """With ``files`` the reader asks rasterio for each chunk (one dataset per thread), not Dask:
    same windows, stored and converted, from several threads at once."""
    from concurrent.futures import ThreadPoolExecutor

    import dask.local

    from cloudmask.scene import read_scene
    from cloudmask.testing import write_raster
    from cloudmask.tiles import ChunkReader

    dn = np.round(random_reflectance(13, 150, 170, seed=4) * 10000 + 1000).astype("uint16")
    dn[:, :5] = 0
    scene = read_scene(write_raster(tmp_path / "S2A_MSIL2A_f.tif", dn, nodata=0), "sentinel2", chunks=64)
    raw = scene.raw
    plain = ChunkReader(raw.data, convert=raw.convert)
    windows = [(-8, 70, -8, 90), (40, 150, 60, 170), (0, 150, 0, 170), (100, 160, 150, 180)]
    want = [(plain.window_stored(*w), plain.window(*w)) for w in windows]
    calls = []
    monkeypatch.setattr(dask.local, "get_sync", lambda *a, **k: calls.append(a) or pytest.fail("Dask was used"))
    direct = ChunkReader(raw.data, convert=raw.convert, files=raw.files)
    assert direct.files is not None
    with ThreadPoolExecutor(3) as pool:
        got = list(pool.map(lambda w: (direct.window_stored(*w), direct.window(*w)), windows * 3))
    for (y0, y1, x0, x1), (s, f), (ws, wf) in zip(windows * 3, got, want * 3):
        box = np.s_[:, max(0, y0) - y0 : min(150, y1) - y0, max(0, x0) - x0 : min(170, x1) - x0]  # in the scene
        np.testing.assert_array_equal(s[box], dn[:, max(0, y0) : min(150, y1), max(0, x0) : min(170, x1)])
        np.testing.assert_array_equal(s[box], ws[box])
        np.testing.assert_array_equal(f, wf)
    assert not calls
    assert ChunkReader(raw.data, convert=raw.convert, files=[*raw.files[:-1], None]).files is None  # all or none


def test_stored_validity_is_every_band_off_its_nodata_value():
    from cloudmask.tiles import _stored_valid

    x = np.full((3, 4, 5), 7, dtype="uint16")
    x[0, 0, 0] = 0
    x[2, 1, 1] = 0
    x[1, 2, 2] = 5
    zero = np.zeros(3, "float32")
    want = np.ones((4, 5), bool)
    want[0, 0] = want[1, 1] = False
    np.testing.assert_array_equal(_stored_valid(x, zero), want)  # the unsigned, nodata-0 shortcut
    mixed = np.array([0, 5, np.nan], "float32")  # band 2 has no nodata: its 0 is a value
    want = np.ones((4, 5), bool)
    want[0, 0] = want[2, 2] = False
    np.testing.assert_array_equal(_stored_valid(x, mixed), want)
    np.testing.assert_array_equal(_stored_valid(x, np.full(3, np.nan, "float32")), np.ones((4, 5), bool))


def test_streaming_places_blocks_that_finish_out_of_order(predictor, s2_desc):
    """Blocks of the next row may finish first (threads don't wait at row ends): same result."""
    from cloudmask.tiles import LocalRunner, stream_mask, weighted_graph

    class OutOfOrder(LocalRunner):  # runs the jobs, then hands results over late-first in threes
        def run(self, blocks, may_submit=None):
            done = [(key, job()) for key, job in blocks]
            for g in range(0, len(done), 3):
                yield from reversed(done[g : g + 3])

    x = random_reflectance(13, 330, 140, seed=6)
    opts = TileOptions(tile_size=32)
    want, _ = mask_graph(x, s2_desc, predictor, opts)
    graph = weighted_graph(x, s2_desc, predictor, opts)
    assert len(graph.xchunks) < 3 < len(graph.ychunks)  # groups of three straddle block rows
    got = np.full((330, 140), 77, dtype="uint8")

    def put(y0, rows):
        got[y0 : y0 + rows.shape[0]] = rows

    stream_mask(graph, OutOfOrder(3), put)
    np.testing.assert_array_equal(got, want.compute())


class _WindowConstant:
    """A stand-in model whose probabilities are constant per window and differ between windows, so
    the blend in every overlap zone shows whether each window's share arrived (a real model gives
    near-equal answers there, which hides a missing or doubled share)."""

    halo = 32

    def predict_proba_batch(self, x: np.ndarray, descriptors: np.ndarray) -> np.ndarray:
        a = (np.nanmean(x, axis=(1, 2, 3)) * 997.0) % 1.0  # one number per window
        p = np.stack([a, (1 - a) / 2, (1 - a) / 4, (1 - a) / 4], axis=1).astype("float32")
        return np.broadcast_to(p[:, :, None, None], (x.shape[0], 4, *x.shape[2:])).copy()


@pytest.mark.parametrize("tile, batch", [(32, 1), (64, 1), (48, 2)])
def test_streaming_blend_takes_every_windows_share(s2_desc, tile, batch):
    from cloudmask.tiles import LocalRunner, stream_mask, weighted_graph

    model = _WindowConstant()
    x = random_reflectance(13, 250, 230, seed=8)
    opts = TileOptions(tile_size=tile, batch_size=batch)
    want = predict_proba(x, s2_desc, model, opts).compute()
    graph = weighted_graph(x, s2_desc, model, opts)
    got = np.zeros((4, 250, 230), dtype="uint8")

    def put_p(y0, rows):
        got[:, y0 : y0 + rows.shape[1]] = rows

    stream_mask(graph, LocalRunner(2), lambda y0, rows: None, put_p)
    assert np.ptp(want[0]) > 0.3  # windows really differ
    np.testing.assert_allclose(got, np.rint(want * 100), atol=1)


def test_streaming_a_first_block_row_exactly_depth_tall(s2_desc):
    """A first block row as tall as the overlap emits nothing when it completes; the buffer must
    still move on, or the next row's blocks never fit ("blocks were never placed")."""
    from cloudmask.tiles import LocalRunner, stream_mask, weighted_graph

    model = _WindowConstant()
    model.halo = 152
    x = random_reflectance(13, 325, 40, seed=9)
    opts = TileOptions(tile_size=200)
    graph = weighted_graph(x, s2_desc, model, opts)
    assert graph.ychunks[0] == graph.plan.depth  # the case itself
    want = predict_proba(x, s2_desc, model, opts).compute()
    got = np.zeros((4, 325, 40), dtype="uint8")

    def put_p(y0, rows):
        got[:, y0 : y0 + rows.shape[1]] = rows

    stream_mask(graph, LocalRunner(1), lambda y0, rows: None, put_p)
    np.testing.assert_allclose(got, np.rint(want * 100), atol=1)


@pytest.mark.parametrize("dtype, nodata", [("uint16", [0, 0, 0]), ("uint16", [0, np.nan, 0]), ("int16", [0, 0, 0]),
                                           ("uint16", [np.nan] * 3), ("uint8", [5, 5, 5])])
@pytest.mark.parametrize("hole", [False, True])
def test_stored_all_valid_agrees_with_the_per_pixel_map(dtype, nodata, hole):
    """The quick answer never says "all valid" wrongly, and answers the usual case (unsigned, nodata
    0) exactly."""
    from cloudmask.tiles import _stored_all_valid, _stored_valid

    nd = np.array(nodata, "float32")
    x = np.random.default_rng(0).integers(10, 200, size=(3, 9, 11)).astype(dtype)
    if hole and not np.isnan(nd[0]):
        x[0, 4, 5] = nd[0]  # one nodata pixel
    full = bool(_stored_valid(x, nd).all())
    quick = _stored_all_valid(x, nd)
    assert full == (not hole or bool(np.isnan(nd[0])))
    assert not quick or full
    if dtype == "uint16" and nodata == [0, 0, 0]:
        assert quick == full


def test_chunk_reader_keeps_a_shared_chunk_for_an_earlier_window_read_later():
    """With several threads a window may read a shared chunk before the window planned ahead of it
    (the next window reads its left-hand chunks first, the current one its right-hand ones last):
    the chunk must stay cached for the earlier window, not be decoded again."""
    from cloudmask.tiles import ChunkReader

    base = np.arange(2 * 64 * 80, dtype="float32").reshape(2, 64, 80)
    arr, calls = _counted_chunks(base)
    windows = [(0, 64, 0, 48), (0, 64, 32, 80)]  # share the chunks of columns 32:40
    reader = ChunkReader(arr)
    reader.expect(windows, cache_mb=64)
    for k in (1, 0):  # the second window's read finishes first
        y0, y1, x0, x1 = windows[k]
        np.testing.assert_array_equal(reader.window(*windows[k]), base[:, y0:y1, x0:x1])
    assert sorted(calls) == sorted(set(calls)) and len(calls) == 2 * 2 * 2  # each chunk once
    assert reader._cached_bytes == 0 and not reader._cache  # all dropped after their last use


def test_a_cluster_block_of_a_scene_thinner_than_the_halo_is_a_small_graph(s2_desc):
    """``--scheduler`` on a 1 px wide scene: Dask pads in pieces as wide as the edge chunk, so the
    NaN margin became ~300² one-pixel tasks per band and the run never finished."""
    from cloudmask.tiles import weighted_graph

    class Flat:
        halo = 144

        def predict_proba_batch(self, x, d):
            return np.full((x.shape[0], 4) + x.shape[2:], 0.25, "float32")

    data = da.ones((len(s2_desc), 1, 3), chunks=(1, 1, 3), dtype="float32")
    g = weighted_graph(data, s2_desc, Flat())
    block = g.block(0, 0)
    assert len(block.__dask_graph__()) < 100
    got = block.compute(scheduler="sync")
    want = g.block_reader(0, 0)()
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("resolution", [None, 40.0], ids=["file-read", "warped"])
def test_chunk_reader_reads_again_a_chunk_whose_connection_dropped(file_server, tmp_path, resolution):
    """A range request cut half-way through its body (which GDAL does not repeat) costs one more
    request, not the scene: the same values as an undisturbed read."""
    from fetch_servers import write_s2_item

    from cloudmask.scene import read_scene
    from cloudmask.tiles import ChunkReader

    item = write_s2_item(file_server, "S2A_cut", bands=["B04", "B8A"], size=256)
    path = tmp_path / "item.json"
    path.write_text(json.dumps(item))
    scene = read_scene(path, resolution=resolution, chunks=128)
    assert scene.raw.remote and (None in scene.raw.files) == (resolution is not None)
    with rasterio.open(file_server.root / "S2A_cut" / "red.tif") as src:
        red = src.read(1)
    reads_before = len(file_server.gets("/S2A_cut/red.tif"))
    file_server.faults["/S2A_cut/red.tif"] = ["range-drop"]
    plain = ChunkReader(scene.raw.data, convert=scene.raw.convert, files=scene.raw.files)
    with pytest.raises(rasterio.errors.RasterioIOError):
        plain.window_stored(0, scene.shape[0], 0, scene.shape[1])
    # the cut response stays in GDAL's cache as if whole: a retry must ask the server again
    reader = ChunkReader(scene.raw.data, convert=scene.raw.convert, files=scene.raw.files, retries=2)
    got = reader.window_stored(0, scene.shape[0], 0, scene.shape[1])[0]
    if resolution is None:
        np.testing.assert_array_equal(got, red)
    else:  # 2×2 averages of the 20 m band (nodata row left out)
        np.testing.assert_allclose(got[1:], red[2:].reshape(127, 2, 128, 2).mean(axis=(1, 3)), atol=0.51)
    assert len(file_server.gets("/S2A_cut/red.tif")) >= reads_before + 2  # the cut request, then again


def test_a_file_reader_travels_without_its_cache_and_is_shared_once_unpickled(tmp_path):
    """Cluster block tasks carry the scene's ChunkReader: without its cache, lock or datasets, and
    unpickled to one reader per process, so the tasks of a scene on one worker share its decoded
    chunks (those of one run: not another run's over the same files); it reads the same values."""
    import pickle

    from cloudmask.scene import read_scene
    from cloudmask.testing import write_raster
    from cloudmask.tiles import ChunkReader

    dn = np.round(random_reflectance(4, 90, 100, seed=2) * 10000 + 1000).astype("uint16")
    scene = read_scene(write_raster(tmp_path / "S2A_MSIL2A_p.tif", dn, nodata=0), "sentinel2",
                       bands=["B02", "B03", "B04", "B08"], chunks=32)
    reader = ChunkReader(scene.raw.data, convert=scene.raw.convert, files=scene.raw.files)
    want = reader.window_stored(4, 50, 10, 70)
    assert reader._cache  # it holds decoded chunks now
    blob = pickle.dumps(reader)
    a, b = pickle.loads(blob), pickle.loads(pickle.dumps(reader))
    assert a is b and a is not reader and not a._cache
    np.testing.assert_array_equal(a.window_stored(4, 50, 10, 70), want)
    # another run over the same files (on a cluster that outlives runs, a file may have been
    # rewritten since) gets a reader of its own, not the old cache
    again = ChunkReader(scene.raw.data, convert=scene.raw.convert, files=scene.raw.files)
    assert pickle.loads(pickle.dumps(again)) is not a


def test_mask_graph_takes_a_dataarray_band_dimension_anywhere_and_refuses_wrong_shapes():
    """A (y, x, band) DataArray built a lazy (64, 13) "mask" that failed only when computed, with an
    error about descriptor shapes; 2-D and 4-D arrays failed with unpacking errors."""
    import xarray as xr

    from cloudmask.errors import BandError
    from cloudmask.model import Predictor
    from cloudmask.registry import get_sensor
    from cloudmask.testing import random_reflectance
    from cloudmask.tiles import mask_graph

    p = Predictor.random(seed=0, dilations=(1,))
    s2 = get_sensor("sentinel2")
    d = s2.descriptors()
    x = random_reflectance(len(d), 64, 48, seed=2)
    opts = TileOptions(tile_size=32, threads=1)
    want = mask_graph(xr.DataArray(x, dims=("band", "y", "x")), d, p, opts)[0].compute()
    moved = xr.DataArray(np.moveaxis(x, 0, -1), dims=("y", "x", "band"))
    got = mask_graph(moved, d, p, opts)[0]
    assert got.shape == (64, 48)
    np.testing.assert_array_equal(got.compute(), want)
    with pytest.raises(BandError, match=r"expected \(band, y, x\)"):
        mask_graph(np.moveaxis(x, 0, -1), d, p, opts)
    with pytest.raises(BandError, match="3-D"):
        mask_graph(x[0], d, p, opts)
    with pytest.raises(BandError, match="3-D"):
        mask_graph(xr.DataArray(x[None], dims=("time", "band", "y", "x")), d, p, opts)
