"""Mask quality metrics from confusion counts (pure numpy).

Everything is computed from integer confusion matrices so that totals over many scenes are *pooled
pixel counts* (summing matrices), never averages of ratios, and so that undefined ratios are visible:
a ratio whose denominator is zero (no cloud in the truth and none predicted, all nodata) is ``None``,
shown as "n/a", never a NaN, a crash or a silent 0.

Class codes are cloudmask's: 0 clear, 1 thick cloud, 2 thin cloud, 3 cloud shadow, 255 nodata.
"Cloud" in the binary scores is thick + thin, as in the original study's table. A reference that does
not label some class (no thin/thick split, no shadow) is scored through :class:`Labelled`: the
unlabelled distinction is merged away in *both* truth and prediction before counting.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cloudmask.errors import EvaluateError

CLEAR, THICK, THIN, SHADOW, NODATA = 0, 1, 2, 3, 255
N_CLASSES = 4
CLASS_NAMES = ("clear", "thick", "thin", "shadow")
CLOUD_CODES = (THICK, THIN)

#: Cloud-cover bins of the per-window analysis, in percent: [0, 10), [10, 20), ..., [90, 100].
BIN_EDGES = tuple(range(0, 101, 10))
METRICS = ("accuracy", "precision", "recall", "f1", "iou")


@dataclass(frozen=True)
class Labelled:
    """Which distinctions the reference labels. Cloud vs not-cloud is always labelled."""

    thin: bool = True  # thick and thin cloud are told apart
    shadow: bool = True  # cloud shadow is labelled (else shadow pixels hide among "clear")

    @classmethod
    def parse(cls, text: str | Iterable[str]) -> Labelled:
        """``"cloud,thin,shadow"`` → Labelled(True, True); ``"cloud"`` → no thin split, no shadow."""
        names = [n.strip().lower() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
        known = {"cloud", "thick", "thin", "shadow", "clear"}
        bad = [n for n in names if n not in known]
        if bad:
            from cloudmask.errors import UsageError

            raise UsageError(f"unknown class name(s) {', '.join(bad)} in --classes; use cloud, thin, shadow")
        return cls(thin="thin" in names, shadow="shadow" in names)

    @property
    def names(self) -> list[str]:
        return ["cloud"] + (["thin"] if self.thin else []) + (["shadow"] if self.shadow else [])

    def scored(self) -> list[tuple[int, str]]:
        """(code, name) of the classes that get per-class scores."""
        out = [(CLEAR, "clear"), (THICK, "thick" if self.thin else "cloud")]
        if self.thin:
            out.append((THIN, "thin"))
        if self.shadow:
            out.append((SHADOW, "shadow"))
        return out


ALL = Labelled()


def _reduce(arr: np.ndarray, labelled: Labelled) -> np.ndarray:
    """Merge distinctions the reference does not make; anything outside 0–3 becomes nodata."""
    arr = np.asarray(arr)
    ok = arr < N_CLASSES if arr.dtype == np.uint8 else (arr >= 0) & (arr < N_CLASSES)
    out = np.where(ok, arr, NODATA).astype(np.uint8)
    if not labelled.thin:
        out[out == THIN] = THICK
    if not labelled.shadow:
        out[out == SHADOW] = CLEAR
    return out


def confusion(truth: np.ndarray, pred: np.ndarray, labelled: Labelled = ALL) -> np.ndarray:
    """4×4 counts ``cm[true, predicted]`` over pixels valid in both; nodata (255, anything >3) is excluded."""
    truth, pred = np.asarray(truth), np.asarray(pred)
    if truth.shape != pred.shape:
        raise EvaluateError(f"truth and prediction differ in shape: {truth.shape} vs {pred.shape}")
    for what, arr in (("truth", truth), ("prediction", pred)):
        # probabilities or reflectance given as classes were truncated to codes (1.7 → thick cloud)
        if arr.dtype.kind == "f" and arr.size and not np.all(np.isnan(arr) | (arr == np.round(arr))):
            raise EvaluateError(f"the {what} holds fractional values: give class codes (0 clear, 1 thick, 2 thin, "
                                "3 shadow), e.g. classify(probabilities) or probabilities.argmax(0)")
    t, p = _reduce(truth, labelled), _reduce(pred, labelled)
    ok = (t < N_CLASSES) & (p < N_CLASSES)
    codes = t[ok].astype(np.int64) * N_CLASSES + p[ok]
    return np.bincount(codes, minlength=N_CLASSES * N_CLASSES).reshape(N_CLASSES, N_CLASSES)


def _ratio(num: float, den: float) -> float | None:
    return None if den == 0 else float(num) / float(den)


def scores(tp: int, fp: int, fn: int, tn: int) -> dict[str, Any]:
    """Binary scores with ``None`` where the denominator is zero.

    F1 and IoU are defined (0) as long as either side has a positive pixel; they are ``None`` only
    when neither the truth nor the prediction has any, where "perfect" and "useless" are both wrong.
    """
    tp, fp, fn, tn = int(tp), int(fp), int(fn), int(tn)
    return {
        "accuracy": _ratio(tp + tn, tp + fp + fn + tn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "iou": _ratio(tp, tp + fp + fn),
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
    }


def one_vs_rest(cm: np.ndarray, codes: Sequence[int]) -> dict[str, Any]:
    """Scores for "any of ``codes``" against everything else."""
    idx = np.zeros(N_CLASSES, bool)
    idx[list(codes)] = True
    tp = cm[np.ix_(idx, idx)].sum()
    fn = cm[np.ix_(idx, ~idx)].sum()
    fp = cm[np.ix_(~idx, idx)].sum()
    tn = cm[np.ix_(~idx, ~idx)].sum()
    return scores(tp, fp, fn, tn)


def cloud_scores(cm: np.ndarray) -> dict[str, Any]:
    """Cloud (thick + thin) vs not cloud (clear + shadow)."""
    return one_vs_rest(cm, CLOUD_CODES)


def summarize(cm: np.ndarray, labelled: Labelled = ALL) -> dict[str, Any]:
    """Everything a report needs from one confusion matrix."""
    cm = np.asarray(cm, dtype=np.int64)
    scored = labelled.scored()
    codes = [c for c, _ in scored]
    sub = cm[np.ix_(codes, codes)]
    total = int(sub.sum())
    truth_cloud = int(cm[list(CLOUD_CODES)].sum())
    return {
        "pixels": total,
        "truth_cloud_fraction": _ratio(truth_cloud, total),
        "cloud": cloud_scores(cm),
        "overall_accuracy": _ratio(int(np.trace(sub)), total),
        "classes": {name: one_vs_rest(cm, [code]) for code, name in scored},
        "class_names": [name for _, name in scored],
        "confusion": sub.tolist(),
    }


# --------------------------------------------------------------------------- per-window analysis


@dataclass
class Windows:
    """Per-window confusion matrices of one or more scenes, with each window's true cloud cover."""

    size: int
    cms: np.ndarray  # (n, 4, 4) int64
    cover: np.ndarray  # (n,) float, percent of truth-valid pixels that are cloud
    scene: np.ndarray  # (n,) int, index of the scene each window came from

    @classmethod
    def empty(cls, size: int) -> Windows:
        return cls(size, np.zeros((0, N_CLASSES, N_CLASSES), np.int64), np.zeros(0), np.zeros(0, np.int64))

    def extend(self, other: Windows, scene_index: int) -> Windows:
        return Windows(
            self.size,
            np.concatenate([self.cms, other.cms]),
            np.concatenate([self.cover, other.cover]),
            np.concatenate([self.scene, np.full(len(other.cover), scene_index, np.int64)]),
        )

    def total(self) -> np.ndarray:
        return self.cms.sum(axis=0) if len(self.cms) else np.zeros((N_CLASSES, N_CLASSES), np.int64)


