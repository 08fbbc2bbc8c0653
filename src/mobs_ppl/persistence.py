"""Saving and loading scenes, MAP fits and posteriors.

Three kinds of file, each read back by its ``load_*`` function:

* :func:`save_scene` / :func:`load_scene` -- a :class:`~mobs_ppl.Scene` (model frame and
  sources) as a NumPy ``.npz`` archive;
* :func:`save_fit` / :func:`load_fit` -- a :class:`~mobs_ppl.MAPResult` (best parameter
  values and the loss history) as ``.npz``; the model (scene and observations, which
  are data the user has anyway) is given again when loading;
* :func:`save_posterior` / :func:`load_posterior` -- posterior draws as ArviZ netCDF
  (``idata.to_netcdf`` / ``az.from_netcdf``), readable without this package.

The ``.npz`` files hold only numbers and strings (no pickled objects); they are read
with ``allow_pickle=False``. Arrays come back bit for bit (in the precision they were
saved in; JAX keeps them float64 when ``jax_enable_x64`` is on).

Scene file (``format = "mobs_ppl.scene"``, ``version = 2``)
--------------------------------------------------------------

==================== ================= ==============================================
key                  type              meaning
==================== ================= ==============================================
format, version      str, int          ``"mobs_ppl.scene"``, ``1``
frame_shape          int (3,)          ``(channels, height, width)`` of the model frame
frame_channels       str (channels,)   band names
frame_wcs            str               ``wcs.to_header_string(relax=True)``; ``""``
                                       when the frame has no WCS
frame_wcs_crpix,     float             the linear part of the WCS at full precision:
frame_wcs_crval,                       ``wcs.wcs.crpix``, ``crval``, ``get_pc()``,
frame_wcs_pc,                          ``get_cdelt()``, ``lonpole``, ``latpole``
frame_wcs_cdelt,                       (the header string keeps ~14 digits; these are
frame_wcs_poles                        applied on top so the WCS round-trips exactly)
frame_psf            float (c, h, w)   model PSF; absent when the frame has none
n_sources            int               number of sources
groups               int (sources,)    the galaxy of every source (``Scene.groups``)
source_<i>_kind      str               ``Source``, ``PointSource``,
                                       ``GaussianSource`` or ``SersicSource``
source_<i>_center    float (2,)        ``(y, x)`` in model pixels
source_<i>_spectrum  float (channels,) amplitudes
==================== ================= ==============================================

and, by kind, the other constructor values of source ``i``:

* ``Source``: ``source_<i>_morphology`` (``(h, w)``, values in ``(0, 1)``),
  ``source_<i>_prior`` (``"envelope"`` or ``"uniform"``), ``source_<i>_cv`` (float) and,
  with an envelope, ``source_<i>_envelope`` (its ``(6,)`` parameters,
  :mod:`mobs_ppl.envelope`);
* ``PointSource``: ``source_<i>_box_size`` (int);
* ``GaussianSource``: ``source_<i>_radius`` (model pixels), ``source_<i>_ellipticity``
  (``(g1, g2)``), ``source_<i>_box_size``, ``source_<i>_oversample``, and
  ``source_<i>_shape``, the unconstrained ellipticity parameter the model samples (it
  is set exactly on loading, as ``ellipticity -> shape`` loses the last bit), and
  ``source_<i>_radius_prior_width``;
* ``SersicSource``: as ``GaussianSource`` plus ``source_<i>_n`` (Sérsic index).

Fit file (``format = "mobs_ppl.fit"``, ``version = 1``)
--------------------------------------------------------

``param_names`` (str array) lists the latent sites; each value is stored under
``param_<name>``. ``losses`` (float array), ``best_iteration`` (int), ``converged``
(bool), ``decrement`` (float), ``iterations`` (int) and ``method`` (str) are the
:class:`~mobs_ppl.MAPResult` fields of the same names. The NumPyro ``svi_state`` and
``guide`` are not saved (they are ``None`` after loading). Version 1 files (without
``decrement``, ``iterations`` and ``method``) are read too.

Version 1 scene files (no groups, envelopes or radius prior widths) are read as well:
their sources get the defaults (every source its own group, an envelope from each
morphology's moments).

Posterior file
--------------

The netCDF file ArviZ writes for the ``InferenceData`` of
:meth:`~mobs_ppl.PosteriorResult.to_arviz` (groups ``posterior``, ``sample_stats``,
``log_likelihood``, ``observed_data``, ``constant_data``, with the named dimensions of
:func:`mobs_ppl.model.site_dims`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from .frame import Frame
from .inference import MAPResult, PosteriorResult
from .model import SceneModel
from .scene import Scene
from .sources import AbstractSource, GaussianSource, PointSource, SersicSource, Source

__all__ = [
    "FIT_FORMAT",
    "SCENE_FORMAT",
    "load_fit",
    "load_posterior",
    "load_scene",
    "save_fit",
    "save_posterior",
    "save_scene",
]

#: Value of the ``format`` key of scene files.
SCENE_FORMAT = "mobs_ppl.scene"
#: Value of the ``format`` key of fit files.
FIT_FORMAT = "mobs_ppl.fit"
_VERSION = 2
#: Versions of each file kind this version of mobs_ppl reads.
_READABLE = (1, 2)

#: The source kinds a scene file holds, by the name written in ``source_<i>_kind``;
#: exact types (a subclass is not assumed to share its parent's constructor).
_KINDS = {cls.__name__: cls for cls in (Source, PointSource, GaussianSource, SersicSource)}


# -- helpers ----------------------------------------------------------------------------


def _write_npz(path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` as given (no ``.npz`` suffix appended)."""
    with open(os.fspath(path), "wb") as f:
        np.savez(f, **arrays)


