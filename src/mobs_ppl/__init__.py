"""mobs_ppl: joint models of blended galaxies seen by several instruments, in NumPyro.

The package's names load on first use (PEP 562): ``import mobs_ppl`` itself imports
neither JAX nor NumPyro, so that ``mobs-ppl --help`` answers at once. ``mp.Frame``,
``mp.fit_map``, ``mp.plot`` ... import their module when first touched.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mobs-ppl")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

#: Submodules offered as attributes of the package.
_SUBMODULES = (
    "datasets",
    "detection",
    "fourier",
    "frame",
    "init",
    "measure",
    "noise",
    "plot",
    "psf",
    "resample",
    "sky",
    "synthetic",
)

#: Public name -> the module that defines it.
_NAMES = {
    "MobsPplWarning": "_warnings",
    "CorrelatedObservation": "correlated",
    "Frame": "frame",
    "relative_jacobian": "frame",
    "MAPResult": "inference",
    "PosteriorResult": "inference",
    "fit_map": "inference",
    "fit_map_batch": "map_batch",
    "sample": "inference",
    "LaplaceApproximation": "laplace_approximation",
    "laplace": "laplace_approximation",
    "gaussian_log_likelihood": "likelihood",
    "SceneModel": "model",
    "scene_model": "model",
    "StationaryNoise": "noise",
    "Observation": "observation",
    "estimate_weights": "observation",
    "load_fit": "persistence",
    "load_posterior": "persistence",
    "load_scene": "persistence",
    "save_fit": "persistence",
    "save_posterior": "persistence",
    "save_scene": "persistence",
    "Renderer": "renderer",
    "build_renderer": "renderer",
    "Resampler": "resample",
    "Scene": "scene",
    "GaussianSource": "sources",
    "PointSource": "sources",
    "SersicSource": "sources",
    "Source": "sources",
}


def __getattr__(name: str):
    if name in _NAMES:
        value = getattr(import_module(f".{_NAMES[name]}", __name__), name)
    elif name in _SUBMODULES:
        value = import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


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
    "fit_map_batch",
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
