"""The training loop behind ``cloudmask train``: config + overrides, seeded, checkpointed, resumable.

CPU-first: a few thousand small batches of simulated scenes (plus optional real tiles) train the
compact network in about an hour on two cores; a GPU is used when present but never required.
"""

from __future__ import annotations

import copy
import json
import math
import os
import pickle
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from cloudmask.errors import OutputError, UsageError, first_line
from cloudmask.model.data import (
    Batch, PooledSimSource, RealSource, RealTile, ReusingSource, SimSource, four_band_indices, get_simulator, jitter, load_real_tiles,
    sensor_bands,
)
from cloudmask.model.network import CloudNet, ModelConfig
from cloudmask.model.predictor import save_weights
from cloudmask.shadows import match_shadows, nir_band

DEFAULT_CONFIG: dict[str, Any] = {
    "seed": 0,
    "out": "runs/default",
    "version": "0.1.0",
    "model": ModelConfig().to_dict(),
    "data": {
        "simulator": "simulator",
        "sensors": ["sentinel2", "landsat8", "landsat9", "landsat7", "landsat5", "superdove"],
        "virtual_prob": 0.3,
        "min_bands": 4,
        "subset_prob": 0.6,
        "overscan": 0.0,  # >0: each simulated tile is a random crop of a scene this much larger (not periodic)
        "tile": 128,
        "batch": 8,
        "workers": 0,  # >0: simulate in this many worker processes (for a GPU); 0: in the training process
        "reuse": 1,  # >1: each simulated batch serves this many steps, reuses rotated/flipped (for a GPU)
        "jitter": {"gain": 0.05, "brightness": 0.08, "thermal_k": 2.0, "wavelength": 0.015},
        "sim_options": {},  # simulate_scene options (cloudmask.simulate.scene.DEFAULTS), e.g. label thresholds
    },
    "real": {
        "root": None,
        "train": ["l8biome/train_*"],
        "val": ["l8biome/val_*", "ukis/*", "cloudsen12/*"],
        "prob": 0.2,
        "fix_band_order": True,
    },
    "train": {
        "steps": 2000,
        "lr": 0.003,
        "weight_decay": 0.0001,
        "warmup": 100,
        "class_weights": [1.0, 1.0, 1.0, 1.5],
        "val_every": 200,
        "ckpt_every": 200,
        "threads": 2,
        "select": "score",  # checkpoint selection: mean of sim and l8biome-val cloud F1 (+ shadow F1)
        "init": None,  # weights to start from (fine-tuning); None = random initialisation
        # distillation: a trained model (weights file) whose probabilities the network learns to
        # match, e.g. a narrower network copying the bundled one; distill = the share of the loss
        # that is KL(teacher || network), the rest cross-entropy with the labels
        "teacher": None,
        "distill": 1.0,
        "max_minutes": None,  # wall-clock budget: stop (with a final validation) when it is spent
        "schedule": "steps",  # "steps": cosine over train.steps; "time": cosine over max(step, time) progress
        "ema": 0.0,  # >0: validate and save an exponential moving average of the weights with this decay
    },
    # four_bands: also validate every set on its blue/green/red/NIR bands alone ("<set>_4band"), and
    # select checkpoints on those of the simulated sets and l8biome val too (the 4-band target)
    "val": {"sensors": ["sentinel2", "landsat8"], "scenes": 6, "size": 192, "seed": 12345, "four_bands": False},
}


# --------------------------------------------------------------------------- config


def _free_form(key: str) -> bool:
    """A mapping whose default is empty takes any keys (its consumer validates them)."""
    node: Any = DEFAULT_CONFIG
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return isinstance(node, dict) and not node


