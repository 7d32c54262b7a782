"""PNG figures for ``cloudmask evaluate --plots``: scores by cloud cover, differences, confusion, quick-looks.

Matplotlib with the Agg backend (no display needed on servers). Each figure is written to a temporary
file in the destination folder and renamed, so a half-written PNG never sits under the final name.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from cloudmask import metrics  # noqa: E402
from cloudmask.errors import OutputError  # noqa: E402
from cloudmask.files import safe_name, usual_permissions  # noqa: E402
from cloudmask.evaluate import Evaluation, Preview, read_rgb  # noqa: E402

#: RGBA per class code for overlays: thick white-yellow, thin cyan, shadow purple; clear transparent.
CLASS_COLOURS = {
    metrics.THICK: (1.0, 0.85, 0.1, 0.6),
    metrics.THIN: (0.1, 0.9, 1.0, 0.55),
    metrics.SHADOW: (0.55, 0.15, 0.75, 0.6),
}
CLASS_LABELS = {metrics.THICK: "thick cloud", metrics.THIN: "thin cloud", metrics.SHADOW: "cloud shadow"}
_CLASS_MAP = ListedColormap(["#3b7d3b", "#f2f2f2", "#7fd7ee", "#5b2a86"])  # for plots without an image


def _safe(name: str) -> str:
    return safe_name(name, "model")


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
        os.close(fd)
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        usual_permissions(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write figure ({exc.strerror or exc})") from None
    finally:
        plt.close(fig)
    return path


def _bins_x(bins: list[dict[str, Any]]) -> tuple[np.ndarray, list[str]]:
    return np.arange(len(bins)), [f"{b['lo']}–{b['hi']}" for b in bins]


def _vals(rows: list[dict[str, Any]], key: str) -> np.ndarray:
    return np.array([np.nan if r[key] is None else r[key] for r in rows], float)


def metric_vs_cover(report: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Accuracy and F1 (pooled per bin) against the windows' true cloud cover, one line per model."""
    models = report["models"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    x, labels = _bins_x(models[0]["windows"]["bins"])
    counts = np.array([b["windows"] for b in models[0]["windows"]["bins"]])
    for ax, metric, title in zip(axes, ("accuracy", "f1"), ("Cloud accuracy", "Cloud F1")):
        twin = ax.twinx()
        twin.bar(x, counts, color="0.88", width=0.8, zorder=0)
        twin.set_ylabel("windows per bin", color="0.5")
        twin.tick_params(axis="y", colors="0.5")
        ax.set_zorder(twin.get_zorder() + 1)
        ax.patch.set_visible(False)
        for m in models:
            ax.plot(x, _vals(m["windows"]["bins"], metric), marker="o", label=m["name"])
        ax.set_title(title)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xticks(x, labels, rotation=45)
        ax.set_xlabel("true cloud cover of the window (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower left", fontsize=8)
    fig.suptitle(f"Scores by cloud cover of {report['window']}×{report['window']} px windows (n/a bins left out)")
    fig.tight_layout()
    return _save(fig, path)


def difference_plot(comparison: dict[str, Any], window: int, path: str | os.PathLike[str]) -> Path:
    """Per-bin ``model - reference`` for accuracy and F1, with the paired per-window mean ± 1 SE."""
    rows = comparison["bins"]
    x, labels = _bins_x(rows)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    for ax, metric in zip(axes, ("accuracy", "f1")):
        d = _vals(rows, f"d_{metric}")
        colours = ["#2a9d4b" if v >= 0 else "#c0392b" for v in np.nan_to_num(d)]
        ax.bar(x, np.nan_to_num(d), color=colours, width=0.7, label="pooled difference")
        pm, se = _vals(rows, f"paired_mean_d_{metric}"), _vals(rows, f"paired_se_d_{metric}")
        ax.errorbar(x, pm, yerr=np.nan_to_num(se), fmt="o", color="k", ms=4, capsize=3, label="mean per-window diff ± SE")
        for xi, v in zip(x, d):
            if np.isnan(v):
                ax.text(xi, 0.5, "n/a", ha="center", va="center", fontsize=7, color="0.4", transform=ax.get_xaxis_transform())
        ax.axhline(0, color="k", lw=0.8)
        lo, hi = ax.get_ylim()
        ax.set_ylim(min(lo, -0.01) * 1.15, max(hi, 0.01) * 1.15)
        ax.set_xticks(x, labels, rotation=45)
        ax.set_xlabel("true cloud cover of the window (%)")
        ax.set_ylabel(f"Δ cloud {metric}")
        ax.grid(alpha=0.3, axis="y")
        ax.set_title(f"{comparison['model']} − {comparison['reference']}: {metric}")
    axes[0].legend(fontsize=8, loc="best")
    fig.suptitle(f"Difference per cloud-cover bin ({window}×{window} px windows; above 0 = {comparison['model']} better)")
    fig.tight_layout()
    return _save(fig, path)


def confusion_plot(result: dict[str, Any], name: str, path: str | os.PathLike[str]) -> Path:
    """Row-normalised confusion matrix (recall per true class) annotated with pixel counts."""
    cm = np.array(result["confusion"], float)
    names = result["class_names"]
    rows = cm.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(rows > 0, cm / np.where(rows > 0, rows, 1), np.nan)
    n = len(names)
    fig, ax = plt.subplots(figsize=(1.3 * n + 2.5, 1.1 * n + 1.8))
    im = ax.imshow(np.nan_to_num(norm), cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            frac = "n/a" if np.isnan(norm[i, j]) else f"{norm[i, j]:.1%}"
            ax.text(j, i, f"{frac}\n{int(cm[i, j]):,} px", ha="center", va="center", fontsize=8,
                    color="white" if np.nan_to_num(norm[i, j]) > 0.6 else "black")
    ax.set_xticks(range(n), names)
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("truth")
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class")
    overall = metrics.fmt(result["overall_accuracy"])
    ax.set_title(f"{name}: confusion (pooled, {result['pixels']:,} px)\noverall accuracy {overall}")
    fig.tight_layout()
    return _save(fig, path)


def _overlay(mask: np.ndarray) -> np.ndarray:
    rgba = np.zeros((*mask.shape, 4), "float32")
    for code, colour in CLASS_COLOURS.items():
        rgba[mask == code] = colour
    rgba[mask == metrics.NODATA] = (0.5, 0.5, 0.5, 0.8)
    return rgba


def quicklook(preview: Preview, path: str | os.PathLike[str], rgb_bands: list[int] | None = None) -> Path:
    """Image, truth and each prediction side by side (classes over the RGB when an image is given)."""
    rgb = read_rgb(preview.image, rgb_bands, preview.step) if preview.image is not None else None
    if rgb is not None and rgb.shape[:2] != preview.truth.shape:
        # image on another grid: fall back to plain class maps rather than mislead, and say so
        warnings.warn(f"{preview.scene}: --image {Path(str(preview.image)).name} is not on the truth's grid "
                      f"({rgb.shape[0]}×{rgb.shape[1]} against {preview.truth.shape[0]}×{preview.truth.shape[1]} "
                      "preview px); its quick-look shows the classes alone", stacklevel=2)
        rgb = None
    panels = [("truth", preview.truth)] + list(preview.preds.items())
    n = len(panels) + (rgb is not None)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 4.0), squeeze=False)
    axes = axes[0]
    k = 0
    if rgb is not None:
        axes[0].imshow(rgb)
        axes[0].set_title("image (RGB)")
        k = 1
    for ax, (title, mask) in zip(axes[k:], panels):
        if rgb is not None:
            ax.imshow(rgb)
            ax.imshow(_overlay(mask), interpolation="nearest")
        else:
            shown = np.ma.masked_equal(mask, metrics.NODATA)
            ax.set_facecolor((0.5, 0.5, 0.5))  # masked nodata shows the axes: grey as in the legend, not white
            ax.imshow(shown, cmap=_CLASS_MAP, vmin=-0.5, vmax=3.5, interpolation="nearest")
        ax.set_title(title)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if rgb is not None:
        handles = [Patch(color=CLASS_COLOURS[c], label=CLASS_LABELS[c]) for c in CLASS_COLOURS]
    else:
        handles = [Patch(color=_CLASS_MAP(i), label=n) for i, n in enumerate(("clear", "thick cloud", "thin cloud", "cloud shadow"))]
    handles.append(Patch(color=(0.5, 0.5, 0.5), label="nodata"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(f"{preview.scene}" + (f" (every {preview.step}th pixel)" if preview.step > 1 else ""), y=1.0)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    return _save(fig, path)


def write_all(ev: Evaluation, folder: str | Path, rgb_bands: list[int] | None = None) -> list[Path]:
    """Every figure for one evaluation; returns the files written."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{folder}: cannot create plot folder ({exc.strerror or exc})") from None
    report = ev.report
    used: set[str] = set()

    def name(stem: str) -> Path:
        """``stem``.png, or ``stem``_2.png … when two names came out the same ("a b", "a_b")."""
        unique, n = stem, 1
        while unique in used:
            n += 1
            unique = f"{stem}_{n}"
        used.add(unique)
        return folder / f"{unique}.png"

    out = [metric_vs_cover(report, name("metric_vs_cloud_cover"))]
    for c in report["comparisons"]:
        out.append(difference_plot(c, report["window"], name(f"difference_{_safe(c['model'])}_vs_{_safe(c['reference'])}")))
    for m in report["models"]:
        out.append(confusion_plot(m["pooled"], m["name"], name(f"confusion_{_safe(m['name'])}")))
    for p in ev.previews:
        out.append(quicklook(p, name(f"quicklook_{_safe(p.scene)}"), rgb_bands))
    return out
