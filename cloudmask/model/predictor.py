"""Loading weights and running the network on numpy arrays: the model's public face.

Weights are a safetensors file plus a JSON sidecar (version, sha256 of the weights file,
architecture config). The hash is checked on every load so a truncated download or a swapped file
is reported as a :class:`~cloudmask.errors.ModelError` instead of silently producing bad masks.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cloudmask.errors import BandError, ModelError, UsageError
from cloudmask.files import usual_permissions
from cloudmask.model.network import CloudNet, ModelConfig, fold_batchnorm, stored_to_physical

#: Where the bundled weights live (``<name>.safetensors`` + ``<name>.json``).
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
BUNDLED_NAME = "cloudmask"
MIN_BANDS = 3
SIDECAR_FORMAT = 1
#: Integer types the network converts itself (``stored=``): exact in float32.
STORED_DTYPES = tuple(np.dtype(t) for t in ("uint8", "int8", "uint16", "int16"))
#: Per band (scale, offset, nodata): physical = stored * scale + offset; nodata NaN = none.
StoredAffine = tuple[np.ndarray, np.ndarray, np.ndarray]


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def resolve_device(name: str | torch.device) -> torch.device:
    """A torch device from a user's name: ``cpu``, ``cuda``, ``cuda:N``, or ``auto`` (the first
    CUDA GPU when torch sees one, else the CPU). A GPU torch cannot use is a UsageError."""
    if str(name).strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(str(name).strip().lower())
    except RuntimeError:
        raise UsageError(f"unknown device {str(name)!r}: use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise UsageError(f"device {str(name)!r} is not supported: use cpu, cuda, cuda:N or auto")
    if not torch.cuda.is_available():
        raise UsageError(f"device {str(name)!r}: torch {torch.__version__} sees no CUDA GPU (a CPU build, or no driver)")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UsageError(f"device {str(name)!r}: torch sees {torch.cuda.device_count()} CUDA GPU(s)")
    return dev


#: Plausible descriptor wavelengths in micrometres: the registry's window (UV edge to far thermal).
_WL_MIN_UM, _WL_MAX_UM = 0.3, 15.0


def _check_descriptors(d: np.ndarray) -> None:
    """Refuse (n, 5) descriptors [min, centre, max, fwhm µm, thermal] that cannot be micrometres.

    The network takes whatever numbers it is given: 490 instead of 0.49 µm gives confident
    garbage, not an error, so the units are checked here (a few comparisons on a tiny array)."""
    wl = d[:, :4]
    if (wl > 100).any():
        raise BandError(f"band descriptor wavelengths look like nanometres (largest {float(wl.max()):g}): "
                        "pass [min, centre, max, fwhm] in micrometres, e.g. 0.49 not 490")
    edges = d[:, :3]
    if (edges < _WL_MIN_UM).any() or (edges > _WL_MAX_UM).any():
        raise BandError(f"band descriptor wavelengths must lie in {_WL_MIN_UM}-{_WL_MAX_UM} µm, got "
                        f"{float(edges.min()):g}-{float(edges.max()):g} (columns: min, centre, max, fwhm µm, thermal)")
    if (d[:, 3] <= 0).any() or (d[:, 3] > _WL_MAX_UM).any():
        raise BandError(f"band descriptor FWHM must be above 0 and at most {_WL_MAX_UM} µm, got {d[:, 3].tolist()}")
    if ((d[:, 4] != 0) & (d[:, 4] != 1)).any():
        raise BandError(f"band descriptor thermal flags (column 5) must be 0 or 1, got {d[:, 4].tolist()}")


def _check_reflectance(x: np.ndarray, d: np.ndarray, stored: StoredAffine | None = None) -> None:
    """Refuse reflective bands whose values cannot be reflectance (0-1, clouds up to ~1.5).

    Like descriptors in nanometres, digital numbers (0-10000) or percent give a confident mask of
    all cloud, and a fill value such as -9999 not marked NaN gives "shadow", not an error. Checked
    on a sample of at most ~4096 pixels per band, so it costs nothing beside the network; ``x`` is
    (..., bands, h, w), and with ``stored`` it holds stored integers (converted for the check)."""
    refl = np.flatnonzero(d[:, 4] == 0)
    if refl.size == 0 or x.size == 0:
        return
    h, w = x.shape[-2:]
    step = max(1, int(np.sqrt(x.size / x.shape[-3] / 4096)))
    sample = np.asarray(x[..., refl, ::step, ::step], dtype="float32")
    if stored is not None:  # physical = stored * scale + offset; a band's nodata value is no value
        scale, offset, nodata = (np.asarray(v, dtype="float32").reshape(-1)[refl][:, None, None] for v in stored)
        sample = np.where(sample == nodata, np.float32(np.nan), sample * scale + offset)
    with np.errstate(invalid="ignore"):
        finite = sample[np.isfinite(sample)]
    if finite.size == 0:
        return
    low = float(np.mean(finite < -0.5))  # surface reflectance dips to about -0.2 at worst; -9999 x 1e-4 is -0.9999
    if low > 0.001:
        raise BandError(f"{low:.1%} of the reflective values are below -0.5 (smallest {float(finite.min()):g}): a fill "
                        "value? Mark it as nodata (the file's nodata value; NaN in an array)")
    # per band: one band of DNs among reflectances (a stack built by hand) gave all-cloud masks too
    per_band = np.moveaxis(sample, -3, 0).reshape(refl.size, -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a band with no valid value in the sample
        medians = np.nanmedian(per_band, axis=1)
    median = float(np.nanmax(medians)) if np.isfinite(medians).any() else 0.0
    if median > 5.0:
        raise BandError(f"reflective band values look scaled (median {median:g}): the model takes reflectance 0-1 "
                        "(a file's DNs: its product's scale/offset, --product; an array: DN * scale + offset, e.g. "
                        "Sentinel-2 L2A DN / 10000 - 0.1); thermal bands in kelvin")


#: Predictors unpickled in this process, by identity (see :meth:`Predictor.__reduce__`); a few.
_SHARED: dict[str, Predictor] = {}
_SHARED_LOCK = threading.Lock()


def _shared_predictor(identity: str | None, state: dict[str, Any]) -> Predictor:
    """The predictor an earlier unpickling in this process built for ``identity``, else a new one
    (always a new one without an identity)."""
    if identity is None:
        p = Predictor.__new__(Predictor)
        p.__dict__.update(state)
        return p
    with _SHARED_LOCK:
        p = _SHARED.get(identity)
        if p is None:
            p = Predictor.__new__(Predictor)
            p.__dict__.update(state)
            if len(_SHARED) >= 4:
                _SHARED.pop(next(iter(_SHARED)))
            _SHARED[identity] = p
        return p


class Predictor:
    """A network with its weights' identity, callable on physical numpy arrays.

    ``halo`` is the overlap (pixels per side) tiled inference should use; ``stride`` the pooling
    factor (tile origins on multiples of it reproduce whole-scene pooling exactly).
    """

    def __init__(self, net: CloudNet, version: str, sha256: str, source: str | None = None, meta: dict[str, Any] | None = None):
        self.net = net.eval()
        # inference copy with BatchNorm folded into the convolutions (fewer passes, same outputs)
        self._infer = fold_batchnorm(copy.deepcopy(net))
        self.version = version
        self.sha256 = sha256
        self.source = source
        self.meta = meta or {}
        self.device = torch.device("cpu")  # where inference runs (:meth:`to`); ``net`` stays on the CPU

    def to(self, device: str | torch.device) -> Predictor:
        """Run inference on ``device`` (see :func:`resolve_device`); numpy in and out as before."""
        dev = resolve_device(device)
        self._infer.to(dev)
        self.device = dev
        return self

    def __getstate__(self) -> dict[str, Any]:
        """Pickles (e.g. to Dask workers) always carry a CPU predictor: a worker may have no GPU."""
        state = self.__dict__.copy()
        if self.device.type != "cpu":
            state["_infer"] = fold_batchnorm(copy.deepcopy(self.net))
            state["device"] = torch.device("cpu")
        return state

    def __reduce__(self) -> tuple[Any, ...]:
        """Unpickled through a per-process cache keyed by the weights' identity: each Dask task
        carries the predictor, and a fresh copy per task paid its first-call cost (oneDNN's
        preparation of every layer, ~0.5 s) on every block; a worker now builds it once."""
        if not self.sha256.strip("0"):  # untrained (Predictor.random): no identity to share by
            return _shared_predictor, (None, self.__getstate__())
        return _shared_predictor, (self._identity(), self.__getstate__())

    def _identity(self) -> str:
        """Weights and architecture: two predictors with the same identity compute the same."""
        return f"{self.sha256}|{self.version}|{self.config!r}"

    @property
    def config(self) -> ModelConfig:
        return self.net.config

    @property
    def halo(self) -> int:
        return self.net.halo

    @property
    def stride(self) -> int:
        return self.net.stride

    @classmethod
    def random(cls, seed: int = 0, config: ModelConfig | None = None, **overrides: Any) -> Predictor:
        """An untrained, deterministic predictor (for tests of other modules)."""
        cfg = config or ModelConfig(**overrides)
        gen_state = torch.random.get_rng_state()
        try:
            torch.manual_seed(seed)
            net = CloudNet(cfg)
        finally:
            torch.random.set_rng_state(gen_state)
        return cls(net, version=f"random-{seed}", sha256="0" * 64, source=None)

    # ------------------------------------------------------------------ inference

    def _check(self, x: np.ndarray, descriptors: np.ndarray, ndim: int, stored: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        x = np.asarray(x)
        d = np.asarray(descriptors, dtype="float32")
        if x.ndim != ndim:
            raise BandError(f"expected a {ndim}-D array of bands, got shape {x.shape}")
        n = x.shape[-3]
        if d.shape != (n, 5):
            raise BandError(f"descriptors must have shape ({n}, 5) for {n} bands, got {d.shape}")
        if n < MIN_BANDS:
            raise BandError(f"the model needs at least {MIN_BANDS} bands, got {n}")
        if not np.isfinite(d).all():
            raise BandError("band descriptors contain NaN or infinite values")
        _check_descriptors(d)
        if not (stored and x.dtype in STORED_DTYPES):
            x = np.asarray(x, dtype="float32")
        if any(st <= 0 or st % x.itemsize for st, size in zip(x.strides, x.shape) if size > 1):
            x = np.ascontiguousarray(x)  # torch takes strided views, but not reversed or misaligned ones
        return torch.from_numpy(x), torch.from_numpy(d)

    def predict_proba(self, x: np.ndarray, descriptors: np.ndarray, region: tuple[int, int, int, int] | None = None,
                      finite: bool = False, stored: StoredAffine | None = None) -> np.ndarray:
        """(n_bands, h, w) physical values (NaN = nodata) -> (4, h, w) float32 probabilities
        (only rows y0:y1, columns x0:x1 with ``region`` = (y0, y1, x0, x1); context still from all).
        ``finite=True``: the caller has checked that ``x`` holds no NaN/inf (skips that pass).
        ``stored``: ``x`` holds stored integers (see :meth:`predict_proba_batch`)."""
        x = np.asarray(x)
        if x.ndim != 3:
            raise BandError(f"expected a (bands, y, x) array, got shape {x.shape}")
        return self.predict_proba_batch(x[None], descriptors, region, finite, stored)[0]

    def predict_proba_batch(self, x: np.ndarray, descriptors: np.ndarray, region: tuple[int, int, int, int] | None = None,
                            finite: bool = False, stored: StoredAffine | None = None) -> np.ndarray:
        """(B, n_bands, h, w) with one band set for the whole batch -> (B, 4, h, w), or the
        ``region`` of each (see :meth:`predict_proba`).

        ``stored`` = (scale, offset, nodata), one value per band (nodata NaN: none): ``x`` holds
        stored integers (uint8/int8/uint16/int16) whose physical values are ``x * scale + offset``;
        the network converts them row chunk by row chunk (``finite``: no nodata value occurs)."""
        xt, dt = self._check(x, descriptors, 4, stored=stored is not None)
        st = None
        if stored is not None:
            st = tuple(torch.as_tensor(np.asarray(v, dtype="float32").reshape(-1)) for v in stored)
            if any(t.shape != (xt.shape[1],) for t in st):
                raise BandError(f"stored-value scaling needs one scale, offset and nodata per band ({xt.shape[1]})")
        # every window of `cloudmask mask` comes through here: DNs or percent in a file whose product
        # says reflectance are refused there too, not masked as all cloud
        _check_reflectance(xt.numpy(), dt.numpy(), stored)
        return self._run(xt, dt, region, finite, st)

    def _run(self, xt: torch.Tensor, dt: torch.Tensor, region: tuple[int, int, int, int] | None, finite: bool,
             stored: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> np.ndarray:
        if self.device.type != "cpu":
            if stored is not None:  # converted here: integer types beyond uint8 have little GPU support
                xt, stored = stored_to_physical(xt, *stored, mask=not finite), None
            xt, dt = xt.to(self.device), dt.to(self.device)
        kw: dict[str, Any] = {"finite": finite}
        if region is not None:
            kw["region"] = tuple(int(v) for v in region)
        if stored is not None:
            kw["stored"] = stored
        try:
            out = self._infer.predict_proba(xt, dt, **kw)
        except ValueError as exc:  # the network's check of ``region``
            raise BandError(f"output {exc}") from None
        return out.numpy() if out.device.type == "cpu" else out.cpu().numpy()

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | os.PathLike[str], version: str, extra: dict[str, Any] | None = None) -> Path:
        """Write ``path`` (.safetensors) and its ``.json`` sidecar atomically; returns the weights path."""
        return save_weights(self.net, path, version, extra)


def save_weights(net: CloudNet, path: str | os.PathLike[str], version: str, extra: dict[str, Any] | None = None) -> Path:
    """Save a network's weights + sidecar (version, sha256, architecture) next to each other."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    arch = net.config.to_dict()
    state = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp, metadata={"version": version, "architecture": json.dumps(arch)})
        digest = sha256_file(Path(tmp))
        usual_permissions(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    sidecar = {"format": SIDECAR_FORMAT, "version": version, "sha256": digest, "file": path.name, "architecture": arch}
    sidecar.update(extra or {})
    side = path.with_suffix(".json")
    tmp_side = side.with_suffix(".json.tmp")
    tmp_side.write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp_side, side)
    return path