def _merge(base: dict[str, Any], extra: dict[str, Any], where: str = "") -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        key = f"{where}{k}"
        if k not in out:
            raise UsageError(f"unknown config key {key!r}")
        if _free_form(key):  # checked by whatever consumes it (e.g. data.sim_options by the simulator)
            if not isinstance(v, dict):
                raise UsageError(f"config key {key!r} must be a mapping")
            out[k] = {**out[k], **v}
        elif isinstance(out[k], dict) and k != "model":
            if not isinstance(v, dict):
                raise UsageError(f"config key {key!r} must be a mapping")
            out[k] = _merge(out[k], v, key + ".")
        elif k == "model":
            if not isinstance(v, dict):
                raise UsageError("config key 'model' must be a mapping")
            merged = {**out[k], **v}
            try:
                ModelConfig.from_dict(merged)
            except (TypeError, ValueError) as exc:
                raise UsageError(f"bad model config: {exc}") from None
            out[k] = merged
        else:
            out[k] = v
    return out


def parse_override(text: str) -> dict[str, Any]:
    """``a.b=value`` -> {"a": {"b": value}} with the value parsed as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise UsageError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw else None
    except yaml.YAMLError:
        value = raw
    out: dict[str, Any] = {}
    cur = out
    parts = key.strip().split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
    return out


def bundled_configs_dir() -> Path | None:
    """The shipped training configs: inside the wheel, or the repository's top-level ``configs/``."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "configs", here.parent / "configs"):
        if candidate.is_dir():
            return candidate
    return None


def _config_file(path: str | os.PathLike[str]) -> Path:
    """``path`` if it is a file; else a shipped config it names (``train-default``,
    ``train-default.yaml`` or ``configs/train-default.yaml``), so the documented command for the
    bundled weights runs outside a source checkout too."""
    p = Path(path)
    if p.is_file():
        return p
    shipped = bundled_configs_dir()
    if shipped is not None and str(p.parent) in (".", "configs"):
        for name in (p.name, p.name + ".yaml"):
            if (shipped / name).is_file():
                return shipped / name
    names = sorted(c.stem for c in shipped.glob("*.yaml")) if shipped is not None else []
    hint = f" (shipped configs: {', '.join(names)})" if names else ""
    raise UsageError(f"config file not found: {p}{hint}")


