"""Physically based spectral scene simulator: labelled synthetic scenes for any set of bands.

>>> from cloudmask.simulate import simulate_scene
>>> sim = simulate_scene(bands, size=256, rng=0)   # sim.data, sim.labels, sim.meta
"""

from cloudmask.simulate.bands import virtual_bands
from cloudmask.simulate.scene import DEFAULTS, LABEL_NAMES, SimScene, simulate_scene

__all__ = ["DEFAULTS", "LABEL_NAMES", "SimScene", "simulate_scene", "virtual_bands"]
