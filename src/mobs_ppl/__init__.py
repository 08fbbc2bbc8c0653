"""mobs_ppl: joint models of blended galaxies seen by several instruments, in NumPyro."""

from importlib.metadata import PackageNotFoundError, version

from . import (
    datasets,
    detection,
    fourier,
    frame,
    init,
    measure,
    noise,
    plot,
    psf,
    resample,
    sky,
    synthetic,
)
from ._warnings import MobsPplWarning
from .correlated import CorrelatedObservation
from .frame import Frame, relative_jacobian
from .inference import MAPResult, PosteriorResult, fit_map, sample
from .laplace_approximation import LaplaceApproximation, laplace
from .likelihood import gaussian_log_likelihood
from .model import SceneModel, scene_model
from .noise import StationaryNoise
from .observation import Observation, estimate_weights
from .persistence import load_fit, load_posterior, load_scene, save_fit, save_posterior, save_scene
from .renderer import Renderer, build_renderer
from .resample import Resampler
from .scene import Scene
from .sources import GaussianSource, PointSource, SersicSource, Source

try:
    __version__ = version("mobs-ppl")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "plot",
    "detection",
    "init",
    "measure",
    "GaussianSource",
    "MAPResult",
    "PointSource",
    "PosteriorResult",
    "Scene",
    "SceneModel",
    "SersicSource",
    "Source",
    "fit_map",
    "sample",
    "laplace",
    "LaplaceApproximation",
    "scene_model",
    "CorrelatedObservation",
    "Resampler",
    "StationaryNoise",
    "noise",
    "resample",
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
    "synthetic",
    "load_fit",
    "load_posterior",
    "load_scene",
    "save_fit",
    "save_posterior",
    "save_scene",
    "__version__",
]