def load_config(path: str | os.PathLike[str] | None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Defaults <- YAML file <- ``key=value`` overrides, validated against the known keys."""
    cfg = copy.deepcopy(DEFAULT_CONFIG)
    if path is not None:
        p = _config_file(path)
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            raise UsageError(f"config {p} is not valid YAML{where}: {getattr(exc, 'problem', None) or first_line(exc)}") from None
        if not isinstance(raw, dict):
            raise UsageError(f"config {p} must be a mapping at the top level")
        cfg = _merge(cfg, raw)
    for o in overrides:
        cfg = _merge(cfg, parse_override(o))
    _check_values(cfg)
    return cfg


#: Value rules beyond the type of each default: (key, test, what it must be).
_RULES: list[tuple[str, Any, str]] = [
    ("seed", lambda v: v >= 0, "a whole number >= 0"),
    ("data.tile", lambda v: v >= 16 and v % 8 == 0, "a multiple of 8, at least 16 (the network pools by 8)"),
    ("data.batch", lambda v: v >= 1, ">= 1"),
    ("data.min_bands", lambda v: v >= 3, ">= 3"),
    ("data.workers", lambda v: v >= 0, ">= 0"),
    ("data.reuse", lambda v: v >= 1, ">= 1"),
    ("data.virtual_prob", lambda v: 0 <= v <= 1, "within 0-1"),
    ("data.subset_prob", lambda v: 0 <= v <= 1, "within 0-1"),
    ("data.overscan", lambda v: v >= 0, ">= 0"),
    ("real.prob", lambda v: 0 <= v <= 1, "within 0-1"),
    ("train.steps", lambda v: v >= 1, ">= 1"),
    ("train.lr", lambda v: v > 0, "above 0"),
    ("train.weight_decay", lambda v: v >= 0, ">= 0"),
    ("train.warmup", lambda v: v >= 0, ">= 0"),
    ("train.val_every", lambda v: v >= 1, ">= 1"),
    ("train.ckpt_every", lambda v: v >= 1, ">= 1"),
    ("train.threads", lambda v: v >= 1, ">= 1"),
    ("train.distill", lambda v: 0 <= v <= 1, "within 0-1"),
    ("train.ema", lambda v: 0 <= v < 1, "within 0-1 (0: off)"),
    ("train.max_minutes", lambda v: v is None or v > 0, "above 0 (or null)"),
    ("train.schedule", lambda v: v in ("steps", "time"), "'steps' or 'time'"),
    ("train.class_weights", lambda v: len(v) == 4 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                          and x >= 0 for x in v) and any(x > 0 for x in v),
     "four numbers >= 0, not all 0"),
    ("val.scenes", lambda v: v >= 0, ">= 0"),
    ("val.size", lambda v: v >= 16 and v % 8 == 0, "a multiple of 8, at least 16"),
]


def _check_values(cfg: dict[str, Any]) -> None:
    """Every known key holds a value of its default's type (ints where ints are expected, finite
    numbers) within its range: a typo fails in one line before any work, not as a traceback."""

    def walk(default: dict[str, Any], value: dict[str, Any], where: str) -> None:
        for k, d in default.items():
            key, v = f"{where}{k}", value.get(k)
            if isinstance(d, dict):
                if d and k != "model":
                    walk(d, v, key + ".")
                continue
            if d is None:  # free values (paths, train.max_minutes): checked where used
                continue
            if isinstance(d, float) and isinstance(v, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
                try:
                    v = value[k] = float(v)
                except ValueError:
                    pass
            if isinstance(d, bool):
                ok = isinstance(v, bool)
            elif isinstance(d, int):
                ok = isinstance(v, int) and not isinstance(v, bool)
            elif isinstance(d, float):
                ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            else:
                ok = isinstance(v, type(d))
            if not ok:
                kind = ("a whole number" if isinstance(d, int) and not isinstance(d, bool) else "a number"
                        if isinstance(d, float) else "true or false" if isinstance(d, bool) else f"a {type(d).__name__}")
                raise UsageError(f"config key {key!r} must be {kind}, got {v!r}")

    walk(DEFAULT_CONFIG, cfg, "")
    for key, test, what in _RULES:
        node: Any = cfg
        for part in key.split("."):
            node = node[part]
        if not test(node):
            raise UsageError(f"config key {key!r} must be {what}, got {node!r}")


# --------------------------------------------------------------------------- loss and metrics


def partial_cross_entropy(logits: torch.Tensor, y: torch.Tensor, thin_lab: torch.Tensor, shadow_lab: torch.Tensor,
                          class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy with ignore 255 where a label may stand for a *set* of classes.

    Why: a dataset that does not label shadow leaves shadow inside "clear", and one that does not
    separate thin cloud calls it all "cloud"; for those pixels the loss is -log of the summed
    probability of the classes the label may hide (SEnSeIv2's idea of ambiguous labels).
    """
    b, c, h, w = logits.shape
    valid = y != 255
    yc = torch.where(valid, y, torch.zeros_like(y)).long()
    allowed = F.one_hot(yc, c).permute(0, 3, 1, 2).bool()  # (B, C, h, w)
    no_shadow = (~shadow_lab).view(b, 1, 1)
    no_thin = (~thin_lab).view(b, 1, 1)
    allowed[:, 3] |= (yc == 0) & no_shadow
    allowed[:, 2] |= (yc == 1) & no_thin
    logp = torch.log_softmax(logits, dim=1)
    ll = torch.logsumexp(logp.masked_fill(~allowed, -1e4), dim=1)  # (B, h, w)
    wts = valid.float()
    if class_weights is not None:
        wts = wts * class_weights[yc]
    return -(ll * wts).sum() / wts.sum().clamp(min=1.0)


