"""Training pieces: partial-label loss, label mappings, config handling, data sources, real tiles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cloudmask.errors import UsageError
from cloudmask.model.data import (
    LABEL_MAPPINGS, PooledSimSource, RealSource, SimSource, jitter, load_real_tiles, map_labels, pick_subset, virtual_bands,
)
from cloudmask.model.train import confusion, load_config, partial_cross_entropy, scores
from cloudmask.registry import get_sensor
from cloudmask.testing import write_raster

#: Config overrides for a seconds-long training run on the stand-in simulator with a tiny net.
TINY_RUN = ["data.simulator=standin", "data.tile=32", "data.batch=2", "val.scenes=1", "val.size=32",
            "model.desc_dim=8", "model.enc_width=4", "model.lin4_width=4", "model.c4=8", "model.c8=8",
            "model.dilations=[1]", "model.head_width=4", "train.warmup=1", "train.val_every=1", "train.threads=1",
            "train.ckpt_every=1"]


def test_partial_cross_entropy_sets() -> None:
    logits = torch.zeros(1, 4, 1, 2)
    logits[0, 3, 0, 0] = 5.0  # confident shadow at a pixel labelled clear
    y = torch.tensor([[[0, 255]]], dtype=torch.uint8)
    full = partial_cross_entropy(logits, y, torch.tensor([True]), torch.tensor([True]))
    partial = partial_cross_entropy(logits, y, torch.tensor([True]), torch.tensor([False]))
    assert full > 4.0  # shadow predicted where clear is labelled: penalised
    assert partial < 0.05  # the dataset does not label shadow: "clear" may hide shadow
    ce = torch.nn.functional.cross_entropy(logits, torch.tensor([[[0, 255]]]), ignore_index=255)
    assert torch.isclose(full, ce)


def test_label_mappings() -> None:
    raw = np.array([[0, 64, 128], [192, 255, 7]], dtype=np.uint8)
    np.testing.assert_array_equal(map_labels(raw, "l8biome"), [[255, 3, 0], [2, 1, 255]])
    np.testing.assert_array_equal(map_labels(np.array([0, 1, 2, 3, 4, 5, 6]), "sparcs"), [3, 3, 0, 0, 0, 1, 0])
    assert LABEL_MAPPINGS["sparcs"].labelled.thin is False
    with pytest.raises(UsageError, match="unknown label mapping"):
        map_labels(raw, "nope")


def test_scores_cloud_vs_not() -> None:
    truth = np.array([0, 1, 2, 3, 1, 255])
    pred = np.array([0, 2, 1, 0, 0, 1])
    s = scores(confusion(pred, truth))
    assert s["pixels"] == 5
    assert s["cloud_precision"] == 100.0 and round(s["cloud_recall"], 1) == 66.7
    assert s["shadow_f1"] == 0.0


@pytest.mark.parametrize(("override", "message"), [
    ("train.steps=abc", "'train.steps' must be a whole number"), ("seed=-1", "'seed' must be a whole number >= 0"),
    ("train.lr=abc", "'train.lr' must be a number"), ("data.tile=7", "multiple of 8"), ("data.tile=0", "multiple of 8"),
    ("data.batch=0", "'data.batch' must be >= 1"), ("train.val_every=0", "'train.val_every' must be >= 1"),
    ("train.class_weights=[1,2]", "four numbers"), ("model.c4=abc", "c4 must be a whole number"),
    ("train.ema=1.5", "'train.ema' must be within 0-1"), ("train.schedule=foo", "'steps' or 'time'"),
    ("train.steps=0", "'train.steps' must be >= 1"), ("val.four_bands=yes please", "true or false"),
    ("train.lr=.nan", "'train.lr' must be a number"),
])
def test_bad_config_values_are_one_line_usage_errors(override: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as info:
        load_config(None, [override])
    assert "\n" not in str(info.value)


def test_config_overrides_and_errors(tmp_path: Path) -> None:
    cfg = load_config(None, ["train.steps=7", "data.sensors=[sentinel2]", "model.c8=16", "train.lr=1e-4"])
    assert cfg["train"]["steps"] == 7 and cfg["data"]["sensors"] == ["sentinel2"] and cfg["model"]["c8"] == 16
    assert cfg["train"]["lr"] == 1e-4  # YAML 1.1 reads 1e-4 as a string: a number where numbers go
    with pytest.raises(UsageError, match="unknown config key"):
        load_config(None, ["train.stepz=1"])
    with pytest.raises(UsageError, match="key.sub=value"):
        load_config(None, ["train.steps"])
    with pytest.raises(UsageError, match="bad model config"):
        load_config(None, ["model.encoder=nope"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(UsageError, match="not valid YAML") as info:
        load_config(bad)
    assert "\n" not in str(info.value)  # one line
    # simulator options are free-form (the simulator checks them) and merge across file and overrides
    opts = tmp_path / "opts.yaml"
    opts.write_text("data:\n  sim_options: {shadow_max_sun: 0.6}\n")
    cfg = load_config(opts, ["data.sim_options.shadow_ambiguous_sun=0.85"])
    assert cfg["data"]["sim_options"] == {"shadow_max_sun": 0.6, "shadow_ambiguous_sun": 0.85}
    with pytest.raises(UsageError, match="must be a mapping"):
        load_config(None, ["data.sim_options=3"])


def test_band_subsets_virtual_bands_and_jitter() -> None:
    rng = np.random.default_rng(0)
    bands = virtual_bands(rng, n=6)
    assert len(bands) >= 6 and all(b.wavelength_min < b.wavelength_center < b.wavelength_max for b in bands)
    sizes = {len(pick_subset(bands, rng, 4, 1.0)) for _ in range(30)}
    assert min(sizes) >= 4 and len(sizes) > 1
    x = np.full((2, 3, 4, 4), 0.3, "float32")
    d = get_sensor("sentinel2").descriptors()[:3]
    xj, dj = jitter(x, d, rng, {})
    assert xj.shape == x.shape and not np.allclose(xj, x)
    assert (dj[:, 0] < dj[:, 1]).all() and (dj[:, 1] < dj[:, 2]).all() and np.allclose(dj[:, 1], d[:, 1], rtol=0.02)


def test_sim_source_standin_shapes() -> None:
    src = SimSource({"simulator": "standin", "sensors": ["sentinel2"], "virtual_prob": 0.5}, np.random.default_rng(1))
    for _ in range(4):
        b = src.batch(2, 32)
        assert b.x.shape[0] == 2 and b.x.shape[2:] == (32, 32) and b.x.shape[1] == b.desc.shape[0] >= 4
        assert b.y.shape == (2, 32, 32) and set(np.unique(b.y)) <= {0, 1, 2, 3}


def test_sim_source_overscan_crops_a_larger_scene() -> None:
    """``overscan``: a random crop of a larger (periodic) scene, so the tile itself is not periodic."""
    sizes: list[int] = []

    def sim(bands, size, rng):
        sizes.append(size)
        ramp = np.add.outer(np.arange(size), np.arange(size)).astype("float32")
        return np.stack([ramp] * len(bands)), (ramp % 4).astype("uint8")

    src = SimSource({"simulator": "standin", "sensors": ["sentinel2"], "overscan": 0.5}, np.random.default_rng(3))
    src.simulate = sim
    b = src.batch(3, 40)
    assert sizes == [64, 64, 64]  # 40 × 1.5 rounded up to the 8 px grid
    assert b.x.shape[2:] == (40, 40) and b.y.shape == (3, 40, 40)
    origins = {float(x[0, 0, 0]) for x in b.x}
    assert all(0 <= o <= 48 for o in origins) and len(origins) > 1  # crops at random offsets
    np.testing.assert_array_equal(b.y[0], (b.x[0, 0] % 4).astype("uint8"))  # labels cropped alike
    sizes.clear()
    plain = SimSource({"simulator": "standin", "sensors": ["sentinel2"]}, np.random.default_rng(3))
    plain.simulate = sim
    assert plain.batch(2, 40).x.shape[2:] == (40, 40) and sizes == [40, 40]


def test_pooled_sim_source_stream_is_independent_of_worker_count() -> None:
    """Batch k comes from seed (seed, k): one worker, two workers and a resumed pool agree."""
    cfg = {"simulator": "standin", "sensors": ["sentinel2", "landsat8"], "virtual_prob": 0.3}
    one = PooledSimSource(cfg, seed=7, workers=1, batch_size=2, size=24)
    two = PooledSimSource(cfg, seed=7, workers=2, batch_size=2, size=24, start=2)
    try:
        a = [one.batch(2, 24) for _ in range(4)]
        b = [two.batch(2, 24) for _ in range(2)]
        assert one.consumed == 4 and two.consumed == 4
        for x, y in zip(a[2:], b):
            assert np.array_equal(x.x, y.x) and np.array_equal(x.desc, y.desc) and np.array_equal(x.y, y.y)
        assert not np.array_equal(a[0].x[:, :1], a[1].x[:, :1])
        with pytest.raises(ValueError, match="one shape"):
            one.batch(2, 32)
    finally:
        one.close()
        two.close()


def test_reusing_source_serves_each_batch_several_times_rotated_or_flipped() -> None:
    """``data.reuse``: one draw from the inner source per ``times`` batches; reuses are dihedral
    transforms of it (labels moved with the pixels), descriptors unchanged."""
    from cloudmask.model.data import ReusingSource

    inner = SimSource({"simulator": "standin", "sensors": ["sentinel2"]}, np.random.default_rng(0))
    calls: list[np.ndarray] = []
    draw = inner.batch

    def counted(b: int, s: int):
        out = draw(b, s)
        calls.append(out.x)
        return out

    inner.batch = counted  # type: ignore[method-assign]
    src = ReusingSource(inner, 3, np.random.default_rng(1))
    got = [src.batch(2, 24) for _ in range(7)]
    assert len(calls) == 3  # batches 0, 3, 6 are fresh draws
    assert got[0].x is calls[0] and got[3].x is calls[1]
    views = []
    for k in range(4):
        r = np.rot90(calls[0], k, axes=(2, 3))
        views += [r, r[..., ::-1]]
    for b in got[1:3]:
        assert any(np.array_equal(b.x, v) for v in views)
        assert np.array_equal(b.desc, got[0].desc)
        i = next(i for i, v in enumerate(views) if np.array_equal(b.x, v))
        k, flip = divmod(i, 2)
        y = np.rot90(got[0].y, k, axes=(1, 2))
        assert np.array_equal(b.y, y[..., ::-1] if flip else y)
    many = ReusingSource(inner, 12, np.random.default_rng(2))
    first = many.batch(2, 24)
    assert any(not np.array_equal(many.batch(2, 24).x, first.x) for _ in range(11))  # transforms, not copies
    with pytest.raises(UsageError, match="at least 1"):
        ReusingSource(inner, 0, np.random.default_rng(1))


def test_train_with_reuse_runs_and_rejects_zero(tmp_path: Path) -> None:
    from cloudmask.model.train import train

    out = tmp_path / "r"
    res = train(load_config(None, [f"out={out}", *TINY_RUN, "train.steps=4", "data.reuse=2", "real.root=null"]))
    assert res["steps"] == 4
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    with pytest.raises(UsageError, match="'data.reuse' must be >= 1"):  # before any work
        load_config(None, [f"out={tmp_path / 'z'}", *TINY_RUN, "train.steps=1", "data.reuse=0"])


def test_real_tiles_manifest_and_crops(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    (tmp_path / "l8biome").mkdir()
    x = rng.uniform(0.05, 0.5, (4, 40, 40)).astype("float32")
    write_raster(tmp_path / "l8biome/train_a.image.tif", x, crs=None)
    write_raster(tmp_path / "l8biome/train_a.label.tif", (rng.random((40, 40)) * 4).astype("uint8"), crs=None)
    manifest = [{"image": "l8biome/train_a.image.tif", "label": "l8biome/train_a.label.tif", "sensor": "landsat8",
                 "bands": ["red", "green", "blue", "nir08"], "labelled": {"cloud": True, "thin": False, "shadow": True}}]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    tiles = load_real_tiles(tmp_path, ["l8biome/train_*"])
    assert len(tiles) == 1 and tiles[0].thin is False
    # the known l8biome band-order fix swaps red and blue
    assert [b.common_name for b in tiles[0].bands] == ["blue", "green", "red", "nir08"]
    assert load_real_tiles(tmp_path, ["l8biome/train_*"], fix_band_order=False)[0].bands[0].common_name == "red"
    src = RealSource(tiles, {"min_bands": 3, "subset_prob": 0.0}, np.random.default_rng(2))
    b = src.batch(3, 48)  # larger than the tile: padded with nodata / ignore
    assert b.x.shape == (3, 4, 48, 48) and np.isnan(b.x[:, :, 45:, :]).all() and (b.y[:, 45:, :] == 255).all()
    assert not b.thin_labelled.any() and b.shadow_labelled.all()
    with pytest.raises(UsageError, match="manifest not found"):
        load_real_tiles(tmp_path / "nope", ["*"])
    # a malformed manifest, or one whose band list does not fit its image: one line each
    good = manifest[0]
    for doc, message in [("{", "not readable JSON"), ('{"image": 1}', "expected a list"),
                         (json.dumps([{"label": "x"}]), "entry 0 lacks image, sensor, bands"),
                         (json.dumps([{**good, "bands": ["red", "green", "blue"]}]), "4 bands of 40×40 px, but 3 band names")]:
        (tmp_path / "manifest.json").write_text(doc)
        with pytest.raises(UsageError, match=message):
            load_real_tiles(tmp_path, ["l8biome/*"])


def test_validation_tiles_may_not_be_training_tiles_whatever_the_patterns(tmp_path: Path) -> None:
    from cloudmask.model.train import train

    rng = np.random.default_rng(0)
    (tmp_path / "l8biome").mkdir()
    write_raster(tmp_path / "l8biome/train_a.image.tif", rng.uniform(0.05, 0.5, (4, 32, 32)).astype("float32"), crs=None)
    write_raster(tmp_path / "l8biome/train_a.label.tif", (rng.random((32, 32)) * 4).astype("uint8"), crs=None)
    (tmp_path / "manifest.json").write_text(json.dumps([{"image": "l8biome/train_a.image.tif", "label": "l8biome/train_a.label.tif",
                                                          "sensor": "landsat8", "bands": ["red", "green", "blue", "nir08"]}]))
    cfg = load_config(None, [f"out={tmp_path / 'r'}", *TINY_RUN, "train.steps=1", f"real.root={tmp_path}", "real.val=[l8biome/*]"])
    with pytest.raises(UsageError, match="validation tiles also in training: l8biome/train_a.image.tif"):
        train(cfg)


@pytest.mark.parametrize(("key", "extra"), [("model", []), ("ema", ["train.ema=0.5"])])
def test_resume_continues_exactly(tmp_path: Path, key: str, extra: list[str]) -> None:
    """3 steps in one go == interrupted after 2 + resumed: same seed, same data, same weights (and
    the same moving average of them with train.ema)."""
    from safetensors.torch import load_file

    from cloudmask.model.train import train

    tiny = [*TINY_RUN, "train.steps=3", *extra]

    class Stop(Exception):
        pass

    def stop_after_two(done: int, total: int, info: dict) -> None:
        if done == 2:
            raise Stop

    train(load_config(None, [f"out={tmp_path / 'a'}", *tiny]))
    with pytest.raises(Stop):
        train(load_config(None, [f"out={tmp_path / 'b'}", *tiny]), progress=stop_after_two)
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["step"] == 2
    train(load_config(None, [f"out={tmp_path / 'b'}", *tiny]), resume=True)
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)[key]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)[key]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k
    assert load_file(str(tmp_path / "a" / "best.safetensors"))


def test_partly_cloudy_tile_without_shadow_counts_as_shadow_unlabelled() -> None:
    from cloudmask.model.data import shadow_label_missing

    y = np.zeros((50, 50), dtype="uint8")
    assert not shadow_label_missing(y)  # clear: no cloud, so no shadow to miss
    y[:20] = 1
    assert shadow_label_missing(y)  # 40 % cloud over clear ground and not one shadow pixel
    y[30:32, :5] = 3
    assert not shadow_label_missing(y)  # the annotator did mark shadow
    assert not shadow_label_missing(np.ones((50, 50), dtype="uint8"))  # overcast: nothing to cast onto
    assert not shadow_label_missing(np.full((5, 5), 255, dtype="uint8"))


def test_train_init_fine_tunes_from_saved_weights(tmp_path: Path) -> None:
    from cloudmask.model.predictor import load_model
    from cloudmask.model.train import train

    tiny = [*TINY_RUN, "train.steps=1"]
    train(load_config(None, [f"out={tmp_path / 'a'}", *tiny]))
    start = load_model(tmp_path / "a" / "best.safetensors").net.state_dict()
    train(load_config(None, [f"out={tmp_path / 'b'}", f"train.init={tmp_path / 'a' / 'best.safetensors'}",
                             "train.lr=1e-9", "seed=5", *tiny]))
    tuned = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["model"]
    learned = [k for k in start if "running_" not in k and "num_batches" not in k]  # BatchNorm stats move anyway
    for k in learned:  # a near-zero learning rate: still the initial weights
        assert torch.allclose(start[k].float(), tuned[k].float(), atol=1e-4), k
    with pytest.raises(UsageError, match="architecture differs"):
        train(load_config(None, [f"out={tmp_path / 'c'}", f"train.init={tmp_path / 'a' / 'best.safetensors'}",
                                 *tiny, "model.c8=12"]))


def test_ema_weights_are_what_is_validated_and_saved(tmp_path: Path) -> None:
    """train.ema: best.safetensors holds the moving average, not the latest weights. The average
    starts from the weights after the first step; with a decay of ~1 it stays there, while the
    trained weights move on."""
    from safetensors.torch import load_file

    from cloudmask.model.train import train

    run = [*TINY_RUN, "train.lr=0.05"]
    train(load_config(None, [f"out={tmp_path / 'one'}", *run, "train.steps=1"]))
    first = torch.load(tmp_path / "one" / "last.pt", weights_only=True)["model"]
    train(load_config(None, [f"out={tmp_path / 'e'}", *run, "train.steps=3", "train.ema=0.999999"]))
    saved = load_file(str(tmp_path / "e" / "best.safetensors"))  # as trained (loading folds BatchNorm)
    state = torch.load(tmp_path / "e" / "last.pt", weights_only=True)
    learned = [k for k in first if "running_" not in k and "num_batches" not in k]
    assert all(torch.allclose(first[k].float(), saved[k].float(), atol=1e-4) for k in learned)
    assert not all(torch.allclose(first[k].float(), state["model"][k].float(), atol=1e-4) for k in learned)
    assert int(state["ema"]["n_averaged"]) == 3



def test_evaluate_sets_with_matching_reports_both_shadow_scores_from_one_inference() -> None:
    from cloudmask.model.network import CloudNet, ModelConfig
    from cloudmask.model.train import evaluate_sets
    from cloudmask.shadows import match_shadows

    torch.manual_seed(0)
    net = CloudNet(ModelConfig(desc_dim=8, enc_width=4, lin4_width=4, c4=8, c8=8, dilations=(1,), head_width=4))
    rng = np.random.default_rng(0)
    d = get_sensor("sentinel2").descriptors()[:5]
    tiles = []
    for _ in range(2):
        x = rng.uniform(0.0, 0.6, (5, 48, 48)).astype("float32")
        y = rng.integers(0, 4, (48, 48)).astype("uint8")
        tiles.append((x, y, d, True))
    plain = evaluate_sets(net, {"s": tiles})["s"]
    both = evaluate_sets(net, {"s": tiles}, match=True)["s"]
    assert both["shadow_f1_network"] == plain["shadow_f1"] and "shadow_f1_network" not in plain
    cm = np.zeros((4, 4), np.int64)
    for x, y, dd, _ in tiles:
        prob = net.predict_proba(torch.from_numpy(x[None]), torch.from_numpy(dd))[0].numpy()
        cm += confusion(match_shadows(prob, prob.argmax(0).astype("uint8")), y)
    assert both["shadow_f1"] == scores(cm, shadow=True)["shadow_f1"]


def test_four_band_indices_pick_blue_green_red_nir_by_descriptor() -> None:
    from cloudmask.model.data import four_band_indices, sensor_bands

    s2 = sensor_bands("sentinel2")
    d = np.stack([b.descriptor() for b in s2])
    assert [s2[i].name for i in four_band_indices(d)] == ["B02", "B03", "B04", "B08"]
    perm = np.random.default_rng(0).permutation(len(s2))  # any order: the same bands
    assert sorted(s2[perm[i]].name for i in four_band_indices(d[perm])) == ["B02", "B03", "B04", "B08"]
    no_red = np.stack([b.descriptor() for b in s2 if b.name != "B04"])
    assert four_band_indices(no_red) is None  # B05 (0.705 µm) is too far from red
    thermal = d[[1, 2, 3]].copy()
    thermal = np.vstack([thermal, [0.82, 0.84, 0.86, 0.02, 1.0]])  # a "NIR" flagged thermal does not count
    assert four_band_indices(thermal) is None


def test_four_band_validation_sets_and_their_part_in_selection(tmp_path: Path) -> None:
    from cloudmask.model.train import _selection_score, train, with_four_band_sets

    rng = np.random.default_rng(1)
    s2 = get_sensor("sentinel2")
    d13 = s2.descriptors()
    x = rng.random((13, 8, 8)).astype("float32")
    y = np.zeros((8, 8), "uint8")
    sets = with_four_band_sets({"sim_sentinel2": [(x, y, d13, True)], "real_cloudsen12": [(x[[1, 2, 3, 7]], y, d13[[1, 2, 3, 7]], True)]})
    assert set(sets) == {"sim_sentinel2", "sim_sentinel2_4band", "real_cloudsen12"}  # 4-band sets stay as they are
    x4, _, d4, _ = sets["sim_sentinel2_4band"][0]
    np.testing.assert_array_equal(x4, x[[1, 2, 3, 7]])
    np.testing.assert_array_equal(d4, d13[[1, 2, 3, 7]])
    m = {k: {"cloud_f1": v, "shadow_f1": 0.0} for k, v in
         [("sim_a", 90.0), ("sim_a_4band", 60.0), ("real_l8biome", 90.0), ("real_l8biome_4band", 60.0), ("real_ukis", 0.0)]}
    assert _selection_score(m) == 75.0  # the 4-band sets count, the other held-out sets do not
    out = tmp_path / "v"
    train(load_config(None, [f"out={out}", *TINY_RUN, "train.steps=1", "val.four_bands=true"]))
    val = json.loads((out / "log.jsonl").read_text().splitlines()[-1])["val"]
    assert {"sim_sentinel2_4band", "sim_landsat8_4band"} <= set(val)


def test_distillation_loss_is_kl_over_valid_pixels_only() -> None:
    from cloudmask.model.train import distillation_loss

    teacher = torch.log_softmax(torch.randn(2, 4, 8, 8), dim=1)
    valid = torch.ones(2, 8, 8, dtype=torch.bool)
    assert float(distillation_loss(teacher.clone(), teacher, valid)) == pytest.approx(0.0, abs=1e-6)
    student = torch.randn(2, 4, 8, 8)
    kl = float(distillation_loss(student, teacher, valid))
    assert kl > 0.01
    # a teacher NaN at nodata (label 255) must not reach the loss
    teacher[0, :, 0, 0] = float("nan")
    valid[0, 0, 0] = False
    assert np.isfinite(float(distillation_loss(student, teacher, valid)))


def test_train_with_a_teacher_learns_its_probabilities(tmp_path: Path) -> None:
    """train.teacher + distill=1: the labels play no part, the network moves towards the teacher."""
    from cloudmask.model.predictor import load_model
    from cloudmask.model.train import train

    tiny = [*TINY_RUN, "real.root=null", "train.val_every=100", "train.ckpt_every=100"]
    train(load_config(None, [f"out={tmp_path / 't'}", *tiny, "train.steps=1", "seed=3"]))
    teacher = tmp_path / "t" / "best.safetensors"

    def gap(weights: Path) -> float:
        from cloudmask.model.data import SimSource

        src = SimSource(load_config(None, [f"out={tmp_path}", *tiny])["data"], np.random.default_rng(99))
        b = src.batch(4, 32)
        x, d = torch.from_numpy(b.x), torch.from_numpy(b.desc)
        with torch.no_grad():
            t = torch.log_softmax(load_model(teacher).net(x, d), dim=1)
            s = torch.log_softmax(load_model(weights).net(x, d), dim=1)
        return float((t.exp() * (t - s)).sum(dim=1).nanmean())

    train(load_config(None, [f"out={tmp_path / 's'}", *tiny, "train.steps=40", "train.lr=0.01", "seed=4",
                             f"train.teacher={teacher}", "train.distill=1.0", "train.val_every=40"]))
    train(load_config(None, [f"out={tmp_path / 'n'}", *tiny, "train.steps=40", "train.lr=0.01", "seed=4",
                             "train.val_every=40"]))
    assert gap(tmp_path / "s" / "best.safetensors") < 0.5 * gap(tmp_path / "n" / "best.safetensors")
    with pytest.raises(UsageError, match="distill' must be within"):  # when the config is read
        load_config(None, [f"out={tmp_path / 'x'}", *tiny, "train.steps=1", f"train.teacher={teacher}", "train.distill=2"])


def test_experiment_scores_sentinel2_per_window_binned_by_true_cloud_cover() -> None:
    """The seed experiment's second table: 128² windows binned by their truth's cloud cover."""
    from cloudmask.model.experiment import bin_windows, report

    truth = np.zeros((256, 256), np.uint8)
    truth[:128, :128] = 1  # window (0, 0): 100 % cloud
    truth[:128, 128:160] = 2  # window (0, 1): 25 % cloud (thin counts as cloud)
    pred = truth.copy()
    pred[:64, :128] = 0  # half the overcast window missed
    pred[128:, 128:] = 1  # a clear window called cloud
    rows = bin_windows([(truth, pred)])
    assert [(r["bin"], r["windows"]) for r in rows] == [("0–10%", 2), ("20–30%", 1), ("90–100%", 1)]
    clear_bin, quarter, overcast = rows
    assert clear_bin["f1"] == 0.0 and clear_bin["accuracy"] == 50.0  # one window right, one all wrong
    assert quarter["f1"] == 100.0 and quarter["accuracy"] == 100.0
    assert overcast["recall"] == 50.0 and overcast["precision"] == 100.0
    assert overcast["f1"] == round(100 * 2 / 3, 1)
    table = report({"a": {"test": {}, "windows": {"sim_sentinel2": rows}}})
    assert "| 90–100% | 1 | 66.7 (50.0) |" in table
    perfect = bin_windows([(truth, truth)])
    pooled = {"sim_sentinel2": {"cloud_acc": 90.0, "cloud_f1": 80.0, "cloud_precision": 70.0, "cloud_recall": 60.0}}
    seeds = [{"a": {"test": pooled, "windows": {"sim_sentinel2": r}}} for r in (rows, perfect)]
    table = report(seeds)  # two training seeds: means, and the spread of the pooled scores
    assert "| 90–100% | 1 | 83.3 (75.0) |" in table
    assert "| a | sim_sentinel2 | 2 | 90.0 (90.0–90.0) | 80.0 (80.0–80.0) |" in table


def test_experiment_tests_sentinel2_also_with_the_real_patches_four_bands() -> None:
    """The real CloudSEN12 patches have blue, green, red and NIR only: the same simulated scenes cut
    to those bands tell a sensor-transfer gap from a missing-band one."""
    from cloudmask.model.experiment import test_sets

    sets = test_sets(None, 1, 32)
    (x13, y13, d13, _), (x4, y4, d4, _) = sets["sim_sentinel2"][0], sets["sim_sentinel2_4band"][0]
    assert x13.shape[0] == 13 and x4.shape[0] == 4
    np.testing.assert_array_equal(y4, y13)
    np.testing.assert_allclose(d4[:, 1], [0.49, 0.56, 0.665, 0.842], atol=0.01)  # centres, µm
    np.testing.assert_array_equal(x4, x13[[1, 2, 3, 7]])
    np.testing.assert_array_equal(d4, d13[[1, 2, 3, 7]])


def test_the_documented_config_path_works_outside_a_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`cloudmask train --config configs/train-default.yaml` (README, model card) failed after a
    pip install: configs/ was in neither the wheel nor the sdist."""
    from cloudmask.model.train import bundled_configs_dir

    repo = Path(__file__).resolve().parent.parent
    shipped = bundled_configs_dir()
    assert shipped is not None and (shipped / "train-default.yaml").is_file()
    monkeypatch.chdir(tmp_path)  # no configs/ here
    want = load_config(shipped / "train-default.yaml")
    assert want["train"]["max_minutes"] == 58  # the production config, not the defaults
    for given in ("configs/train-default.yaml", "train-default.yaml", "train-default"):
        assert load_config(given) == want
    with pytest.raises(UsageError, match=r"config file not found: nope.yaml \(shipped configs: .*train-default"):
        load_config("nope.yaml")
    with pytest.raises(UsageError, match="config file not found"):
        load_config("elsewhere/train-default.yaml")  # a folder of the user's own is not redirected
    # the wheel and the sdist carry configs/ (as they carry sensors/)
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    hatch = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]
    assert hatch["wheel"]["force-include"]["configs"] == "cloudmask/configs"
    assert "configs" in hatch["sdist"]["include"]


def test_experiment_script_says_bad_requests_in_one_line(tmp_path: Path, capsys) -> None:
    """Unknown variants, a missing run folder under --with, a bad real root: tracebacks (KeyError,
    FileNotFoundError, a UsageError's) with exit 1; --report on nothing printed an empty table."""
    from cloudmask.model.experiment import main

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "results.json").write_text(json.dumps({"landsat-only": {"test": {}}}))
    for argv, words in (
        (["--out", str(tmp_path / "x"), "--variants", "foo"], "unknown 'foo'"),
        (["--out", str(tmp_path / "x"), "--steps", "0"], "at least 1"),
        (["--out", str(tmp_path / "none"), "--report"], "no results.json"),
        (["--out", str(tmp_path / "a"), "--with", str(tmp_path / "missing"), "--report"], "missing: no results.json"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and words in err and err.count("\n") == 1, err
    assert not (tmp_path / "none").exists()  # a report makes no folder