def _read_npz(path, expected_format: str) -> dict[str, np.ndarray]:
    with np.load(os.fspath(path), allow_pickle=False) as archive:
        data = {k: archive[k] for k in archive.files}
    found = str(data["format"]) if "format" in data else None
    if found != expected_format:
        raise ValueError(
            f"{os.fspath(path)!r} is not a {expected_format} file (format key: {found!r})"
        )
    version = int(data.get("version", -1))
    if version not in _READABLE:
        raise ValueError(
            f"{os.fspath(path)!r} has {expected_format} version {version}; this version of "
            f"mobs_ppl reads versions {_READABLE}"
        )
    return data


def _require(data: Mapping, key: str, path) -> np.ndarray:
    if key not in data:
        raise ValueError(f"{os.fspath(path)!r} lacks the entry {key!r}: the file is incomplete")
    return data[key]


# -- scenes -----------------------------------------------------------------------------


def _frame_arrays(frame: Frame) -> dict[str, np.ndarray]:
    out = {
        "frame_shape": np.asarray(frame.shape, dtype=np.int64),
        "frame_channels": np.asarray(frame.channels, dtype=str),
    }
    wcs = frame.wcs
    if wcs is None:
        out["frame_wcs"] = np.asarray("")
    else:
        out["frame_wcs"] = np.asarray(wcs.to_header_string(relax=True))
        out["frame_wcs_crpix"] = np.array(wcs.wcs.crpix, dtype=float)
        out["frame_wcs_crval"] = np.array(wcs.wcs.crval, dtype=float)
        out["frame_wcs_pc"] = np.array(wcs.wcs.get_pc(), dtype=float)
        out["frame_wcs_cdelt"] = np.array(wcs.wcs.get_cdelt(), dtype=float)
        out["frame_wcs_poles"] = np.array([wcs.wcs.lonpole, wcs.wcs.latpole], dtype=float)
    if frame.psf is not None:
        out["frame_psf"] = np.asarray(frame.psf)
    return out


def _frame_from(data: Mapping, path) -> Frame:
    from astropy.io import fits
    from astropy.wcs import WCS

    shape = tuple(int(s) for s in _require(data, "frame_shape", path))
    channels = [str(c) for c in _require(data, "frame_channels", path)]
    header = str(_require(data, "frame_wcs", path))
    wcs = None
    if header:
        wcs = WCS(fits.Header.fromstring(header))
        # the header keeps ~14 significant digits: restore the linear part exactly
        wcs.wcs.crpix = _require(data, "frame_wcs_crpix", path)
        wcs.wcs.crval = _require(data, "frame_wcs_crval", path)
        if wcs.wcs.has_cd():
            wcs.wcs.cd = (
                _require(data, "frame_wcs_pc", path)
                * _require(data, "frame_wcs_cdelt", path)[:, None]
            )
        else:
            wcs.wcs.pc = _require(data, "frame_wcs_pc", path)
            wcs.wcs.cdelt = _require(data, "frame_wcs_cdelt", path)
        lonpole, latpole = _require(data, "frame_wcs_poles", path)
        wcs.wcs.lonpole, wcs.wcs.latpole = float(lonpole), float(latpole)
        wcs.wcs.set()
        wcs.pixel_shape = (shape[2], shape[1])
    frame = Frame(shape, wcs=wcs, channels=channels)
    if "frame_psf" in data:
        # set as stored: Frame's check (normalisation, centring) already ran when saved
        frame = eqx.tree_at(
            lambda f: f.psf, frame, jnp.asarray(data["frame_psf"]), is_leaf=lambda x: x is None
        )
    return frame