def distillation_loss(logits: torch.Tensor, teacher_log_proba: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean KL(teacher || network) over ``valid`` pixels: the network learns the teacher's whole
    probability vector (its calibration too, which cloud-shadow matching's boost was set for),
    not just its argmax."""
    kl = torch.nn.functional.kl_div(torch.log_softmax(logits, dim=1), teacher_log_proba, reduction="none",
                                    log_target=True).sum(dim=1)
    return torch.where(valid, kl, 0.0).sum() / valid.sum().clamp(min=1)  # where: NaN at nodata stays out


def confusion(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """4×4 confusion counts (rows truth, cols prediction), pixels labelled 255 excluded."""
    ok = truth != 255
    return np.bincount(truth[ok].astype(int) * 4 + pred[ok].astype(int), minlength=16).reshape(4, 4)


def scores(cm: np.ndarray, shadow: bool = True) -> dict[str, float]:
    """Cloud (thick+thin) vs not-cloud accuracy/precision/recall/F1 in percent, and shadow F1."""
    cloud = [1, 2]
    tp = cm[np.ix_(cloud, cloud)].sum()
    fp = cm[np.ix_([0, 3], cloud)].sum()
    fn = cm[np.ix_(cloud, [0, 3])].sum()
    tot = cm.sum()
    tn = tot - tp - fp - fn
    out = {
        "cloud_acc": 100 * (tp + tn) / max(tot, 1),
        "cloud_precision": 100 * tp / max(tp + fp, 1),
        "cloud_recall": 100 * tp / max(tp + fn, 1),
        "cloud_f1": 100 * 2 * tp / max(2 * tp + fp + fn, 1),
        "pixels": int(tot),
    }
    if shadow:
        stp, sfp, sfn = cm[3, 3], cm[:, 3].sum() - cm[3, 3], cm[3, :].sum() - cm[3, 3]
        out["shadow_f1"] = 100 * 2 * stp / max(2 * stp + sfp + sfn, 1)
        out["shadow_support"] = int(cm[3, :].sum())
    return out


def evaluate_sets(net: CloudNet, sets: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray, bool]]],
                  match: bool = False) -> dict[str, dict[str, float]]:
    """Pooled scores per named set of (x, y, desc, shadow_labelled) tiles; ``match``: classes after
    cloud–shadow matching (:mod:`cloudmask.shadows`, as ``cloudmask mask`` writes them), with the
    network's own shadow F1 beside it (``shadow_f1_network``) from the same inference."""
    net.eval()
    device = next(net.parameters()).device  # validation runs where training does (GPU or CPU)
    out = {}
    for name, tiles in sets.items():
        cm = np.zeros((4, 4), np.int64)
        cm_sh = np.zeros((4, 4), np.int64)
        cm_net = np.zeros((4, 4), np.int64)  # shadow-labelled tiles, before matching
        any_sh = False
        for x, y, d, sh in tiles:
            prob = net.predict_proba(torch.from_numpy(x[None]).to(device), torch.from_numpy(d).to(device))[0].cpu().numpy()
            pred = prob.argmax(0).astype("uint8")
            if match and sh:
                cm_net += confusion(pred, y)
            if match:
                i = nir_band(d)
                pred = match_shadows(prob, pred, nir=None if i is None else x[i])
            c = confusion(pred, y)
            cm += c
            if sh:
                cm_sh += c
                any_sh = True
        s = scores(cm, shadow=False)
        if any_sh:
            sh_scores = scores(cm_sh, shadow=True)
            s["shadow_f1"], s["shadow_support"] = sh_scores["shadow_f1"], sh_scores["shadow_support"]
            if match:
                s["shadow_f1_network"] = scores(cm_net, shadow=True)["shadow_f1"]
        out[name] = {k: (float(v) if isinstance(v, (float, np.floating)) else int(v)) for k, v in s.items()}
    return out


# --------------------------------------------------------------------------- the loop


def sim_val_sets(cfg: dict[str, Any]) -> dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray, bool]]]:
    """Fixed simulated validation scenes per sensor (seeded apart from training)."""
    vcfg = cfg["val"]
    sim = get_simulator(cfg["data"]["simulator"], cfg["data"].get("sim_options"))
    sets = {}
    for i, s in enumerate(vcfg["sensors"]):
        bands = sensor_bands(s)
        rng = np.random.default_rng(int(vcfg["seed"]) + 1000 * i)
        d = np.stack([b.descriptor() for b in bands])
        sets[f"sim_{s}"] = [(*sim(bands, int(vcfg["size"]), rng), d, True) for _ in range(int(vcfg["scenes"]))]
        sets[f"sim_{s}"] = [(x.astype("float32"), y, dd, sh) for x, y, dd, sh in sets[f"sim_{s}"]]
    return sets


