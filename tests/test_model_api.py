"""Public model API: shapes, band-order invariance, variable/unseen bands, nodata, weights I/O."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cloudmask.errors import BandError, ModelError
from cloudmask.model import Predictor, load_model
from cloudmask.model.descriptors import descriptor_features
from cloudmask.registry import get_sensor

TINY = {"desc_dim": 16, "enc_width": 8, "lin4_width": 4, "c4": 8, "c8": 12, "dilations": (1, 2), "head_width": 6}


@pytest.fixture(scope="module", params=["set", "pairwise"])
def predictor(request: pytest.FixtureRequest) -> Predictor:
    return Predictor.random(seed=3, encoder=request.param, **TINY)


def _scene(n: int, h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    s2 = get_sensor("sentinel2")
    rng = np.random.default_rng(seed)
    bands = list(s2.bands)[:n] if n <= len(s2.bands) else list(s2.bands)
    x = rng.uniform(0.02, 0.8, (len(bands), h, w)).astype("float32")
    return x, s2.descriptors(bands)


def test_shapes_odd_sizes(predictor: Predictor) -> None:
    x, d = _scene(13, 37, 51)
    p = predictor.predict_proba(x, d)
    assert p.shape == (4, 37, 51) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(axis=0), 1.0, atol=1e-5)
    xb = np.stack([x, x[:, ::-1, :].copy()])
    pb = predictor.predict_proba_batch(xb, d)
    assert pb.shape == (2, 4, 37, 51)
    np.testing.assert_allclose(pb[0], p, atol=1e-5)


def test_band_order_invariance(predictor: Predictor) -> None:
    x, d = _scene(13, 40, 48, seed=1)
    perm = np.random.default_rng(7).permutation(13)
    a = predictor.predict_proba(x, d)
    b = predictor.predict_proba(x[perm], d[perm])
    assert np.abs(a - b).max() < 1e-5


@pytest.mark.parametrize("n", [3, 4, 7])
def test_variable_band_count(predictor: Predictor, n: int) -> None:
    x, d = _scene(n, 24, 24)
    p = predictor.predict_proba(x, d)
    assert p.shape == (4, 24, 24) and np.isfinite(p).all()


def test_unseen_bands_and_thermal(predictor: Predictor) -> None:
    rng = np.random.default_rng(2)
    d = np.array(
        [[0.41, 0.43, 0.45, 0.04, 0], [0.61, 0.63, 0.66, 0.05, 0], [1.0, 1.03, 1.06, 0.06, 0], [10.4, 10.9, 11.4, 0.9, 1]],
        dtype="float32",
    )
    x = rng.uniform(0.05, 0.5, (4, 20, 28)).astype("float32")
    x[3] = rng.uniform(250, 310, (20, 28))
    p = predictor.predict_proba(x, d)
    assert p.shape == (4, 20, 28) and np.isfinite(p).all()


def test_nodata_never_leaks_and_is_clear(predictor: Predictor) -> None:
    x, d = _scene(6, 32, 32)
    x[:, :5, :] = np.nan  # nodata strip in every band
    x[2, 10:20, 10:20] = np.nan  # one band missing in a patch
    p = predictor.predict_proba(x, d)
    assert np.isfinite(p).all()
    np.testing.assert_array_equal(p[0, :5], 1.0)
    np.testing.assert_array_equal(p[1:, :5], 0.0)
    allnan = np.full((4, 16, 16), np.nan, dtype="float32")
    q = predictor.predict_proba(allnan, d[:4])
    assert np.isfinite(q).all() and (q[0] == 1).all()


def test_bad_inputs_raise(predictor: Predictor) -> None:
    x, d = _scene(2, 8, 8)
    with pytest.raises(BandError, match="at least 3"):
        predictor.predict_proba(x, d)
    x, d = _scene(5, 8, 8)
    with pytest.raises(BandError, match="descriptors"):
        predictor.predict_proba(x, d[:4])
    with pytest.raises(BandError, match=r"expected a \(bands, y, x\) array, got shape \(8, 8\)"):
        predictor.predict_proba(x[0], d)


def test_descriptors_in_nanometres_or_implausible_are_refused(predictor: Predictor) -> None:
    x, d = _scene(5, 8, 8)
    nm = d.copy()
    nm[:, :4] *= 1000.0  # 490 instead of 0.49 µm: the network would answer with confident garbage
    for call in (lambda dd: predictor.predict_proba(x, dd), lambda dd: predictor.predict_proba_batch(x[None], dd)):
        with pytest.raises(BandError, match="look like nanometres") as err:
            call(nm)
        assert "\n" not in str(err.value)
        one = d.copy()
        one[2, 1] = 665.0  # one centre in nm is enough
        with pytest.raises(BandError, match="nanometres"):
            call(one)
        low = d.copy()
        low[0, 0] = 0.01
        with pytest.raises(BandError, match=r"0.3-15.0 µm"):
            call(low)
        flat = d.copy()
        flat[1, 3] = 0.0
        with pytest.raises(BandError, match="FWHM"):
            call(flat)
        flag = d.copy()
        flag[0, 4] = 0.5
        with pytest.raises(BandError, match="thermal flags"):
            call(flag)
    assert predictor.predict_proba(x, d).shape == (4, 8, 8)  # micrometres still work


def test_values_that_cannot_be_reflectance_are_refused(predictor: Predictor) -> None:
    """DNs, percent or an unmarked -9999 fill gave a confident mask (all cloud, or shadow), no error."""
    x, d = _scene(5, 40, 40)
    one_band = x.copy()
    one_band[2] = np.round(x[2] * 10000 + 1000)  # one band of DNs in a stack of reflectances
    for bad, words in ((np.round(x * 10000 + 1000), "look scaled"), (x * 100, "look scaled"), (one_band, "look scaled")):
        with pytest.raises(BandError, match=words) as err:
            predictor.predict_proba(bad, d)
        assert "\n" not in str(err.value)
    filled = x.copy()
    filled[:, :4] = -9999.0
    with pytest.raises(BandError, match="below -0.5.*Mark it as nodata"):
        predictor.predict_proba(filled, d)
    filled[:, :4] = np.nan  # the same pixels marked as nodata: fine
    assert predictor.predict_proba(filled, d).shape == (4, 40, 40)
    bright = np.full_like(x, 1.4)  # thick cloud under a low sun (TOA reflectance over 1): fine
    bright[0, 0, 0] = -0.05  # slightly negative surface reflectance: fine
    assert predictor.predict_proba(bright, d).shape == (4, 40, 40)
    t = get_sensor("landsat8")
    bands = [b for b in t.bands if b.kind == "thermal"][:1] + [b for b in t.bands if b.kind != "thermal"][:4]
    xt = np.concatenate([np.full((1, 40, 40), 290.0, "float32"), x[:4]])  # kelvin in a thermal band: fine
    assert predictor.predict_proba(xt, t.descriptors(bands)).shape == (4, 40, 40)


def test_random_is_deterministic() -> None:
    x, d = _scene(5, 16, 16)
    a = Predictor.random(seed=1, **TINY).predict_proba(x, d)
    b = Predictor.random(seed=1, **TINY).predict_proba(x, d)
    np.testing.assert_array_equal(a, b)


def test_weights_roundtrip_and_hash(tmp_path: Path) -> None:
    p = Predictor.random(seed=4, **TINY)
    path = p.save(tmp_path / "m.safetensors", version="9.9")
    q = load_model(path)
    assert q.version == "9.9" and len(q.sha256) == 64
    assert json.loads(path.with_suffix(".json").read_text())["sha256"] == q.sha256
    x, d = _scene(5, 16, 24)
    np.testing.assert_array_equal(p.predict_proba(x, d), q.predict_proba(x, d))


def test_corrupt_or_mismatched_weights(tmp_path: Path) -> None:
    p = Predictor.random(seed=4, **TINY)
    path = p.save(tmp_path / "m.safetensors", version="1")
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ModelError, match="sha256"):
        load_model(path)
    path.with_suffix(".json").unlink()  # no sidecar: no hash to check, but the file itself is garbage?
    path.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ModelError, match="cannot be read"):
        load_model(path)
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "missing.safetensors")
    # weights of one architecture with a sidecar claiming another
    other = p.save(tmp_path / "o.safetensors", version="1")
    side = json.loads(other.with_suffix(".json").read_text())
    side["architecture"]["c8"] = 16
    other.with_suffix(".json").write_text(json.dumps(side))
    with pytest.raises(ModelError, match="do not fit the architecture: .*size mismatch"):  # the reason, not torch's heading
        load_model(other)


def test_bundled_weights_load() -> None:
    p = load_model()
    assert p.version and len(p.sha256) == 64 and p.halo >= 32 and p.halo % p.stride == 0


def test_fast_path_matches_masked_path_and_training_forward() -> None:
    import torch

    p = Predictor.random(seed=5, **TINY)
    x, d = _scene(6, 40, 56, seed=4)
    d[5, 4] = 1.0  # make one band thermal
    x[5] = 290.0 + 10 * x[5]
    fast = p.predict_proba(x, d)
    with torch.enable_grad():  # the training code path (inference takes in-place/batched shortcuts)
        ref = torch.softmax(p.net(torch.from_numpy(x[None]), torch.from_numpy(d)), 1)[0].detach().numpy()
    assert np.abs(fast - ref).max() < 1e-5
    x2 = x.copy()
    x2[1, 0, 0] = np.nan  # forces the masked path in that chunk; elsewhere unchanged maths
    slow = p.predict_proba(x2, d)
    assert np.abs(slow[:, 20:] - fast[:, 20:]).max() < 1e-4


def test_tiles_with_halo_match_whole_scene() -> None:
    p = Predictor.random(seed=6, **TINY)
    x, d = _scene(5, 96, 200, seed=5)
    whole = p.predict_proba(x, d)
    halo = p.halo
    a, b = 64, 136  # a window whose origin is a multiple of the stride
    lo, hi = max(a - halo, 0), min(b + halo, x.shape[2])
    part = p.predict_proba(x[:, :, lo:hi], d)
    assert np.abs(part[:, 16:80, a - lo : b - lo] - whole[:, 16:80, a:b]).max() < 1e-4


def test_bundled_weights_are_trained() -> None:
    """Vegetation is clear and a bright, flat, SWIR-absorbing, cirrus-bright target is cloud,
    with all 13 Sentinel-2 bands and with blue/green/red/NIR only (behaviour, not exact numbers)."""
    s2 = get_sensor("sentinel2")
    d = s2.descriptors()
    wl = d[:, 1]
    veg = np.where(wl < 0.7, np.where(np.abs(wl - 0.56) < 0.03, 0.08, 0.04), np.where(wl < 1.3, 0.35, 0.15))
    cloud = np.where(wl < 1.3, 0.75, 0.45)
    cirrus = (wl > 1.3) & (wl < 1.45)
    veg[cirrus], cloud[cirrus] = 0.001, 0.3
    x = np.empty((13, 64, 96), "float32")
    x[:, :, :48] = veg[:, None, None]
    x[:, :, 48:] = cloud[:, None, None]
    x += np.random.default_rng(0).normal(0, 0.005, x.shape).astype("float32")
    p = load_model()
    four = [s2.band_names.index(s2.band(n).name) for n in ("blue", "green", "red", "nir")]
    for xs, ds in ((x, d), (x[four], d[four])):
        pr = p.predict_proba(xs, ds)
        assert pr[0, 20:44, 8:40].mean() > 0.6
        assert pr[1:3, 20:44, 56:88].sum(axis=0).mean() > 0.9


def test_output_region_equals_crop_of_full_output(predictor: Predictor) -> None:
    x, d = _scene(13, 61, 75, seed=4)
    x[2, 10:30, 5:25] = np.nan  # nodata inside and across the region's edge
    full = predictor.predict_proba(x, d)
    for region in [(0, 61, 0, 75), (9, 50, 13, 70), (3, 4, 74, 75), (56, 61, 0, 9)]:
        y0, y1, x0, x1 = region
        np.testing.assert_allclose(predictor.predict_proba(x, d, region=region), full[:, y0:y1, x0:x1], atol=1e-5)
    batch = predictor.predict_proba_batch(np.stack([x, x]), d, region=(9, 50, 13, 70))
    assert batch.shape == (2, 4, 41, 57)
    for bad in [(0, 62, 0, 75), (10, 10, 0, 5), (-1, 5, 0, 5)]:
        with pytest.raises(BandError, match="region"):
            predictor.predict_proba(x, d, region=bad)


def test_cropped_decoder_equals_crop_of_the_whole_context(predictor: Predictor) -> None:
    """The decoder run on part of the 1/4-resolution map (what a tiled window's output region
    needs) gives that part of the whole map: edges, odd offsets, one row or column."""
    import torch

    net = predictor._infer
    x, d = _scene(9, 168, 200, seed=6)
    x[3, 40:90, 60:120] = np.nan  # the masking path
    xt, dt = torch.from_numpy(x)[None], torch.from_numpy(d)
    with torch.inference_mode():
        emb = net.desc_mlp(descriptor_features(dt))
        v4, m4 = net._pool(xt, dt, fast=False)
        full = net._context(v4, m4, dt, emb)
        h4, w4 = full.shape[-2:]
        for keep in [(0, h4, 0, w4), (5, 37, 7, 44), (0, 3, w4 - 2, w4), (h4 - 1, h4, 0, 1), (20, 21, 19, 20), (6, 41, 1, 49)]:
            r0, r1, c0, c1 = keep
            part = net._context(v4, m4, dt, emb, keep=keep)
            assert part.shape[-2:] == (r1 - r0, c1 - c0)
            torch.testing.assert_close(part, full[..., r0:r1, c0:c1], rtol=0, atol=1e-5)


def test_finite_hint_skips_only_a_check(predictor: Predictor) -> None:
    """``finite=True`` (the tiler already checked for NaN/inf) changes nothing on finite input,
    also where the network pads a size off its 8 px stride with nodata."""
    for h, w in [(64, 72), (61, 75)]:
        x, d = _scene(13, h, w, seed=5)
        np.testing.assert_array_equal(predictor.predict_proba(x, d, finite=True), predictor.predict_proba(x, d))
        np.testing.assert_array_equal(predictor.predict_proba(x, d, region=(5, h - 3, 8, w), finite=True),
                                      predictor.predict_proba(x, d, region=(5, h - 3, 8, w)))


@pytest.mark.parametrize("dtype", ["uint16", "int16", "uint8"])
def test_stored_values_give_the_same_output_as_physical_ones(predictor: Predictor, dtype: str) -> None:
    """``stored=`` (the network converts DNs chunk by chunk) equals converting first, to float
    rounding (where no pixel needs masking, the scale and offset are applied after the first linear
    step instead of before it), with nodata values, a band without nodata, regions, the ``finite``
    hint and sizes off the stride."""
    info = np.iinfo(dtype)
    rng = np.random.default_rng(7)
    s2 = get_sensor("sentinel2")
    d = s2.descriptors(list(s2.bands))
    scale = np.full(13, 1e-4 if info.max > 255 else 4e-3, "float32")
    offset = np.linspace(-0.1, 0.0, 13).astype("float32")
    nodata = np.full(13, 0 if info.min == 0 else -1, "float32")
    nodata[5] = np.nan  # this band has none
    for h, w in [(72, 80), (61, 75)]:
        dn = rng.integers(max(info.min, 1), min(info.max, 9000), (13, h, w)).astype(dtype)
        if info.min < 0:
            dn[:, ::7] = np.abs(dn[:, ::7])
        dn[3, 10:20, 5:30] = nodata[3]  # nodata in one band: NaN there
        dn[5, 30:40, 30:40] = 0  # a valid zero where the band has no nodata
        phys = dn.astype("float32") * scale[:, None, None] + offset[:, None, None]
        phys[3][dn[3] == nodata[3]] = np.nan
        for region in [None, (5, h - 3, 8, w)]:
            want = predictor.predict_proba_batch(phys[None], d, region=region)
            got = predictor.predict_proba_batch(dn[None], d, region=region, stored=(scale, offset, nodata))
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
        np.testing.assert_allclose(predictor.predict_proba(dn, d, stored=(scale, offset, nodata)), predictor.predict_proba(phys, d),
                                   rtol=0, atol=1e-6)
        clean = dn[:, 20:, :].copy()  # no nodata value: the hint may skip the comparisons
        np.testing.assert_array_equal(
            predictor.predict_proba_batch(clean[None], d, finite=True, stored=(scale, offset, nodata)),
            predictor.predict_proba_batch(clean[None], d, stored=(scale, offset, nodata)))
    with pytest.raises(BandError, match="one scale, offset and nodata per band"):
        predictor.predict_proba_batch(dn[None], d, stored=(scale[:3], offset, nodata))


def test_stored_thermal_fill_values_are_masked_like_physical_ones(predictor: Predictor) -> None:
    """A thermal value below 100 K is a fill value even when it is not the declared nodata: the
    stored path must find it before folding the scale into the weights, so the chunks holding one
    are masked and the others take the unscaled shortcut, with the output of converting first."""
    l8 = get_sensor("landsat8")
    names = ["blue", "green", "red", "nir08", "swir16", "lwir11"]
    d = l8.descriptors([l8.band(n) for n in names])
    scale = np.array([2e-5] * 5 + [0.02], "float32")  # thermal: K = DN * 0.02
    offset = np.array([-0.1] * 5 + [0.0], "float32")
    nodata = np.zeros(6, "float32")
    rng = np.random.default_rng(3)
    dn = np.concatenate([rng.integers(7000, 40000, (5, 144, 96)), rng.integers(13500, 15500, (1, 144, 96))]).astype("uint16")
    dn[5, 100:110, 20:60] = 200  # 4 K: a fill value, not the declared nodata (0)
    phys = dn.astype("float32") * scale[:, None, None] + offset[:, None, None]
    want = predictor.predict_proba(phys, d)
    got = predictor.predict_proba(dn, d, stored=(scale, offset, nodata))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    gap = phys.copy()
    gap[5, 100:110, 20:60] = np.nan  # the fill value is nodata in that band
    np.testing.assert_allclose(got, predictor.predict_proba(gap, d), rtol=0, atol=1e-6)


@pytest.mark.parametrize("partial", [False, True])
@pytest.mark.parametrize("chunk", [4096, 20])
def test_set_encoder_inference_path_equals_training_path(partial: bool, chunk: int) -> None:
    import torch

    from cloudmask.model.encoders import SetEncoder

    torch.manual_seed(3)
    enc = SetEncoder(16, 8)
    enc.infer_chunk = chunk  # 20: the 126 pixels in several steps, the last one short
    v, lv = torch.randn(2, 5, 9, 7), torch.randn(2, 5, 9, 7)
    m = (torch.rand(2, 5, 9, 7) > 0.4).float() if partial else torch.ones(2, 5, 9, 7)
    m[0, :, 0, 0] = 0.0 if partial else 1.0  # a pixel with no valid band pools to zeros
    emb = torch.randn(5, 16)
    with torch.enable_grad():
        ref = enc(v * m, lv * m, m, emb).detach()
    with torch.inference_mode():
        got = enc(v * m, lv * m, m, emb)
    assert got.shape == ref.shape == (2, 16, 9, 7)
    assert (got - ref).abs().max() < 1e-5
    if partial:
        assert got[0, :, 0, 0].abs().max() == 0


def test_resolve_device_names_and_errors() -> None:
    import torch

    from cloudmask.errors import UsageError
    from cloudmask.model import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad, msg in [("tpu", "unknown device"), ("cuda:x", "unknown device"), ("mps", "not supported")]:
        with pytest.raises(UsageError, match=msg):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="sees no CUDA GPU"):
            resolve_device("cuda")


def test_predictor_pickles_to_a_cpu_copy_with_the_same_outputs() -> None:
    """Dask workers receive pickled predictors: always a CPU one (a worker may have no GPU), even
    when the sender runs on a GPU (simulated here by its device field)."""
    import pickle

    import torch

    p = Predictor.random(seed=3).to("cpu")
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 0.5, (5, 40, 48)).astype("float32")
    d = get_sensor("sentinel2").descriptors()[:5]
    want = p.predict_proba(x, d)
    p.device = torch.device("cuda")  # as after .to("cuda"); the pickle must not carry it
    q = pickle.loads(pickle.dumps(p))
    assert q.device == torch.device("cpu")
    np.testing.assert_allclose(q.predict_proba(x, d), want, atol=1e-6)


def test_a_worker_unpickles_one_predictor_per_weights_not_one_per_task(tmp_path) -> None:
    """Every Dask task carries the predictor; a fresh copy per task paid the model's first-call
    cost on every block. The same weights unpickle to one shared object per process; other
    weights, and untrained predictors (no weights' identity), to their own."""
    import pickle

    from cloudmask.model.predictor import load_model

    p = Predictor.random(seed=1)
    p.sha256 = "ab" * 32  # as a weights file's digest
    a, b = pickle.loads(pickle.dumps(p)), pickle.loads(pickle.dumps(p))
    assert a is b and a is not p
    q = Predictor.random(seed=2)
    q.sha256 = "cd" * 32
    assert pickle.loads(pickle.dumps(q)) is not a
    r = Predictor.random(seed=1)
    assert pickle.loads(pickle.dumps(r)) is not pickle.loads(pickle.dumps(r))
    bundled = load_model()
    x = np.random.default_rng(0).uniform(0.0, 0.5, (13, 40, 48)).astype("float32")
    d = get_sensor("sentinel2").descriptors()
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(bundled)).predict_proba(x, d), bundled.predict_proba(x, d))


