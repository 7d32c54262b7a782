"""The sensor-independent network: any set of bands with descriptors -> clear/thick/thin/shadow.

Public API::

    from cloudmask.model import load_model, Predictor
    p = load_model()                       # bundled weights (hash-checked)
    proba = p.predict_proba(x, descriptors)  # (n, h, w) physical -> (4, h, w)
"""

from __future__ import annotations

from cloudmask.errors import ModelError
from cloudmask.model.network import CloudNet, ModelConfig, count_flops_per_pixel, fold_batchnorm
from cloudmask.model.predictor import Predictor, bundled_weights, load_model, resolve_device, save_weights

__all__ = [
    "CloudNet",
    "ModelConfig",
    "ModelError",
    "Predictor",
    "bundled_weights",
    "count_flops_per_pixel",
    "fold_batchnorm",
    "load_model",
    "resolve_device",
    "save_weights",
]