def _source_arrays(i: int, source: AbstractSource) -> dict[str, np.ndarray]:
    kind = type(source).__name__
    if _KINDS.get(kind) is not type(source):
        raise TypeError(
            f"source {i} is a {kind}; save_scene knows {', '.join(_KINDS)} (a kind of its "
            "own would need its own entry there, so that load_scene can rebuild it)"
        )
    p = f"source_{i}_"
    return {p + "kind": np.asarray(kind)} | {
        p + name: value for name, value in source.persisted().items()
    }


def _source_from(i: int, data: Mapping, path) -> AbstractSource:
    p = f"source_{i}_"
    kind = str(_require(data, p + "kind", path))
    if kind not in _KINDS:
        raise ValueError(f"{os.fspath(path)!r}: source {i} has unknown kind {kind!r}")
    values = {key[len(p) :]: data[key] for key in data if key.startswith(p)}
    try:
        return _KINDS[kind].from_persisted(values)
    except KeyError as missing:
        raise ValueError(
            f"{os.fspath(path)!r} lacks the entry {p + missing.args[0]!r}: the file is "
            "incomplete"
        ) from None


def save_scene(path, scene: Scene) -> None:
    """Save a scene (model frame and sources) to an ``.npz`` file.

    Parameters
    ----------
    path : str or path-like
        File to write (used as given; no suffix is added).
    scene : Scene
        The scene; its sources must be :class:`~mobs_ppl.Source`,
        :class:`~mobs_ppl.PointSource`, :class:`~mobs_ppl.GaussianSource` or
        :class:`~mobs_ppl.SersicSource`.

    Raises
    ------
    TypeError
        If ``scene`` is not a Scene or holds a source of another kind.

    Notes
    -----
    The layout is described in the module docstring (:mod:`mobs_ppl.persistence`).
    """
    if not isinstance(scene, Scene):
        raise TypeError(f"save_scene needs a Scene, got {type(scene).__name__}")
    arrays = {
        "format": np.asarray(SCENE_FORMAT),
        "version": np.asarray(_VERSION),
        "n_sources": np.asarray(len(scene.sources)),
        "groups": np.asarray(scene.groups, dtype=np.int64),
        **_frame_arrays(scene.frame),
    }
    for i, source in enumerate(scene.sources):
        arrays.update(_source_arrays(i, source))
    _write_npz(path, arrays)


def load_scene(path) -> Scene:
    """Load a scene written by :func:`save_scene`.

    Parameters
    ----------
    path : str or path-like
        The ``.npz`` file.

    Returns
    -------
    Scene
        The same frame (shape, channels, WCS, model PSF) and sources (kind, centre,
        spectrum and morphology parameters, box) as the saved one.

    Raises
    ------
    ValueError
        If the file is not a scene file of a readable version, or is incomplete.
    """
    data = _read_npz(path, SCENE_FORMAT)
    frame = _frame_from(data, path)
    n = int(_require(data, "n_sources", path))
    groups = [int(g) for g in data["groups"]] if "groups" in data else None
    return Scene(frame, [_source_from(i, data, path) for i in range(n)], groups)


# -- MAP fits ---------------------------------------------------------------------------


