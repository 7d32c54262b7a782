"""Metrics against confusion counts worked out by hand on tiny arrays, including the undefined cases."""

from __future__ import annotations

import numpy as np
import pytest

from cloudmask import metrics
from cloudmask.metrics import Labelled

T = np.array([[0, 0, 1, 1], [2, 3, 255, 0]], np.uint8)
P = np.array([[0, 1, 1, 2], [0, 3, 1, 255]], np.uint8)


def test_confusion_counts_by_hand() -> None:
    cm = metrics.confusion(T, P)
    # valid pixels: (0,0) (0,1) (1,1) (1,2) (2,0) (3,3); the 255s on either side are dropped
    expected = np.zeros((4, 4), int)
    expected[0, 0] = 1
    expected[0, 1] = 1
    expected[1, 1] = 1
    expected[1, 2] = 1
    expected[2, 0] = 1
    expected[3, 3] = 1
    np.testing.assert_array_equal(cm, expected)


def test_cloud_scores_by_hand() -> None:
    s = metrics.summarize(metrics.confusion(T, P))
    c = s["cloud"]
    # cloud = thick+thin: truth cloud at (1,1) (1,2) (2,0) -> tp 2 (1->1, 1->2), fn 1 (2->0); fp 1 (0->1); tn 2
    assert (c["tp"], c["fp"], c["fn"], c["tn"]) == (2, 1, 1, 2)
    assert c["accuracy"] == pytest.approx(4 / 6)
    assert c["precision"] == pytest.approx(2 / 3)
    assert c["recall"] == pytest.approx(2 / 3)
    assert c["f1"] == pytest.approx(4 / 6)
    assert c["iou"] == pytest.approx(2 / 4)
    assert s["pixels"] == 6
    assert s["overall_accuracy"] == pytest.approx(3 / 6)
    assert s["classes"]["thin"]["recall"] == 0.0
    assert s["classes"]["thin"]["precision"] == 0.0
    assert s["classes"]["shadow"]["f1"] == 1.0
    assert s["truth_cloud_fraction"] == pytest.approx(3 / 6)


def test_no_cloud_in_truth() -> None:
    t = np.zeros((3, 3), np.uint8)
    p = t.copy()
    p[0, 0] = 1
    c = metrics.summarize(metrics.confusion(t, p))["cloud"]
    assert c["recall"] is None  # nothing to find
    assert c["precision"] == 0.0
    assert c["f1"] == 0.0 and c["iou"] == 0.0  # a false alarm is a real error, not "undefined"
    assert c["accuracy"] == pytest.approx(8 / 9)


def test_no_cloud_anywhere_is_undefined_not_perfect() -> None:
    t = np.zeros((3, 3), np.uint8)
    c = metrics.summarize(metrics.confusion(t, t))["cloud"]
    assert c["accuracy"] == 1.0
    assert c["precision"] is None and c["recall"] is None and c["f1"] is None and c["iou"] is None
    assert metrics.fmt(c["f1"]) == "n/a"


def test_no_cloud_predicted() -> None:
    t = np.ones((2, 2), np.uint8)
    p = np.zeros((2, 2), np.uint8)
    c = metrics.summarize(metrics.confusion(t, p))["cloud"]
    assert c["precision"] is None
    assert c["recall"] == 0.0 and c["f1"] == 0.0 and c["accuracy"] == 0.0


def test_all_nodata() -> None:
    t = np.full((4, 4), 255, np.uint8)
    p = np.zeros((4, 4), np.uint8)
    s = metrics.summarize(metrics.confusion(t, p))
    assert s["pixels"] == 0
    assert s["overall_accuracy"] is None and s["truth_cloud_fraction"] is None
    assert all(s["cloud"][m] is None for m in metrics.METRICS)
    assert all(v[m] is None for v in s["classes"].values() for m in metrics.METRICS)


def test_unlabelled_thin_and_shadow_are_merged() -> None:
    t = np.array([1, 1, 0, 0], np.uint8)
    p = np.array([1, 2, 3, 0], np.uint8)  # thin counts as cloud, shadow as clear when unlabelled
    lab = Labelled(thin=False, shadow=False)
    s = metrics.summarize(metrics.confusion(t, p, lab), lab)
    assert s["class_names"] == ["clear", "cloud"]
    assert s["overall_accuracy"] == 1.0
    assert s["cloud"]["f1"] == 1.0
    assert "shadow" not in s["classes"] and "thin" not in s["classes"]
    # with all classes labelled the same arrays are two errors
    full = metrics.summarize(metrics.confusion(t, p))
    assert full["overall_accuracy"] == 0.5