def real_val_sets(tiles: list[RealTile]) -> dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray, bool]]]:
    sets: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray, bool]]] = {}
    for t in tiles:
        key = "real_" + t.name.split("/")[0]
        sets.setdefault(key, []).append((t.x, t.y, t.desc, t.shadow))
    return sets


def with_four_band_sets(sets: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray, bool]]]) -> dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray, bool]]]:
    """``sets`` plus ``<name>_4band``: each tile on its blue/green/red/NIR bands alone, for the sets
    with more than 4 bands that have all four (:func:`four_band_indices`)."""
    out = dict(sets)
    for name, tiles in sets.items():
        four = []
        for x, y, d, sh in tiles:
            idx = four_band_indices(d)
            if idx is None or len(d) <= 4:
                break
            four.append((x[idx], y, d[idx], sh))
        else:
            if four:
                out[f"{name}_4band"] = four
    return out


def _selection_score(metrics: dict[str, dict[str, float]]) -> float:
    """Checkpoint selection: simulated sets and the l8biome val split (not the other held-out sets),
    with their 4-band versions when validated (``val.four_bands``)."""
    keys = [k for k in metrics if k.startswith("sim_") or k in ("real_l8biome", "real_l8biome_4band")]
    vals = [metrics[k]["cloud_f1"] + 0.5 * metrics[k].get("shadow_f1", 0.0) for k in keys]
    return float(np.mean(vals)) if vals else 0.0


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    return rng.bit_generator.state


#: What a run writes into its folder (a fresh run refuses a folder holding any of them).
RUN_FILES = ("config.yaml", "log.jsonl", "last.pt", "best.safetensors", "best.json")


