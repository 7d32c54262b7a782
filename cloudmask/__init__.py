"""cloudmask: one sensor-independent network for cloud and cloud-shadow masks.

Data flows registry → scene → model → tiles → COG / metrics; each step is a module:
:mod:`cloudmask.registry`, :mod:`cloudmask.scene`, :mod:`cloudmask.model`,
:mod:`cloudmask.tiles`, :mod:`cloudmask.cog`, :mod:`cloudmask.metrics`.
"""

from __future__ import annotations

__version__ = "0.1.0"

#: Output class codes shared by the simulator, the model, masks and metrics.
CLEAR, THICK, THIN, SHADOW, NODATA = 0, 1, 2, 3, 255
CLASS_NAMES = {CLEAR: "clear", THICK: "thick cloud", THIN: "thin cloud", SHADOW: "cloud shadow"}

from cloudmask.errors import CloudmaskError  # noqa: E402
from cloudmask.registry import Band, Sensor, get_sensor, load_registry  # noqa: E402

__all__ = [
    "CLASS_NAMES",
    "CLEAR",
    "NODATA",
    "SHADOW",
    "THICK",
    "THIN",
    "Band",
    "CloudmaskError",
    "Sensor",
    "__version__",
    "get_sensor",
    "load_registry",
]
