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

Writing and reading safely
--------------------------

Every ``save_*`` writes to a temporary file in the target's folder and renames it over
the target at the end (:func:`mobs_ppl.atomic.atomic_path`): a failed or interrupted
write leaves the previous file as it was, and no temporary file behind.

Every ``load_*`` checks before it trusts. A missing file raises ``FileNotFoundError``.
A ``ValueError`` naming the file says it is not a valid mobs_ppl file when it is not a
complete ``.npz`` archive (truncated, corrupt, text), has no or another ``format``, a
version this package does not read, an entry that is not a NumPy array or holds Python
objects, or an entry whose stored size differs from the one its declared shape and
dtype give. Sizes are checked before anything is decompressed: the entries may expand
to at most :data:`MAX_EXPANSION` bytes beyond the file's size on disk. The values are
then checked and errors name the entry: every number finite, entries of the expected
kind and dimension, each source as its constructor requires (positive spectrum,
morphology inside (0, 1)) with its parameters inside its priors' supports; for
:func:`load_fit`, the parameter names, shapes and supports of the model's sites
(:meth:`~mobs_ppl.SceneModel.site_table`). A posterior file must be netCDF, readable by
ArviZ, with a ``posterior`` group of finite draws.

Scene file (``format = "mobs_ppl.scene"``, ``version = 2``)
--------------------------------------------------------------

==================== ================= ==============================================
key                  type              meaning
==================== ================= ==============================================
format, version      str, int          ``"mobs_ppl.scene"``, ``1``
frame_shape          int (3,)          ``(channels, height, width)`` of the model frame
frame_channels       str (channels,)   band names
frame_channel_map    str (k, 2)        ``Frame.channel_map``: (observation channel,
                                       model channel) pairs; absent when empty
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
import zipfile
import zlib
from collections.abc import Mapping

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from .atomic import atomic_path
from .frame import Frame
from .inference import MAPResult, PosteriorResult
from .model import SceneModel
from .scene import Scene
from .sources import AbstractSource, GaussianSource, PointSource, SersicSource, Source