def window_confusions(
    truth: np.ndarray, pred: np.ndarray, size: int = 128, labelled: Labelled = ALL, min_valid: float = 0.5
) -> tuple[Windows, np.ndarray]:
    """Confusion matrices of ``size``×``size`` windows, and the whole-image matrix.

    A window counts when at least ``min_valid`` of a full window's area is valid truth, so thin slivers
    at the image edge and mostly-nodata windows do not fill the extreme cover bins with noise. Cover is
    taken from the truth alone, so every model compared on the same truth gets the same windows in the
    same order (paired differences rely on that). Works strip by strip to keep memory at one strip.
    """
    truth, pred = np.asarray(truth), np.asarray(pred)
    if truth.shape != pred.shape:
        raise EvaluateError(f"truth and prediction differ in shape: {truth.shape} vs {pred.shape}")
    if size < 1:
        raise ValueError("window size must be positive")
    h, w = truth.shape
    nx = -(-w // size)
    wx = np.arange(w) // size
    k = N_CLASSES * N_CLASSES
    cms, covers = [], []
    whole = np.zeros(k, np.int64)
    for y0 in range(0, h, size):
        t = _reduce(truth[y0 : y0 + size], labelled)
        p = _reduce(pred[y0 : y0 + size], labelled)
        col = np.broadcast_to(wx, t.shape)
        ok = (t < N_CLASSES) & (p < N_CLASSES)
        codes = col[ok].astype(np.int64) * k + t[ok].astype(np.int64) * N_CLASSES + p[ok]
        strip = np.bincount(codes, minlength=nx * k).reshape(nx, N_CLASSES, N_CLASSES)
        whole += strip.sum(axis=0).ravel()
        tvalid = t < N_CLASSES
        n_valid = np.bincount(col[tvalid], minlength=nx)
        n_cloud = np.bincount(col[tvalid & ((t == THICK) | (t == THIN))], minlength=nx)
        keep = n_valid >= min_valid * size * size
        keep &= n_valid > 0
        cms.append(strip[keep])
        covers.append(100.0 * n_cloud[keep] / np.maximum(n_valid[keep], 1))
    cm_all = np.concatenate(cms) if cms else np.zeros((0, N_CLASSES, N_CLASSES), np.int64)
    cover = np.concatenate(covers) if covers else np.zeros(0)
    return Windows(size, cm_all, cover, np.zeros(len(cover), np.int64)), whole.reshape(N_CLASSES, N_CLASSES)


def bin_of(cover: np.ndarray) -> np.ndarray:
    """Bin index 0–9 of cover percentages; 100 % falls in the last bin (90–100 %)."""
    return np.clip(np.floor(np.asarray(cover) / 10.0).astype(np.int64), 0, len(BIN_EDGES) - 2)


def bin_label(i: int) -> str:
    return f"{BIN_EDGES[i]}–{BIN_EDGES[i + 1]}%"


def _window_metric(cms: np.ndarray, metric: str) -> np.ndarray:
    """Cloud ``metric`` of every window as floats, NaN where undefined (internal use only)."""
    tp = cms[:, 1:3, 1:3].sum(axis=(1, 2)).astype(float)
    fn = cms[:, 1:3][:, :, [0, 3]].sum(axis=(1, 2)).astype(float)
    fp = cms[:, [0, 3]][:, :, 1:3].sum(axis=(1, 2)).astype(float)
    tn = cms[:, [0, 3]][:, :, [0, 3]].sum(axis=(1, 2)).astype(float)
    num, den = {
        "accuracy": (tp + tn, tp + tn + fp + fn),
        "precision": (tp, tp + fp),
        "recall": (tp, tp + fn),
        "f1": (2 * tp, 2 * tp + fp + fn),
        "iou": (tp, tp + fp + fn),
    }[metric]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _clean(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def binned(windows: Windows) -> list[dict[str, Any]]:
    """Per cover bin: window count, pooled cloud scores, and the mean of per-window scores."""
    idx = bin_of(windows.cover)
    out = []
    for i in range(len(BIN_EDGES) - 1):
        sel = idx == i
        cm = windows.cms[sel].sum(axis=0) if sel.any() else np.zeros((N_CLASSES, N_CLASSES), np.int64)
        row: dict[str, Any] = {"bin": bin_label(i), "lo": BIN_EDGES[i], "hi": BIN_EDGES[i + 1], "windows": int(sel.sum())}
        pooled = cloud_scores(cm)
        row.update({m: pooled[m] for m in METRICS})
        for m in ("accuracy", "f1"):
            vals = _window_metric(windows.cms[sel], m)
            row[f"mean_window_{m}"] = _clean(float(np.nanmean(vals))) if np.isfinite(vals).any() else None
        out.append(row)
    return out


def compare_windows(ref: Windows, other: Windows) -> list[dict[str, Any]]:
    """``other`` minus ``ref`` per cover bin: pooled-score differences and paired per-window differences.

    Both must come from the same truth (same windows in the same order); the paired mean and its
    standard error say whether a per-bin difference is larger than window-to-window noise.
    """
    if len(ref.cover) != len(other.cover) or not np.array_equal(ref.cover, other.cover):
        raise ValueError("windows differ; compare models evaluated on the same truth scenes")
    a, b = binned(ref), binned(other)
    idx = bin_of(ref.cover)
    out = []
    for i, (ra, rb) in enumerate(zip(a, b)):
        row: dict[str, Any] = {"bin": ra["bin"], "lo": ra["lo"], "hi": ra["hi"], "windows": ra["windows"]}
        for m in METRICS:
            row[f"d_{m}"] = None if ra[m] is None or rb[m] is None else rb[m] - ra[m]
        sel = idx == i
        for m in ("accuracy", "f1"):
            d = _window_metric(other.cms[sel], m) - _window_metric(ref.cms[sel], m)
            d = d[np.isfinite(d)]
            row[f"paired_mean_d_{m}"] = float(d.mean()) if d.size else None
            row[f"paired_se_d_{m}"] = float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else None
            row[f"paired_n_{m}"] = int(d.size)
        out.append(row)
    return out


def difference(ref: dict[str, Any], other: dict[str, Any]) -> dict[str, float | None]:
    """``other`` minus ``ref`` for the binary cloud scores of two :func:`summarize` results."""
    return {m: None if ref["cloud"][m] is None or other["cloud"][m] is None else other["cloud"][m] - ref["cloud"][m] for m in METRICS}


def spread(values: Iterable[float | None]) -> dict[str, Any]:
    """Mean, std, min, median, max of the defined values (``n`` says how many were defined)."""
    v = np.array([x for x in values if x is not None], dtype=float)
    v = v[np.isfinite(v)]  # a NaN is undefined as None is: the summary never holds a NaN
    if v.size == 0:
        return {"n": 0, "mean": None, "std": None, "min": None, "median": None, "max": None}
    return {
        "n": int(v.size),
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if v.size > 1 else None,
        "min": float(v.min()),
        "median": float(np.median(v)),
        "max": float(v.max()),
    }


def fmt(x: float | None, digits: int = 3) -> str:
    """A score for humans: ``n/a`` when undefined."""
    return "n/a" if x is None else f"{x:.{digits}f}"