def train(cfg: dict[str, Any], resume: bool = False, progress: Callable[[int, int, dict[str, Any]], None] | None = None,
          overwrite: bool = False) -> dict[str, Any]:
    """Run training as configured; returns a summary (best metrics, paths). Writes into cfg['out']:
    ``config.yaml``, ``log.jsonl``, ``last.pt`` (resumable checkpoint), ``best.safetensors`` (+ .json).

    A fresh run (no ``resume``) refuses a folder that holds another run's files unless ``overwrite``
    (which removes them first): replacing them one by one as the new run reached them wiped the old
    run silently, and a new run stopped early left its config beside the old run's checkpoint."""
    _check_values(cfg)  # a config built in Python gets the same checks as one read by load_config
    tcfg, dcfg, rcfg = cfg["train"], cfg["data"], cfg["real"]
    out = Path(cfg["out"])
    # every mistake the config can hold is found before the run folder is made or any work done
    for s in [*dcfg["sensors"], *cfg["val"]["sensors"]]:
        sensor_bands(s)
    get_simulator(dcfg["simulator"], dcfg.get("sim_options"))
    if int(cfg["val"]["scenes"]) == 0 and not (rcfg.get("root") and rcfg.get("val")):
        raise UsageError("nothing to validate on: val.scenes=0 and no real validation tiles (real.root, real.val)")
    for key in ("init", "teacher"):
        if tcfg.get(key) and not Path(str(tcfg[key])).is_file():
            raise UsageError(f"train.{key}: no such weights file: {tcfg[key]}")
    if resume:
        if not (out / "last.pt").is_file():
            raise UsageError(f"--resume: no checkpoint at {out / 'last.pt'}"
                             + ("" if not out.is_dir() else " (a run stopped before its first checkpoint: start it "
                                "again with --overwrite)"))
        _check_resumable(out, cfg)
    held = [] if resume else [n for n in RUN_FILES if (out / n).exists()]
    if held and not overwrite:
        raise UsageError(f"{out} already holds a training run ({', '.join(held)}): continue it with --resume, "
                         "or start over with --overwrite, or choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{out}: cannot make the run folder ({exc.strerror or exc})") from None
    torch.set_num_threads(int(tcfg.get("threads") or 2))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    seed = int(cfg["seed"])
    torch.manual_seed(seed)
    rng_sim = np.random.default_rng(seed)
    rng_real = np.random.default_rng(seed + 1)
    rng_aug = np.random.default_rng(seed + 2)

    net = CloudNet(ModelConfig.from_dict(cfg["model"])).to(device)
    if tcfg.get("init") and not resume:  # fine-tune: start from existing weights (same architecture)
        from cloudmask.model.predictor import load_model

        init = load_model(tcfg["init"])
        if init.config != net.config:
            raise UsageError(f"train.init {tcfg['init']}: its architecture differs from model: in the config")
        net.load_state_dict(init.net.state_dict())
    teacher, distill = None, float(tcfg.get("distill", 1.0))
    if tcfg.get("teacher"):
        from cloudmask.model.predictor import load_model

        teacher = load_model(tcfg["teacher"]).net.to(device).eval()
        teacher.requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=float(tcfg["lr"]), weight_decay=float(tcfg["weight_decay"]))
    steps, warm = int(tcfg["steps"]), int(tcfg["warmup"])

    max_min = tcfg.get("max_minutes")
    time_sched = tcfg.get("schedule", "steps") == "time" and max_min is not None
    clock = {"t0": time.time(), "before": 0.0}  # elapsed seconds carried over a resume

    def elapsed() -> float:
        return clock["before"] + time.time() - clock["t0"]

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        frac = (step - warm) / max(1, steps - warm)
        if time_sched:  # anneal by whichever budget runs out first, so a slow machine still anneals
            frac = max(frac, elapsed() / (60.0 * float(max_min)))
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    # An average of the recent weights is validated and saved instead of the latest ones: with small
    # batches the latest weights swing by several F1 points between validations.
    ema = None
    if float(tcfg.get("ema") or 0.0) > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(float(tcfg["ema"])), use_buffers=True)
    sim_src: SimSource | PooledSimSource | ReusingSource = SimSource(dcfg, rng_sim)
    real_src = None
    val_sets = sim_val_sets(cfg)
    if rcfg.get("root"):
        train_tiles = load_real_tiles(rcfg["root"], rcfg["train"], fix_band_order=bool(rcfg["fix_band_order"]))
        real_src = RealSource(train_tiles, dcfg, rng_real)
        val_tiles = load_real_tiles(rcfg["root"], rcfg["val"], fix_band_order=bool(rcfg["fix_band_order"]))
        overlap = {t.name for t in train_tiles} & {t.name for t in val_tiles}  # the tiles, whatever the patterns
        if overlap:
            raise UsageError(f"validation tiles also in training: {', '.join(sorted(overlap)[:5])}"
                             f"{' …' if len(overlap) > 5 else ''} ({len(overlap)} in all)")
        val_sets.update(real_val_sets(val_tiles))
    if cfg["val"].get("four_bands"):
        val_sets = with_four_band_sets(val_sets)
    if not any(val_sets.values()):  # a "best" checkpoint chosen on nothing
        raise UsageError("nothing to validate on: val.scenes=0 and no real validation tiles (real.root, real.val)")

    start, best, best_metrics = 0, -1.0, {}
    ckpt = out / "last.pt"
    if resume:
        try:
            state = torch.load(ckpt, map_location=device, weights_only=True)
            net.load_state_dict(state["model"])
            if ema is not None and state.get("ema") is not None:
                ema.load_state_dict(state["ema"])
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
            start, best = int(state["step"]), float(state["best"])
            best_metrics = json.loads(state["best_metrics"])
            rng_sim.bit_generator.state = state["rng_sim"]
            rng_real.bit_generator.state = state["rng_real"]
            rng_aug.bit_generator.state = state["rng_aug"]
            torch.set_rng_state(state["torch_rng"])
            clock["before"] = float(state.get("elapsed", 0.0))
            sim_consumed = int(state.get("sim_consumed", 0))
        except (RuntimeError, ValueError, KeyError, TypeError, EOFError, OSError, pickle.UnpicklingError) as exc:
            # torch's own message for a file it will not load ends in advice to load it unsafely
            why = "not a plain tensor file" if "weights_only" in str(exc) else first_line(exc)
            raise UsageError(f"--resume: {ckpt} is not a readable checkpoint of this run ({why})") from None
        if start > steps:  # (at steps exactly: a finished run, nothing to do)
            raise UsageError(f"--resume: the run is already at step {start}, past train.steps={steps} "
                             "(raise train.steps to train on)")
    else:
        sim_consumed = 0
    if int(dcfg.get("workers") or 0) > 0:
        sim_src = PooledSimSource(dcfg, seed, int(dcfg["workers"]), int(dcfg["batch"]), int(dcfg["tile"]), start=sim_consumed)
    if int(dcfg.get("reuse", 1)) != 1:
        sim_src = ReusingSource(sim_src, int(dcfg["reuse"]), rng_aug)
    for n in held:  # --overwrite: only now, once everything the new run needs has loaded
        try:
            (out / n).unlink()
        except OSError as exc:
            raise OutputError(f"{out / n}: cannot remove the earlier run's file ({exc.strerror or exc})") from None
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    cw = torch.tensor(tcfg["class_weights"], dtype=torch.float32, device=device)
    if resume:  # steps after the checkpoint were logged by the run that stopped: they are done again
        _trim_log(out / "log.jsonl", start)
    log = open(out / "log.jsonl", "a" if resume else "w", encoding="utf-8")  # a fresh run starts a fresh log
    loss_avg = None
    last_metrics: dict[str, Any] = {}
    done = start
    try:
        for step in range(start, steps):
            net.train()
            use_real = real_src is not None and rng_aug.random() < float(rcfg["prob"])
            batch: Batch = (real_src if use_real else sim_src).batch(int(dcfg["batch"]), int(dcfg["tile"]))  # type: ignore[union-attr]
            x, d = jitter(batch.x, batch.desc, rng_aug, dcfg.get("jitter", {}))
            xt, dt, yt = torch.from_numpy(x).to(device), torch.from_numpy(d).to(device), torch.from_numpy(batch.y).to(device)
            logits = net(xt, dt)
            loss = partial_cross_entropy(
                logits, yt, torch.from_numpy(batch.thin_labelled).to(device),
                torch.from_numpy(batch.shadow_labelled).to(device), cw,
            )
            if teacher is not None:
                with torch.no_grad():
                    target = torch.log_softmax(teacher(xt, dt), dim=1)
                loss = (1.0 - distill) * loss + distill * distillation_loss(logits, target, yt != 255)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 2.0)
            opt.step()
            sched.step()
            if ema is not None:
                ema.update_parameters(net)
            lv = float(loss.detach())
            loss_avg = lv if loss_avg is None else 0.95 * loss_avg + 0.05 * lv
            done = step + 1
            timed_out = max_min is not None and elapsed() / 60 > float(max_min)
            record: dict[str, Any] = {"step": done, "loss": round(lv, 4), "source": batch.source, "n_bands": int(d.shape[0]),
                                      "lr": sched.get_last_lr()[0], "elapsed_s": round(elapsed(), 1)}
            if done % int(tcfg["val_every"]) == 0 or done == steps or timed_out:
                judged = net if ema is None else ema.module
                metrics = evaluate_sets(judged, val_sets)
                score = _selection_score(metrics)
                record["val"] = metrics
                record["score"] = score
                last_metrics = {k: {m: round(v, 2) for m, v in s.items()} for k, s in metrics.items()}
                if score > best:
                    best, best_metrics = score, metrics
                    save_weights(judged.cpu(), out / "best.safetensors", str(cfg["version"]),
                                 {"step": done, "metrics": metrics, "config": cfg})
                    judged.to(device)
            if done % int(tcfg["ckpt_every"]) == 0 or done == steps or timed_out:
                _save_ckpt(ckpt, net, opt, sched, done, best, best_metrics, rng_sim, rng_real, rng_aug, elapsed(),
                           getattr(sim_src, "consumed", 0), ema)
            log.write(json.dumps(record) + "\n")
            log.flush()
            if progress:
                progress(done, steps, {"loss": loss_avg, "val": last_metrics})
            if timed_out:
                break
    finally:
        log.close()
        if isinstance(sim_src, (PooledSimSource, ReusingSource)):
            sim_src.close()
    return {"steps": done, "best_score": best, "best_metrics": best_metrics, "out": str(out),
            "elapsed_s": round(elapsed(), 1)}