def save_fit(path, fit: MAPResult) -> None:
    """Save a MAP fit (best parameters, loss history, convergence) to an ``.npz`` file.

    Parameters
    ----------
    path : str or path-like
        File to write (used as given).
    fit : MAPResult
        Result of :func:`~mobs_ppl.fit_map`.

    Notes
    -----
    The model (scene and observations) is not saved: :func:`load_fit` takes it again.
    Save the initial scene with :func:`save_scene` to rebuild the model elsewhere.
    """
    if not isinstance(fit, MAPResult):
        raise TypeError(f"save_fit needs a MAPResult, got {type(fit).__name__}")
    names = list(fit.params)
    arrays = {
        "format": np.asarray(FIT_FORMAT),
        "version": np.asarray(_VERSION),
        "param_names": np.asarray(names, dtype=str),
        "losses": np.asarray(fit.losses),
        "best_iteration": np.asarray(int(fit.best_iteration)),
        "converged": np.asarray(bool(fit.converged)),
        "decrement": np.asarray(float(fit.decrement)),
        "iterations": np.asarray(int(fit.iterations)),
        "method": np.asarray(str(fit.method)),
    }
    for name in names:
        arrays[f"param_{name}"] = np.asarray(fit.params[name])
    _write_npz(path, arrays)


def load_fit(path, model: SceneModel) -> MAPResult:
    """Load a MAP fit written by :func:`save_fit` for ``model``.

    Parameters
    ----------
    path : str or path-like
        The ``.npz`` file.
    model : SceneModel
        The model that was fitted (same sources and shifted observations), built again
        from the user's data.

    Returns
    -------
    MAPResult
        With ``params``, ``losses``, ``best_iteration`` and ``converged`` as saved and
        ``svi_state = guide = None``.

    Raises
    ------
    ValueError
        If the file is not a fit file, or its parameters do not match the model's
        latent sites (names or shapes).
    """
    if not isinstance(model, SceneModel):
        raise TypeError(f"load_fit needs the SceneModel, got {type(model).__name__}")
    data = _read_npz(path, FIT_FORMAT)
    names = [str(n) for n in _require(data, "param_names", path)]
    expected = model.init_values()
    if set(names) != set(expected):
        raise ValueError(
            f"the fit in {os.fspath(path)!r} has sites {sorted(names)}, the model has "
            f"{sorted(expected)}: it was made for another model"
        )
    params = {}
    for name in names:
        value = _require(data, f"param_{name}", path)
        if value.shape != tuple(np.shape(expected[name])):
            raise ValueError(
                f"site {name!r} has shape {value.shape} in {os.fspath(path)!r} but "
                f"{tuple(np.shape(expected[name]))} in the model"
            )
        params[name] = jnp.asarray(value)
    return MAPResult(
        model=model,
        params=params,
        losses=np.asarray(_require(data, "losses", path)),
        best_iteration=int(_require(data, "best_iteration", path)),
        converged=bool(_require(data, "converged", path)),
        decrement=float(data.get("decrement", np.nan)),
        iterations=int(data.get("iterations", len(data["losses"]))),
        method=str(data.get("method", "adam")),
    )


# -- posteriors -------------------------------------------------------------------------


def save_posterior(path, posterior, log_likelihood: str = "auto") -> None:
    """Write posterior draws to a netCDF file with ArviZ.

    Parameters
    ----------
    path : str or path-like
        File to write (conventionally ``*.nc``).
    posterior : PosteriorResult or arviz.InferenceData
        Result of :func:`~mobs_ppl.sample` (converted with its ``to_arviz``), or ArviZ
        data (``InferenceData``, or ``xarray.DataTree`` with ArviZ 1.x).
    log_likelihood : {"auto", "pointwise", "total", "none"}
        Passed to :meth:`~mobs_ppl.PosteriorResult.to_arviz` for a ``PosteriorResult``.
    """
    idata = (
        posterior.to_arviz(log_likelihood) if isinstance(posterior, PosteriorResult) else posterior
    )
    if not hasattr(idata, "to_netcdf"):
        raise TypeError(
            "save_posterior needs a PosteriorResult or ArviZ data with to_netcdf; got "
            f"{type(posterior).__name__}"
        )
    idata.to_netcdf(os.fspath(path))


def load_posterior(path):
    """Read posterior draws written by :func:`save_posterior` (``arviz.from_netcdf``).

    Parameters
    ----------
    path : str or path-like
        The netCDF file.

    Returns
    -------
    arviz.InferenceData
        (``xarray.DataTree`` with ArviZ 1.x). With ArviZ 0.x the data are read into
        memory and the file is closed.
    """
    import arviz as az

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no posterior file at {path!r}")
    if "data.load" in az.rcParams:
        # read everything and close the file (ArviZ 0.x opens lazily by default)
        with az.rc_context({"data.load": "eager"}):
            return az.from_netcdf(path)
    return az.from_netcdf(path)  # pragma: no cover - ArviZ 1.x