__all__ = [
    "FIT_FORMAT",
    "MAX_EXPANSION",
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

#: How many bytes the entries of an ``.npz`` file may expand to beyond the file's size
#: on disk. The files this module writes are stored uncompressed (no expansion); the
#: allowance admits a re-compressed file while refusing a small file that would
#: decompress to hundreds of megabytes.
MAX_EXPANSION = 64 * 2**20


def _write_npz(path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` atomically, as given (no ``.npz`` suffix appended)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def _npy_header(f, key: str, bad: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype declared by the ``.npy`` header at the start of ``f``."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f".npy format version {version} is not one NumPy's savez writes")
    except ValueError as err:
        raise ValueError(f"{bad}: entry {key!r} is not a NumPy array ({err})") from None
    if dtype.hasobject:
        raise ValueError(f"{bad}: entry {key!r} holds Python objects (only numbers and strings)")
    return shape, dtype


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, bad: str) -> np.ndarray:
    """One entry, after checking that its declared shape matches its stored size."""
    key = info.filename.removesuffix(".npy")
    if not info.filename.endswith(".npy"):
        raise ValueError(f"{bad}: entry {info.filename!r} is not a NumPy array (.npy)")
    with archive.open(info) as f:
        shape, dtype = _npy_header(f, key, bad)
        declared = f.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if declared != info.file_size:
        raise ValueError(
            f"{bad}: entry {key!r} declares shape {shape} of {dtype} ({declared} bytes with "
            f"its header) but holds {info.file_size} bytes"
        )
    with archive.open(info) as f:
        try:
            return np.lib.format.read_array(f, allow_pickle=False)
        except ValueError as err:
            raise ValueError(f"{bad}: entry {key!r} cannot be read ({err})") from None


def _read_arrays(path: str, bad: str) -> dict[str, np.ndarray]:
    """The entries of the ``.npz`` file ``path``, checked before anything is expanded."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            size = os.path.getsize(path)
            total = sum(info.file_size for info in members)
            if total > size + MAX_EXPANSION:
                raise ValueError(
                    f"{bad}: its entries would expand to {total} bytes from {size} on disk "
                    f"(more than persistence.MAX_EXPANSION = {MAX_EXPANSION} beyond; "
                    "mobs_ppl writes its files uncompressed)"
                )
            return {
                info.filename.removesuffix(".npy"): _read_member(archive, info, bad)
                for info in members
            }
    except (zipfile.BadZipFile, EOFError, zlib.error) as err:
        raise ValueError(
            f"{bad}: it is not a complete .npz archive ({type(err).__name__}: {err}); "
            "a file that save_scene or save_fit wrote may have been truncated or altered"
        ) from None


def _read_npz(path, expected_format: str) -> dict[str, np.ndarray]:
    """The checked entries of a file of ``expected_format`` and a readable version."""
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise FileNotFoundError(f"no {expected_format} file at {name!r}")
    data = _read_arrays(name, f"{name!r} is not a valid {expected_format} file")
    found = str(data["format"]) if "format" in data and data["format"].shape == () else None
    if found != expected_format:
        raise ValueError(
            f"{name!r} is not a {expected_format} file (format key: {found!r}); it was not "
            f"written by mobs_ppl's save_{expected_format.rsplit('.', 1)[-1]}"
        )
    version = _scalar(data, "version", path, int) if "version" in data else None
    if version not in _READABLE:
        raise ValueError(
            f"{name!r} has {expected_format} version {version}; this version of "
            f"mobs_ppl reads versions {_READABLE}"
        )
    return data


def _require(data: Mapping, key: str, path) -> np.ndarray:
    if key not in data:
        raise ValueError(f"{os.fspath(path)!r} lacks the entry {key!r}: the file is incomplete")
    return data[key]


def _scalar(data: Mapping, key: str, path, kind: type):
    """The single value of entry ``key`` as ``kind`` (int, float, bool or str)."""
    value = _require(data, key, path)
    expected = {int: "iu", float: "fiu", bool: "b", str: "U"}[kind]
    if value.shape != () or value.dtype.kind not in expected:
        raise ValueError(
            f"{os.fspath(path)!r}: entry {key!r} must be a single {kind.__name__}; found "
            f"{value.dtype} of shape {value.shape}"
        )
    return kind(value)


def _array(
    data: Mapping, key: str, path, kinds: str, ndim: int, finite: bool = True
) -> np.ndarray:
    """Entry ``key``: an ``ndim``-dimensional array of dtype kind in ``kinds`` (finite)."""
    value = _require(data, key, path)
    if value.ndim != ndim or value.dtype.kind not in kinds:
        what = {"f": "floats", "iu": "integers", "U": "strings", "fiu": "numbers"}[kinds]
        raise ValueError(
            f"{os.fspath(path)!r}: entry {key!r} must be a {ndim}-d array of {what}; found "
            f"{value.dtype} of shape {value.shape}"
        )
    if finite:
        _check_finite(value, key, path)
    return value


def _check_finite(value: np.ndarray, key: str, path) -> None:
    if value.dtype.kind in "fc" and not np.all(np.isfinite(value)):
        raise ValueError(f"{os.fspath(path)!r}: entry {key!r} holds NaN or infinite values")


def _check_support(value, support, key: str, path) -> None:
    """Raise unless ``value`` is finite and lies in the NumPyro constraint ``support``."""
    _check_finite(np.asarray(value), key, path)
    if not bool(np.all(support.check(jnp.asarray(value)))):
        raise ValueError(
            f"{os.fspath(path)!r}: entry {key!r} has values outside the model's support "
            f"{support}"
        )


# -- scenes -----------------------------------------------------------------------------


def _frame_arrays(frame: Frame) -> dict[str, np.ndarray]:
    out = {
        "frame_shape": np.asarray(frame.shape, dtype=np.int64),
        "frame_channels": np.asarray(frame.channels, dtype=str),
    }
    if frame.channel_map:
        out["frame_channel_map"] = np.asarray(frame.channel_map, dtype=str)
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


def _wcs_from(data: Mapping, header: str, shape: tuple[int, int, int], path):
    from astropy.io import fits
    from astropy.wcs import WCS

    crpix = _array(data, "frame_wcs_crpix", path, "f", 1)
    crval = _array(data, "frame_wcs_crval", path, "f", 1)
    pc = _array(data, "frame_wcs_pc", path, "f", 2)
    cdelt = _array(data, "frame_wcs_cdelt", path, "f", 1)
    lonpole, latpole = _array(data, "frame_wcs_poles", path, "f", 1)
    try:
        wcs = WCS(fits.Header.fromstring(header))
        # the header keeps ~14 significant digits: restore the linear part exactly
        wcs.wcs.crpix = crpix
        wcs.wcs.crval = crval
        if wcs.wcs.has_cd():
            wcs.wcs.cd = pc * cdelt[:, None]
        else:
            wcs.wcs.pc = pc
            wcs.wcs.cdelt = cdelt
        wcs.wcs.lonpole, wcs.wcs.latpole = float(lonpole), float(latpole)
        wcs.wcs.set()
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(
            f"{os.fspath(path)!r}: the entries frame_wcs* do not make a valid WCS "
            f"({type(err).__name__}: {err})"
        ) from None
    wcs.pixel_shape = (shape[2], shape[1])
    return wcs


def _frame_from(data: Mapping, path) -> Frame:
    shape = tuple(int(s) for s in _array(data, "frame_shape", path, "iu", 1))
    channels = [str(c) for c in _array(data, "frame_channels", path, "U", 1)]
    header = _scalar(data, "frame_wcs", path, str)
    wcs = _wcs_from(data, header, shape, path) if header else None
    channel_map = None
    if "frame_channel_map" in data:
        pairs = _array(data, "frame_channel_map", path, "U", 2)
        if pairs.shape[1] != 2:
            raise ValueError(
                f"{os.fspath(path)!r}: entry 'frame_channel_map' must hold (name, channel) "
                f"pairs, shape (k, 2); found shape {pairs.shape}"
            )
        channel_map = {str(k): str(v) for k, v in pairs}
    try:
        frame = Frame(shape, wcs=wcs, channels=channels, channel_map=channel_map)
    except ValueError as err:
        raise ValueError(f"{os.fspath(path)!r}: the frame entries are not valid: {err}") from None
    if "frame_psf" in data:
        psf = _array(data, "frame_psf", path, "f", 3)
        # set as stored: Frame's check (normalisation, centring) already ran when saved
        frame = eqx.tree_at(lambda f: f.psf, frame, jnp.asarray(psf), is_leaf=lambda x: x is None)
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
    kind = _scalar(data, p + "kind", path, str)
    if kind not in _KINDS:
        raise ValueError(f"{os.fspath(path)!r}: source {i} has unknown kind {kind!r}")
    values = {key[len(p) :]: data[key] for key in data if key.startswith(p)}
    try:
        source = _KINDS[kind].from_persisted(values)
    except KeyError as missing:
        raise ValueError(
            f"{os.fspath(path)!r} lacks the entry {p + missing.args[0]!r}: the file is "
            "incomplete"
        ) from None
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"{os.fspath(path)!r}: source {i} (entries {p}*) is not a valid {kind}: {err}"
        ) from None
    parameters = source.parameters()
    for name, prior in source.default_priors().items():
        _check_support(parameters[name], prior.support, p + name, path)
    return source


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
    FileNotFoundError
        If there is no file at ``path``.
    ValueError
        If the file is not a valid scene file (see "Writing and reading safely" in the
        module docstring): not a complete archive, another format or version, an
        incomplete file, or values outside the model's constraints.
    """
    data = _read_npz(path, SCENE_FORMAT)
    for key, value in data.items():
        _check_finite(value, key, path)
    frame = _frame_from(data, path)
    n = _scalar(data, "n_sources", path, int)
    if n < 0:
        raise ValueError(f"{os.fspath(path)!r}: entry 'n_sources' is negative ({n})")
    groups = None
    if "groups" in data:
        groups = [int(g) for g in _array(data, "groups", path, "iu", 1)]
    sources = [_source_from(i, data, path) for i in range(n)]
    try:
        return Scene(frame, sources, groups)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{os.fspath(path)!r} does not make a valid scene: {err}") from None


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
    FileNotFoundError
        If there is no file at ``path``.
    ValueError
        If the file is not a valid fit file (as for :func:`load_scene`), or its
        parameters do not match the model's latent sites (names, shapes, supports).
    """
    if not isinstance(model, SceneModel):
        raise TypeError(f"load_fit needs the SceneModel, got {type(model).__name__}")
    data = _read_npz(path, FIT_FORMAT)
    names = [str(n) for n in _array(data, "param_names", path, "U", 1)]
    sites = {site.name: site for site in model.site_table()}
    if sorted(names) != sorted(sites):
        raise ValueError(
            f"the fit in {os.fspath(path)!r} has sites {sorted(names)}, the model has "
            f"{sorted(sites)}: it was made for another model"
        )
    params = {}
    for name in names:
        key = f"param_{name}"
        value = _require(data, key, path)
        if value.shape != tuple(np.shape(sites[name].init)):
            raise ValueError(
                f"site {name!r} has shape {value.shape} in {os.fspath(path)!r} but "
                f"{tuple(np.shape(sites[name].init))} in the model"
            )
        if value.dtype.kind != "f":
            raise ValueError(
                f"{os.fspath(path)!r}: entry {key!r} must hold floats; found {value.dtype}"
            )
        _check_support(value, sites[name].prior.support, key, path)
        params[name] = jnp.asarray(value)
    losses = _array(data, "losses", path, "fiu", 1, finite=False)  # a step may diverge
    return MAPResult(
        model=model,
        params=params,
        losses=np.asarray(losses),
        best_iteration=_scalar(data, "best_iteration", path, int),
        converged=_scalar(data, "converged", path, bool),
        decrement=_scalar(data, "decrement", path, float) if "decrement" in data else np.nan,
        iterations=_scalar(data, "iterations", path, int) if "iterations" in data else len(losses),
        method=_scalar(data, "method", path, str) if "method" in data else "adam",
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
        data (``InferenceData``, or ``xarray.DataTree`` with ArviZ 1.x). Written to a
        temporary file beside ``path`` that then replaces it.
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
    with atomic_path(path) as tmp:
        idata.to_netcdf(os.fspath(tmp))


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

    Raises
    ------
    FileNotFoundError
        If there is no file at ``path``.
    ValueError
        If the file is not netCDF, ArviZ cannot read it (e.g. truncated), or it has no
        ``posterior`` group of finite draws.
    """
    import arviz as az

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no posterior file at {path!r}")
    bad = f"{path!r} is not a valid mobs_ppl posterior file"
    with open(path, "rb") as f:
        magic = f.read(8)
    if not magic.startswith(_NETCDF_MAGIC):
        raise ValueError(f"{bad}: it is not a netCDF file (it starts with {magic[:4]!r})")
    try:
        if "data.load" in az.rcParams:
            # read everything and close the file (ArviZ 0.x opens lazily by default)
            with az.rc_context({"data.load": "eager"}):
                idata = az.from_netcdf(path)
        else:  # pragma: no cover - ArviZ 1.x
            idata = az.from_netcdf(path)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise ValueError(
            f"{bad}: ArviZ cannot read it ({type(err).__name__}: {err}); it may be truncated"
        ) from None
    _check_posterior(idata, bad)
    return idata


#: First bytes of a netCDF-4 (HDF5) and of a classic netCDF file.
_NETCDF_MAGIC = (b"\x89HDF\r\n\x1a\n", b"CDF\x01", b"CDF\x02", b"CDF\x05")


def _check_posterior(idata, bad: str) -> None:
    """Raise unless ``idata`` has a ``posterior`` group whose numbers are all finite."""
    if "posterior" not in idata.groups() or not list(idata["posterior"].data_vars):
        raise ValueError(f"{bad}: it has no posterior group with draws")
    for name, variable in idata["posterior"].data_vars.items():
        values = np.asarray(variable.values)
        if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
            raise ValueError(f"{bad}: the posterior variable {name!r} holds NaN or infinite values")