#: Config keys a resumed run may change: how long it runs, how often it validates and saves, how
#: it uses the machine. Anything else would make it another run than the checkpoint's.
_RESUMABLE_CHANGES = {"out", "train.steps", "train.max_minutes", "train.val_every", "train.ckpt_every", "train.threads",
                      "data.workers"}


def _flatten(d: dict[str, Any], where: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{where}{k}."))
        else:
            out[f"{where}{k}"] = v
    return out


def _trim_log(path: Path, step: int) -> None:
    """Drop the records of steps after ``step`` from a run's log (atomically)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut off when the run was killed
        if not isinstance(rec, dict) or int(rec.get("step", 0)) <= step:
            keep.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(k + "\n" for k in keep), encoding="utf-8")
    os.replace(tmp, path)


def _check_resumable(out: Path, cfg: dict[str, Any]) -> None:
    """--resume continues the run in ``out``: its saved config may differ only in _RESUMABLE_CHANGES."""
    path = out / "config.yaml"
    if not path.is_file():  # a checkpoint without its config (older runs): nothing to compare with
        warnings.warn(f"--resume: {out} has no config.yaml to check this config against; resuming with it", stacklevel=3)
        return
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"--resume: {path} is unreadable ({first_line(exc)}); restore it or give the run's "
                         "config with -c") from None
    if not isinstance(saved, dict) or not saved:  # emptied: resuming on defaults would be another run
        raise UsageError(f"--resume: {path} holds no config; restore it or give the run's config with -c")
    old, new = _flatten(saved), _flatten(json.loads(json.dumps(cfg)))  # tuples as lists, like the YAML
    changed = sorted(k for k in old.keys() | new.keys() if k not in _RESUMABLE_CHANGES and old.get(k) != new.get(k))
    if changed:
        k = changed[0]
        raise UsageError(f"--resume: the config differs from the run's in {', '.join(changed[:4])}"
                         f"{' …' if len(changed) > 4 else ''} ({k}: {old.get(k)!r} then, {new.get(k)!r} now); "
                         f"only {', '.join(sorted(_RESUMABLE_CHANGES - {'out'}))} may change")


def _save_ckpt(path: Path, net: CloudNet, opt: torch.optim.Optimizer, sched: Any, step: int, best: float,
               best_metrics: dict[str, Any], rng_sim: np.random.Generator, rng_real: np.random.Generator,
               rng_aug: np.random.Generator, elapsed: float, sim_consumed: int = 0, ema: Any = None) -> None:
    """A resumable checkpoint of plain tensors/containers (loadable with weights_only=True), atomically."""
    state = {
        "model": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "step": step,
        "best": best, "best_metrics": json.dumps(best_metrics), "rng_sim": _rng_state(rng_sim),
        "rng_real": _rng_state(rng_real), "rng_aug": _rng_state(rng_aug), "torch_rng": torch.get_rng_state(), "elapsed": elapsed,
        "sim_consumed": sim_consumed, "ema": None if ema is None else ema.state_dict(),
    }
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