def test_labelled_parse() -> None:
    assert Labelled.parse("cloud,thin,shadow") == Labelled(True, True)
    assert Labelled.parse("cloud, shadow") == Labelled(False, True)
    from cloudmask.errors import UsageError

    with pytest.raises(UsageError, match="snow"):
        Labelled.parse("cloud,snow")


def test_out_of_range_values_are_nodata() -> None:
    t = np.array([0, 7, -1, 1], np.int16)
    p = np.array([0, 0, 0, 1], np.int16)
    assert metrics.confusion(t, p).sum() == 2


def test_windows_and_bins() -> None:
    # 4x8 image, 4x4 windows: left window 25 % cloud (bin 20–30 %), right window 100 % cloud (bin 90–100 %)
    t = np.zeros((4, 8), np.uint8)
    t[0, :4] = 1
    t[:, 4:] = 2
    p = t.copy()
    p[0, 0] = 0  # one miss in the left window
    w, whole = metrics.window_confusions(t, p, size=4)
    np.testing.assert_allclose(w.cover, [25.0, 100.0])
    np.testing.assert_array_equal(whole, metrics.confusion(t, p))
    bins = metrics.binned(w)
    assert [b["windows"] for b in bins] == [0, 0, 1, 0, 0, 0, 0, 0, 0, 1]
    assert bins[2]["bin"] == "20–30%"
    assert bins[2]["accuracy"] == pytest.approx(15 / 16)
    assert bins[2]["recall"] == pytest.approx(3 / 4)
    assert bins[9]["f1"] == 1.0
    assert bins[0]["accuracy"] is None and bins[0]["mean_window_f1"] is None


def test_windows_skip_mostly_nodata_and_edge_slivers() -> None:
    t = np.zeros((4, 10), np.uint8)  # windows: [0:4], [4:8], [8:10] (sliver, half area -> kept at 0.5)
    t[:, 4:8] = 255
    w, _ = metrics.window_confusions(t, t, size=4, min_valid=0.5)
    assert len(w.cover) == 2
    w, _ = metrics.window_confusions(t, t, size=4, min_valid=0.9)
    assert len(w.cover) == 1


def test_compare_windows_paired_difference() -> None:
    t = np.zeros((4, 8), np.uint8)
    t[:, 4:] = 1
    a = t.copy()
    b = t.copy()
    b[:2, 4:] = 0  # model b misses half the cloud in the right window
    wa, _ = metrics.window_confusions(t, a, 4)
    wb, _ = metrics.window_confusions(t, b, 4)
    rows = metrics.compare_windows(wa, wb)
    assert rows[9]["d_accuracy"] == pytest.approx(-0.5)
    assert rows[9]["paired_mean_d_accuracy"] == pytest.approx(-0.5)
    assert rows[9]["paired_se_d_accuracy"] is None  # one window: no spread
    assert rows[0]["d_accuracy"] == 0.0
    assert rows[0]["d_f1"] is None  # no cloud in the clear window for either model
    with pytest.raises(ValueError):
        metrics.compare_windows(wa, metrics.Windows.empty(4))


def test_spread() -> None:
    s = metrics.spread([0.5, None, 1.0])
    assert s["n"] == 2 and s["mean"] == 0.75 and s["min"] == 0.5 and s["max"] == 1.0
    assert metrics.spread([None])["mean"] is None
    assert metrics.spread([0.3])["std"] is None


def test_pooled_is_not_mean_of_ratios() -> None:
    big_t = np.ones((10, 10), np.uint8)
    big_p = big_t.copy()
    small_t = np.ones((1, 2), np.uint8)
    small_p = np.zeros((1, 2), np.uint8)
    pooled = metrics.confusion(big_t, big_p) + metrics.confusion(small_t, small_p)
    assert metrics.cloud_scores(pooled)["recall"] == pytest.approx(100 / 102)


def test_confusion_of_different_shapes_is_an_evaluate_error() -> None:
    from cloudmask.errors import EvaluateError

    with pytest.raises(EvaluateError, match="differ in shape"):
        metrics.confusion(np.zeros((4, 4), "uint8"), np.zeros((3, 4), "uint8"))
    assert metrics.confusion([[0, 1]], [[0, 1]]).sum() == 2  # lists work too


def test_fractional_classes_are_refused_and_nan_is_undefined_in_a_spread() -> None:
    from cloudmask.errors import EvaluateError

    with pytest.raises(EvaluateError, match="fractional values"):
        metrics.confusion(np.array([[1.7, 0.0]]), np.array([[1.0, 0.0]]))  # probabilities given as classes
    assert metrics.confusion(np.array([[1.0, np.nan]]), np.array([[1.0, 0.0]])).sum() == 1  # whole floats: codes
    s = metrics.spread([float("nan"), 1.0, 2.0, None])
    assert s["n"] == 2 and s["mean"] == 1.5