def test_inference_shortcuts_equal_the_training_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from cloudmask.model import network
    from cloudmask.model.descriptors import log_feature
    from cloudmask.model.network import DSBlock, _cat_channels_last, add_relu_

    torch.manual_seed(0)
    # dilation 8 pads 8 px: inference pads first and convolves unpadded (oneDNN's fast path)
    for dilation in (1, 8):
        blk = DSBlock(16, 16, dilation=dilation).eval()
        x = torch.randn(1, 16, 37, 29).contiguous(memory_format=torch.channels_last)
        with torch.enable_grad():
            ref = blk(x).detach()
        with torch.inference_mode():
            got = blk(x)
        assert got.shape == ref.shape and (got - ref).abs().max() < 1e-5
    v = torch.rand(1, 4, 5, 6) * 2 - 0.5
    desc = torch.tensor([[0.4, 0.45, 0.5, 0.05, 0.0]] * 3 + [[10.0, 11.0, 12.0, 1.0, 1.0]])
    with torch.enable_grad():
        ref = log_feature(v, desc)
    with torch.inference_mode():
        got = log_feature(v, desc)
    assert torch.equal(got, ref) and torch.equal(got[:, 3], v[:, 3])  # thermal passes through
    parts = [torch.randn(1, 3, 5, 6).contiguous(memory_format=torch.channels_last), torch.randn(1, 1, 5, 6),
             torch.randn(1, 4, 5, 6)]
    cat = _cat_channels_last(parts)
    assert cat.is_contiguous(memory_format=torch.channels_last) and torch.equal(cat, torch.cat(parts, 1))
    a, b = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    want = (a + b).relu()
    assert torch.equal(add_relu_(a.clone(), b), want)
    def cpu_only(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # like ATen's: no CUDA/MPS kernel
        raise NotImplementedError

    with monkeypatch.context() as m:
        m.setattr(network, "_ADD_RELU", cpu_only)
        assert add_relu_(torch.zeros(3, device="meta"), torch.ones(3, device="meta")).device.type == "meta"
    monkeypatch.setattr(network, "_ADD_RELU", None)  # a torch without the fused op
    assert torch.equal(add_relu_(a.clone(), b), want)


def test_nodata_free_is_conservative() -> None:
    import torch

    from cloudmask.model.network import _nodata_free

    x = torch.from_numpy(np.array([[[[5, 9], [3, 7]]]], dtype="uint16"))  # uint16: numpy takes the min
    one, zero = torch.ones(1), torch.zeros(1)
    assert _nodata_free(x, one, zero, torch.tensor([0.0]))  # min 3 > nodata 0
    assert not _nodata_free(x, one, zero, torch.tensor([3.0]))  # a 3 occurs
    assert not _nodata_free(x, one, zero, torch.tensor([4.0]))  # min not above it: assume it may occur
    assert _nodata_free(x, one, zero, torch.tensor([float("nan")]))  # none declared
    assert not _nodata_free(x, torch.tensor([float("inf")]), zero, torch.tensor([float("nan")]))  # inf after scaling


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("shape", [(1, 12, 18, 50), (2, 5, 3, 1), (1, 3, 1, 1)])
def test_inference_upsampling_equals_bilinear_interpolation_edges_included(scale, shape):
    """The transposed-convolution form used at inference matches F.interpolate everywhere,
    the clamped edges included, in either memory layout."""
    import torch
    import torch.nn.functional as F

    from cloudmask.model.network import upsample

    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    want = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
    with torch.inference_mode():
        for got in (upsample(x, scale), upsample(x.contiguous(memory_format=torch.channels_last), scale)):
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