def bundled_weights() -> Path:
    """Path of the bundled weights file."""
    return WEIGHTS_DIR / f"{BUNDLED_NAME}.safetensors"


def load_model(path: str | os.PathLike[str] | None = None) -> Predictor:
    """Load the bundled weights, or a user's ``.safetensors`` (sidecar ``.json`` next to it, or
    the architecture stored in the file's metadata). Raises ModelError on any problem."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights = Path(path) if path is not None else bundled_weights()
    if weights.suffix == ".json":
        weights = weights.with_suffix(".safetensors")
    if not weights.is_file():
        raise ModelError(f"model weights not found: {weights}")
    side = weights.with_suffix(".json")
    sidecar: dict[str, Any] = {}
    if side.is_file():
        try:
            sidecar = json.loads(side.read_text(encoding="utf-8"))
            if not isinstance(sidecar, dict):
                raise ValueError("not an object")
        except (ValueError, OSError) as exc:
            raise ModelError(f"model sidecar {side} is not valid JSON ({exc})") from None
    elif path is None:
        raise ModelError(f"bundled model sidecar missing: {side}")
    digest = sha256_file(weights)
    if sidecar.get("sha256") and sidecar["sha256"] != digest:
        raise ModelError(f"model weights {weights.name} do not match their recorded sha256 (corrupt or replaced file)")
    try:
        state = load_file(str(weights))
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        hint = ("; that is a training checkpoint: the run's weights are best.safetensors beside it"
                if weights.suffix == ".pt" else "")
        raise ModelError(f"model weights {weights} cannot be read ({exc}){hint}") from None
    arch = sidecar.get("architecture")
    if arch is None and "architecture" in meta:
        try:
            arch = json.loads(meta["architecture"])
        except ValueError:
            arch = None
    if not isinstance(arch, dict):
        raise ModelError(f"model weights {weights.name} carry no architecture config (sidecar or metadata)")
    try:
        net = CloudNet(ModelConfig.from_dict(arch))
        net.load_state_dict(state, strict=True)
    except (ValueError, TypeError, RuntimeError) as exc:
        # torch's first line is only "Error(s) in loading state_dict for CloudNet:"; the reason follows
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        reason = next((ln for ln in lines[1:] if not ln.startswith("Error(s)")), lines[0] if lines else type(exc).__name__)
        raise ModelError(f"model weights {weights.name} do not fit the architecture: {reason[:300]}") from None
    version = str(sidecar.get("version") or meta.get("version") or "unknown")
    return Predictor(net, version=version, sha256=digest, source=str(weights), meta=sidecar)
