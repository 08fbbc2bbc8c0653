"""mobs_ppl: joint models of blended galaxies seen by several instruments, in NumPyro."""

from importlib.metadata import PackageNotFoundError, version

from . import datasets, fourier, frame, psf, sky
from ._warnings import MobsPplWarning
from .frame import Frame, relative_jacobian
from .likelihood import gaussian_log_likelihood
from .observation import Observation, estimate_weights
from .renderer import Renderer, build_renderer

try:
    __version__ = version("mobs-ppl")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "Frame",
    "MobsPplWarning",
    "Observation",
    "Renderer",
    "build_renderer",
    "datasets",
    "estimate_weights",
    "fourier",
    "frame",
    "gaussian_log_likelihood",
    "psf",
    "relative_jacobian",
    "sky",
    "__version__",
]
