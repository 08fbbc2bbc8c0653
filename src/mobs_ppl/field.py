"""A field described by a TOML file, and its joint fit: what ``mobs-ppl fit`` runs.

:func:`load_field` reads and checks the file (the schema is documented in
``docs/cli.md``; ``mobs_ppl/data/field_example.toml`` is an example), with every path
relative to the file. :func:`load_observations` builds the observations from their FITS
files and :func:`fit_field` runs the user flow of the tutorial on them -- model frame,
noise models, sources, forced photometry, MAP with fitted shifts, marginal Laplace
errors, optionally NUTS -- and writes the results folder (``summary.json``, validated
by ``mobs_ppl/data/summary.schema.json``; ``sources.ecsv``; the scene and fit;
``posterior.nc`` when sampled; plots in each observation's native pixels).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import sys
import time
import tomllib
from collections.abc import Callable
from importlib import resources

__all__ = [
    "FieldConfig",
    "ObservationConfig",
    "SampleConfig",
    "SourcesConfig",
    "FieldRun",
    "fit_field",
    "load_field",
    "load_observations",
    "read_toml",
    "run_field",
    "summary_schema",
    "write_results",
]

#: Observation names become file names: letters, digits, ``_ . -``.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

_TOP_KEYS = ("frame", "observation", "sources", "fit", "sample")
_FRAME_KEYS = ("coverage", "channels", "channel_map")
_OBSERVATION_KEYS = (
    "name",
    "data",
    "hdu",
    "psf",
    "psf_hdu",
    "weights",
    "weights_hdu",
    "channels",
    "resample",
    "noise",
    "shift_prior_arcsec",
    "calibration_prior",
)
_SOURCES_KEYS = ("detect_on", "catalog", "image_type", "n_sigma")
_FIT_KEYS = ("max_iter", "seed")
_SAMPLE_KEYS = ("sites", "num_warmup", "num_samples", "num_chains")


@dataclasses.dataclass(frozen=True)
class ObservationConfig:
    """One ``[[observation]]`` table: files (absolute paths) and settings.

    ``weights`` is ``"estimate"`` or the path of a FITS file of inverse variances;
    ``shift_prior_arcsec`` is ``None`` for an astrometric reference,
    ``calibration_prior`` (the LogNormal width of a photometric scale per channel) for a
    photometric one. ``data`` and ``psf`` are ``None`` for an observation given in
    memory (``fit_field(..., observations=...)``, as ``mobs-ppl demo`` does).
    """

    name: str
    data: pathlib.Path | None
    psf: pathlib.Path | None
    channels: tuple[str, ...]
    weights: pathlib.Path | str = "estimate"
    hdu: int | None = None
    psf_hdu: int | None = None
    weights_hdu: int | None = None
    resample: bool = False
    noise: str = "independent"
    shift_prior_arcsec: float | None = None
    calibration_prior: float | None = None


@dataclasses.dataclass(frozen=True)
class SourcesConfig:
    """The ``[sources]`` table: detection on one or more observations, or a catalogue.

    ``detect_on`` names the observations detected on, jointly, in that order (the first
    gives the sources, the later ones add what it misses); an entry that is a tuple of
    names is a group (epochs of the same bands) detected on as one, on its first
    member's pixels (:func:`mobs_ppl.init.from_observations`). ``image_types`` holds
    one detection kind (``"space"`` or ``"ground"``) per entry, or one for the
    catalogue. :attr:`detected_names` lists every name, groups flattened.
    """

    detect_on: tuple[str | tuple[str, ...], ...] | None = None
    catalog: pathlib.Path | None = None
    image_types: tuple[str, ...] = ("space",)
    n_sigma: float = 5.0

    @property
    def detected_names(self) -> tuple[str, ...]:
        """Every observation named by ``detect_on``, groups flattened (empty without)."""
        names = []
        for entry in self.detect_on or ():
            names += [entry] if isinstance(entry, str) else list(entry)
        return tuple(names)


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    """The ``[sample]`` table: NUTS after the MAP."""

    sites: tuple[str, ...] = ("spectrum", "shift")
    num_warmup: int = 300
    num_samples: int = 300
    num_chains: int = 2


@dataclasses.dataclass(frozen=True)
class FieldConfig:
    """A checked field file (see :func:`load_field`); ``path`` is ``None`` when built in code."""

    path: pathlib.Path | None
    observations: tuple[ObservationConfig, ...]
    sources: SourcesConfig
    coverage: str = "union"
    channels: str = "separate"
    channel_map: tuple[tuple[str, str], ...] = ()
    max_iter: int | None = None
    seed: int = 0
    sample: SampleConfig | None = None

    @property
    def references(self) -> tuple[str, ...]:
        """Names of the observations without a fitted shift."""
        return tuple(o.name for o in self.observations if o.shift_prior_arcsec is None)


# -- reading and checking -----------------------------------------------------------------


class _Table:
    """A TOML table being checked: ``where`` names it in messages (with the file)."""

    def __init__(self, values, where: str, file: pathlib.Path, allowed, required=()):
        self.file, self.where = file, where
        if not isinstance(values, dict):
            self.fail(f"{where} must be a table; got {type(values).__name__} {values!r}")
        unknown = [k for k in values if k not in allowed]
        if unknown:
            self.fail(f"unknown key {unknown[0]!r} in {where}; valid keys: {', '.join(allowed)}")
        missing = [k for k in required if k not in values]
        if missing:
            self.fail(f"{where} needs the key {missing[0]!r}")
        self.values = values

    def fail(self, message: str, kind: type[Exception] = ValueError):
        raise kind(f"{self.file}: {message}")

    def get(self, key: str, kinds, default=None, what: str | None = None):
        """The value of ``key`` (``default`` if absent), which must be of ``kinds``."""
        if key not in self.values:
            return default
        value = self.values[key]
        kinds = kinds if isinstance(kinds, tuple) else (kinds,)
        is_bool = isinstance(value, bool)
        if not isinstance(value, kinds) or (is_bool and bool not in kinds):
            names = what or " or ".join(k.__name__ for k in kinds)
            self.fail(
                f"{key} in {self.where} must be {names}; got {type(value).__name__} {value!r}",
                TypeError,
            )
        return value

    def count(self, key: str, minimum: int, default=None):
        """A whole number of at least ``minimum``."""
        value = self.get(key, int, default, what="an integer")
        if value is not None and value < minimum:
            self.fail(f"{key} in {self.where} must be at least {minimum}; got {value}")
        return value

    def choice(self, key: str, options: tuple[str, ...], default: str) -> str:
        """One of ``options``."""
        value = self.get(key, str, default, what="a string")
        if value not in options:
            self.fail(
                f"{key} in {self.where} must be one of {', '.join(map(repr, options))}; "
                f"got {value!r}"
            )
        return value

    def strings(self, key: str, default=None) -> tuple[str, ...] | None:
        """A non-empty list of distinct strings."""
        value = self.get(key, list, default, what="a list of strings")
        if value is None:
            return None
        if not value or not all(isinstance(v, str) and v for v in value):
            self.fail(f"{key} in {self.where} must be a non-empty list of strings; got {value!r}")
        if len(set(value)) != len(value):
            self.fail(f"{key} in {self.where} has repeated entries: {value!r}")
        return tuple(value)

    def file_path(self, key: str, default=None) -> pathlib.Path | None:
        """An existing file, relative to the field file's folder."""
        value = self.get(key, str, default, what="a file name (string)")
        if value is None:
            return None
        path = (self.file.parent / value).resolve()
        if not path.is_file():
            self.fail(f"{key} in {self.where}: no such file {str(path)!r}", FileNotFoundError)
        return path


def read_toml(path, what: str) -> tuple[pathlib.Path, dict]:
    """``(absolute path, content)`` of a TOML file; errors say ``what`` it is.

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    ValueError
        On a TOML syntax error (the message names the file).
    """
    file = pathlib.Path(path).resolve()
    if not file.is_file():
        raise FileNotFoundError(f"no such {what} {str(file)!r}")
    try:
        return file, tomllib.loads(file.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{file}: not valid TOML ({err})") from None


def load_field(path) -> FieldConfig:
    """Read and check a field file (TOML; schema in ``docs/cli.md``).

    Parameters
    ----------
    path : str or path-like
        The TOML file. Paths inside it are relative to its folder.

    Returns
    -------
    FieldConfig
        The checked settings, with absolute paths of files that exist.

    Raises
    ------
    FileNotFoundError
        If the file, or a file it names, does not exist.
    ValueError
        On a TOML syntax error, an unknown key (the message lists the valid ones), a
        missing key, a bad value, or inconsistent settings (``catalog`` together with
        ``detect_on``, a shift prior on every observation, ...). Messages name the file.
    TypeError
        If a value has the wrong type.
    """
    file, raw = read_toml(path, "field file")
    top = _Table(raw, "the field file", file, _TOP_KEYS, required=("observation",))
    entries = top.get("observation", list, what="an array of tables [[observation]]")
    if not entries:
        top.fail("at least one [[observation]] is needed")
    observations = tuple(_observation(e, k, file) for k, e in enumerate(entries, start=1))
    names = [o.name for o in observations]
    if len(set(names)) != len(names):
        top.fail(f"observation names must be unique; got {names}")
    if all(o.shift_prior_arcsec is not None for o in observations):
        top.fail(
            "every [[observation]] has a shift_prior_arcsec: the whole scene could move "
            "instead; leave it out of at least one, the astrometric reference"
        )
    if all(o.calibration_prior is not None for o in observations):
        top.fail(
            "every [[observation]] has a calibration_prior: every spectrum could scale "
            "instead; leave it out of at least one, the photometric reference"
        )
    frame = _Table(top.get("frame", dict, {}), "[frame]", file, _FRAME_KEYS)
    fit = _Table(top.get("fit", dict, {}), "[fit]", file, _FIT_KEYS)
    sample = None
    if "sample" in raw:
        table = _Table(top.get("sample", dict), "[sample]", file, _SAMPLE_KEYS)
        sample = SampleConfig(
            sites=table.strings("sites", list(SampleConfig.sites)),
            num_warmup=table.count("num_warmup", 0, SampleConfig.num_warmup),
            num_samples=table.count("num_samples", 1, SampleConfig.num_samples),
            num_chains=table.count("num_chains", 1, SampleConfig.num_chains),
        )
    return FieldConfig(
        path=file,
        observations=observations,
        sources=_sources(top.get("sources", dict, {}), file, observations),
        coverage=frame.choice("coverage", ("union", "intersection"), "union"),
        channels=frame.choice("channels", ("separate", "shared"), "separate"),
        channel_map=_channel_map(frame),
        max_iter=fit.count("max_iter", 1),
        seed=fit.get("seed", int, 0, what="an integer"),
        sample=sample,
    )


def _channel_map(frame: _Table) -> tuple[tuple[str, str], ...]:
    """``[frame] channel_map``: observation channel name -> model channel, as pairs."""
    mapping = frame.get("channel_map", dict, {}, what='a table, e.g. {"HSC-i" = "i"}')
    bad = [k for k, v in mapping.items() if not (isinstance(v, str) and v)]
    if bad:
        frame.fail(f"channel_map in [frame] must map names to names; {bad[0]!r} does not")
    if mapping and frame.values.get("channels") != "shared":
        frame.fail(
            'channel_map in [frame] says which bands are the same: it needs channels = "shared"'
        )
    return tuple(sorted(mapping.items()))


def _observation(values, k: int, file: pathlib.Path) -> ObservationConfig:
    where = f"[[observation]] #{k}"
    if isinstance(values, dict) and isinstance(values.get("name"), str):
        where += f" ({values['name']!r})"
    table = _Table(values, where, file, _OBSERVATION_KEYS, ("name", "data", "psf"))
    name = table.get("name", str, what="a string")
    if not _NAME.match(name):
        table.fail(
            f"name in {table.where} must be letters, digits, '_', '.' or '-' (it names "
            f"files); got {name!r}"
        )
    weights = table.get("weights", str, "estimate", what="'estimate' or a file name")
    shift = table.get("shift_prior_arcsec", (int, float), what="a number (arcsec)")
    if shift is not None and not 0 < shift < float("inf"):
        table.fail(f"shift_prior_arcsec in {table.where} must be positive; got {shift!r}")
    calibration = table.get("calibration_prior", (int, float), what="a number (log width)")
    if calibration is not None and not 0 < calibration < float("inf"):
        table.fail(f"calibration_prior in {table.where} must be positive; got {calibration!r}")
    resample = table.get("resample", bool, False, what="true or false")
    noise = table.choice("noise", ("independent", "measured"), "independent")
    if resample and "noise" in table.values:
        table.fail(
            f"noise in {table.where} cannot be set with resample = true: the resampled "
            "observation's noise model is the exact one of its native data; drop noise"
        )
    return ObservationConfig(
        name=name,
        data=table.file_path("data"),
        psf=table.file_path("psf"),
        channels=table.strings("channels") or (),  # absent: NAME_0, NAME_1, ...
        weights=weights if weights == "estimate" else table.file_path("weights"),
        hdu=table.count("hdu", 0),
        psf_hdu=table.count("psf_hdu", 0),
        weights_hdu=table.count("weights_hdu", 0),
        resample=resample,
        noise=noise,
        shift_prior_arcsec=None if shift is None else float(shift),
        calibration_prior=None if calibration is None else float(calibration),
    )


def _sources(values, file: pathlib.Path, observations) -> SourcesConfig:
    table = _Table(values, "[sources]", file, _SOURCES_KEYS)
    names = [o.name for o in observations]
    detect_on = table.get("detect_on", (str, list), what="an observation name or a list of them")
    if isinstance(detect_on, str):
        detect_on = (detect_on,)
    elif detect_on is not None:
        detect_on = _detect_on_entries(table, detect_on)
    if detect_on is not None and "catalog" in table.values:
        table.fail(
            "[sources] has both detect_on and catalog: give one (catalog positions take "
            "their footprints from the first reference observation)"
        )
    if detect_on is None and "catalog" not in table.values:
        detect_on = (names[0],)
    flat = SourcesConfig(detect_on=detect_on).detected_names
    unknown = [d for d in flat if d not in names]
    if unknown:
        table.fail(f"detect_on in [sources] names no observation: {unknown[0]!r}; known: {names}")
    image_types = table.get("image_type", (str, list), "space", what="a string or a list of them")
    image_types = (image_types,) if isinstance(image_types, str) else tuple(image_types)
    wanted = len(detect_on) if detect_on is not None else 1
    if len(image_types) == 1:
        image_types = image_types * wanted
    if len(image_types) != wanted or any(t not in ("space", "ground") for t in image_types):
        table.fail(
            "image_type in [sources] must be 'space' or 'ground', or a list of them with one "
            f"per detect_on entry ({wanted}); got {table.values['image_type']!r}"
        )
    n_sigma = table.get("n_sigma", (int, float), 5.0, what="a number")
    if not n_sigma > 0:
        table.fail(f"n_sigma in [sources] must be positive; got {n_sigma!r}")
    return SourcesConfig(
        detect_on=detect_on,
        catalog=table.file_path("catalog"),
        image_types=image_types,
        n_sigma=float(n_sigma),
    )


def _detect_on_entries(table: _Table, values: list) -> tuple[str | tuple[str, ...], ...]:
    """``detect_on`` as a list: names, or lists of names (groups: epochs detected on as one).

    A group of one name is that name. Every name appears once, groups included.
    """
    what = "a non-empty list of observation names or of lists of them (groups)"
    if not values:
        table.fail(f"detect_on in [sources] must be {what}; got []")
    entries = []
    for k, value in enumerate(values, start=1):
        if isinstance(value, str) and value:
            entries.append(value)
            continue
        if not isinstance(value, list):
            table.fail(f"detect_on in [sources] must be {what}; entry #{k} is {value!r}")
        if not value:
            table.fail(
                f"detect_on in [sources]: entry #{k} is an empty group; a group lists the "
                'observations detected on as one, e.g. ["HSC1", "HSC2"]'
            )
        if not all(isinstance(v, str) and v for v in value):
            table.fail(
                f"detect_on in [sources]: group #{k} must hold observation names only (no "
                f"nested groups); got {value!r}"
            )
        entries.append(value[0] if len(value) == 1 else tuple(value))
    flat = SourcesConfig(detect_on=tuple(entries)).detected_names
    if len(set(flat)) != len(flat):
        table.fail(f"detect_on in [sources] has repeated entries: {values!r}")
    return tuple(entries)


# -- observations -------------------------------------------------------------------------


def _crop_psf(psf, data_shape):
    """Cut equal margins off a PSF wider than ``2 n - 1`` pixels for an image of ``n``.

    Farther light never links two pixels of the image.
    """
    out = psf
    for axis, side in ((-2, data_shape[-2]), (-1, data_shape[-1])):
        margin = max(0, (out.shape[axis] - (2 * side - 1)) // 2)
        if margin:
            index = [slice(None)] * out.ndim
            index[axis] = slice(margin, out.shape[axis] - margin)
            out = out[tuple(index)]
    return out


def _observation_from(config: ObservationConfig):
    import numpy as np
    from astropy.wcs import WCS

    from .datasets import _prepare_psf, _read
    from .observation import Observation

    data, header = _read(config.data, config.hdu)
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise ValueError(f"{config.data}: data must be an image or a cube; got shape {data.shape}")
    if config.channels and len(config.channels) != data.shape[0]:
        raise ValueError(
            f"observation {config.name!r}: channels lists {len(config.channels)} names but "
            f"{config.data} has {data.shape[0]} channels; give one name per channel"
        )
    channels = list(config.channels) or [f"{config.name}_{c}" for c in range(data.shape[0])]
    wcs = WCS(header).celestial
    if not wcs.has_celestial:
        raise ValueError(f"{config.data}: its header has no celestial WCS")
    psf, _ = _read(config.psf, config.psf_hdu)
    psf = _prepare_psf(_crop_psf(psf, data.shape), config.name)
    # "estimate": the Observation's own default (estimate_weights from the background)
    weights = None if config.weights == "estimate" else _read(config.weights, config.weights_hdu)[0]
    bad = ~np.isfinite(data)
    try:
        return Observation(
            data,
            weights=weights,
            psf=psf,
            wcs=wcs,
            channels=channels,
            name=config.name,
            mask=bad if bad.any() else None,
        )
    except ValueError as err:  # e.g. weights of another shape: say which observation
        raise ValueError(f"observation {config.name!r} ({config.data}): {err}") from err


def load_observations(config: FieldConfig) -> list:
    """The field's observations, read from their FITS files.

    Data come from the first HDU holding an image (or ``hdu``), the WCS from its header
    (celestial part). The PSF is cropped to at most ``2 n - 1`` pixels per axis for
    an image of ``n`` pixels (farther light cannot link two of its pixels), divided by
    its sum per channel and its peak rolled onto the array centre. Weights are
    estimated from the background (:func:`mobs_ppl.estimate_weights`) or read as
    inverse variances; non-finite pixels are masked.
    """
    return [_observation_from(o) for o in config.observations]


def _catalog(path: pathlib.Path):
    from astropy.coordinates import SkyCoord
    from astropy.table import Table

    try:
        table = Table.read(path, format="ascii.csv")
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable CSV catalogue ({err})") from None
    missing = [c for c in ("ra", "dec") if c not in table.colnames]
    if missing:
        raise ValueError(
            f"{path}: the catalogue needs columns ra and dec (degrees); missing {missing}, "
            f"found {table.colnames}"
        )
    return SkyCoord(table["ra"], table["dec"], unit="deg")


# -- the run ------------------------------------------------------------------------------


def summary_schema() -> dict:
    """The JSON schema of ``summary.json`` (``mobs_ppl/data/summary.schema.json``)."""
    text = resources.files("mobs_ppl").joinpath("data", "summary.schema.json").read_text()
    return json.loads(text)


def _versions() -> dict[str, str]:
    import jax
    import numpyro

    from . import __version__

    return {
        "mobs_ppl": __version__,
        "jax": jax.__version__,
        "numpyro": numpyro.__version__,
        "python": sys.version.split()[0],
    }


def _finite_or_none(values):
    """A nested list with NaN / inf as ``None`` (JSON has no NaN)."""
    import numpy as np

    arr = np.asarray(values, float)
    if arr.ndim == 0:
        return float(arr) if np.isfinite(arr) else None
    return [_finite_or_none(v) for v in arr]


def _sky_offset(native_frame, native_shift) -> list[float]:
    """``(dRA cos dec, dDec)`` in arcsec of a native-pixel shift at the image centre."""
    import astropy.units as u

    _, h, w = native_frame.shape
    cy, cx = (h - 1) / 2, (w - 1) / 2
    start = native_frame.pixel_to_sky(cy, cx)
    end = native_frame.pixel_to_sky(cy + native_shift[0], cx + native_shift[1])
    d_ra, d_dec = start.spherical_offsets_to(end)
    return [float(d_ra.to_value(u.arcsec)), float(d_dec.to_value(u.arcsec))]


def _scene_sources(config: FieldConfig, observations, frame, log):
    from . import init

    by_name = {o.name: o for o in observations}
    if config.sources.catalog is not None:
        first = by_name[config.references[0]]
        scene = init.from_observation(
            first,
            frame,
            catalog=_catalog(config.sources.catalog),
            image_type=config.sources.image_types[0],
            n_sigma=config.sources.n_sigma,
        )
        origins = (first.name,)
        log(f"{scene.n_groups} sources from the catalogue, footprints from {first.name}")
    else:
        detect_on = config.sources.detect_on
        entries = [
            by_name[entry] if isinstance(entry, str) else [by_name[name] for name in entry]
            for entry in detect_on
        ]
        if len(entries) == 1:
            scene = init.from_observation(
                entries[0],
                frame,
                image_type=config.sources.image_types[0],
                n_sigma=config.sources.n_sigma,
            )
        else:
            scene = init.from_observations(
                entries,
                frame,
                image_types=list(config.sources.image_types),
                n_sigma=config.sources.n_sigma,
            )
        origins = config.sources.detected_names
        described = [e if isinstance(e, str) else "+".join(e) for e in detect_on]
        log(f"{scene.n_groups} sources detected on {' and '.join(described)}")
    return scene, origins


def _noise_model(config: ObservationConfig, obs, frame):
    from .correlated import CorrelatedObservation

    if config.resample:
        return CorrelatedObservation.from_observation(obs, resample_to_frame=frame)
    if config.noise == "measured":
        return CorrelatedObservation.from_observation(obs)
    return obs


def _group_rows(scene, frame):
    """Per galaxy: sky position of its first component and the box of all of them."""
    import numpy as np

    rows = []
    for g in range(scene.n_groups):
        members = [scene.sources[i] for i in scene.members(g)]
        y, x = np.asarray(members[0].center, float)
        lo = np.min([s.origin for s in members], axis=0)
        hi = np.max([np.add(s.origin, s.box_shape) for s in members], axis=0)
        rows.append({"y": y, "x": x, "sky": frame.pixel_to_sky(y, x), "box": (lo, hi)})
    return rows


@dataclasses.dataclass(frozen=True)
class FieldRun:
    """A field fitted in memory (:func:`run_field`), ready to be written.

    ``state`` holds the stages' products (``native`` observations, ``frame``, noise
    ``models``, ``scene``, ``model``, ``fit``, ``laplace``, ``idata``); ``timing`` the
    seconds per stage.
    """

    config: FieldConfig
    state: dict
    timing: dict

    @property
    def fit(self):
        """The :class:`~mobs_ppl.MAPResult`."""
        return self.state["fit"]

    @property
    def laplace(self):
        """The marginal :class:`~mobs_ppl.LaplaceApproximation`, or ``None``."""
        return self.state["laplace"]

    @property
    def idata(self):
        """The NUTS ``InferenceData``, or ``None`` when not sampled."""
        return self.state["idata"]


def run_field(
    config: FieldConfig,
    observations=None,
    log: Callable[[str], None] = print,
    progress_bar: bool = False,
) -> FieldRun:
    """Fit a field jointly, in memory (the stages of :func:`fit_field`).

    Parameters
    ----------
    config : FieldConfig
        From :func:`load_field`, or built in code.
    observations : sequence of Observation, optional
        The native observations, in the order and with the names of
        ``config.observations``; default: read from their files.
    log : callable
        Receives progress lines.
    progress_bar : bool
        Show progress bars of the MAP and of NUTS (tqdm, on stderr).

    Returns
    -------
    FieldRun
    """
    state: dict = {"progress_bar": progress_bar}
    timing: dict[str, float] = {}
    if observations is not None:
        names = [o.name for o in observations]
        expected = [o.name for o in config.observations]
        if names != expected:
            raise ValueError(
                f"observations {names} do not match the field's observations {expected} "
                "(names, in order)"
            )
        state["native"] = list(observations)
    stages = (
        ("load", _stage_load),
        ("frame", _stage_frame),
        ("noise_models", _stage_noise),
        ("sources", _stage_sources),
        ("fit_map", _stage_fit),
        ("laplace", _stage_laplace),
        ("sample", _stage_sample),
    )
    for name, stage in stages:
        start = time.perf_counter()
        if stage(config, state, log) is not False:
            timing[f"{name}_s"] = time.perf_counter() - start
    return FieldRun(config, state, timing)


def write_results(run: FieldRun, folder, extra: Callable[[dict], dict] | None = None) -> dict:
    """Write a fitted field's files into ``folder``; returns the summary written.

    ``summary.json`` (last, so that its presence means the rest is there),
    ``sources.ecsv``, ``scene.npz``, ``fit.npz``, ``posterior.nc`` when sampled, and
    a scene plot per observation in its native pixels. ``folder`` should be a staged
    folder (:func:`mobs_ppl.atomic.staged_folder`) so that readers never see half of it.
    ``extra(summary)``, if given, returns entries added to the summary before it is
    written (``mobs-ppl demo`` adds the truth of its simulated field).
    """
    from . import atomic

    folder = pathlib.Path(folder)
    start = time.perf_counter()
    _write(folder, run.state)
    timing = {**run.timing, "write_s": time.perf_counter() - start}
    summary = _summary(run.config, run.state, timing)
    if extra is not None:
        summary.update(extra(summary))
    atomic.write_text(folder / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def fit_field(
    config: FieldConfig,
    out_dir,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    observations=None,
    progress_bar: bool = False,
) -> dict:
    """Fit a field jointly and write its results folder.

    Parameters
    ----------
    config : FieldConfig
        From :func:`load_field`.
    out_dir : path-like
        The results folder, written as a whole (:func:`mobs_ppl.atomic.staged_folder`).
    overwrite : bool
        Allow replacing an ``out_dir`` with other content (which is deleted).
    log : callable
        Receives progress lines.
    observations : sequence of Observation, optional
        The observations already in memory (see :func:`run_field`).
    progress_bar : bool
        Show progress bars of the MAP and of NUTS.

    Returns
    -------
    dict
        The content of ``summary.json``.

    Notes
    -----
    The flow of ``tutorials/02_multi_observation.py``: a model frame over all
    observations (``[frame] coverage``); noise models (``resample = true``: resampled
    once onto the frame with the exact correlated noise of the native data;
    ``noise = "measured"``: correlations measured from the data; otherwise independent
    pixels); sources detected on one or more observations or placed at catalogue
    positions; forced photometry in every other observation; MAP
    (:func:`mobs_ppl.fit_map`) with a shift for each observation that has
    ``shift_prior_arcsec``; marginal error bars from :func:`mobs_ppl.laplace` (every
    site free; only when the MAP is at the mode); optionally NUTS on ``[sample] sites``
    (the others held at the MAP, so those widths are conditional on them). The backend
    of the figures is the caller's choice.
    """
    from . import atomic

    atomic.check_replaceable(out_dir, overwrite)  # refuse before minutes of work
    run = run_field(config, observations, log, progress_bar)
    with atomic.staged_folder(out_dir, overwrite) as staged:
        summary = write_results(run, staged.path)
    log(f"wrote results to {staged.target}")
    return summary


def _stage_load(config, state, log):
    if "native" in state:  # given in memory
        return False
    state["native"] = load_observations(config)
    for obs in state["native"]:
        log(f"{obs.name}: {obs.shape} {', '.join(obs.channels)}, PSF {obs.psf.shape}")


def _stage_frame(config, state, log):
    from .frame import Frame

    state["frame"] = Frame.from_observations(
        state["native"],
        coverage=config.coverage,
        channels=config.channels,
        channel_map=dict(config.channel_map) or None,
    )
    log(f"model frame {state['frame'].shape}, channels {', '.join(state['frame'].channels)}")


def _stage_noise(config, state, log):
    state["models"] = [
        _noise_model(c, o, state["frame"])
        for c, o in zip(config.observations, state["native"], strict=True)
    ]


def _stage_sources(config, state, log):
    from . import measure

    scene, origins = _scene_sources(config, state["native"], state["frame"], log)
    for obs in state["models"]:
        if obs.name not in origins:  # the detections measured their own spectra
            scene = measure.forced_photometry(scene, obs)
    state["scene"] = scene


def _stage_fit(config, state, log):
    import astropy.units as u

    from .inference import fit_map
    from .model import SceneModel

    shifts = {
        c.name: c.shift_prior_arcsec * u.arcsec
        for c in config.observations
        if c.shift_prior_arcsec is not None
    }
    calibrations = {
        c.name: c.calibration_prior for c in config.observations if c.calibration_prior is not None
    }
    state["model"] = SceneModel(
        state["scene"], state["models"], shifts=shifts, calibrations=calibrations
    )
    fit = fit_map(
        state["model"],
        max_iter=config.max_iter,
        seed=config.seed,
        progress_bar=state["progress_bar"],
    )
    state["fit"] = fit
    log(
        f"MAP: {fit.iterations} steps, Newton decrement {fit.decrement:.3g}, "
        f"converged {fit.converged}"
    )


def _stage_laplace(config, state, log):
    from .laplace_approximation import laplace

    if not state["fit"].converged:
        log("no Laplace error bars: the MAP is not at the mode (raise [fit] max_iter)")
        state["laplace"] = None
        return False
    state["laplace"] = laplace(state["model"], state["fit"])


def _stage_sample(config, state, log):
    from .inference import sample

    state["idata"] = None
    if config.sample is None:
        return False
    s = config.sample
    post = sample(
        state["model"],
        init=state["fit"],
        sites=list(s.sites),
        num_warmup=s.num_warmup,
        num_samples=s.num_samples,
        num_chains=s.num_chains,
        seed=config.seed,
        progress_bar=state["progress_bar"],
    )
    state["idata"] = post.to_arviz(log_likelihood="none")
    # sites held at the MAP (e.g. morphologies): the NUTS widths are conditional on them
    state["nuts_conditional"] = bool(post.fixed)


def _posterior_sd(idata, name: str):
    import numpy as np

    if idata is None or name not in idata.posterior:
        return None
    return np.asarray(idata.posterior[name].std(dim=("chain", "draw")))


#: The posterior variables whose R-hat and ESS ``summary.json``'s diagnostics report.
DIAGNOSED_SITES = ("flux", "shift", "calibration")


def _diagnostics(idata) -> dict:
    import arviz as az
    import numpy as np

    # the physical quantities: the spectra of a galaxy's bulge and disk components can
    # trade light (their sum, the flux, is what the data measure) and mix slowly
    names = [v for v in DIAGNOSED_SITES if v in idata.posterior]
    table = az.summary(idata, var_names=names, kind="diagnostics", round_to="none")
    r_hat = np.asarray(table["r_hat"], float)
    ess = np.asarray(table["ess_bulk"], float)
    return {
        "max_r_hat": _finite_or_none(np.nanmax(r_hat) if np.isfinite(r_hat).any() else np.nan),
        "min_ess_bulk": _finite_or_none(np.nanmin(ess) if np.isfinite(ess).any() else np.nan),
        "divergences": int(np.asarray(idata.sample_stats["diverging"]).sum()),
    }


def _choose_sd(nuts, laplace, state):
    """The error bar reported by default, and its method.

    NUTS when it sampled every site (marginal); else the Laplace sd (marginal: every
    site free); else, when the MAP is not at the mode, NUTS that held some sites at the
    MAP, labelled ``"nuts_conditional"``; ``(None, None)`` without either.
    """
    conditional = state.get("nuts_conditional", False)
    if nuts is not None and not conditional:
        return nuts, "nuts"
    if laplace is not None:
        return laplace, "laplace"
    if nuts is not None:
        return nuts, "nuts_conditional"
    return None, None


def _calibration_entry(state, name: str, obs) -> dict:
    """Fitted photometric scale per channel of a calibrated observation, with its sd."""
    import numpy as np

    model, fit = state["model"], state["fit"]
    k = model.calibration_names.index(name)
    columns = [
        model.calibrated_channels.index(i) for i in state["frame"].channel_indices(obs.frame)
    ]
    laplace = None if state["laplace"] is None else state["laplace"].sd("calibration")[k]
    nuts = _posterior_sd(state["idata"], "calibration")
    sd, method = _choose_sd(None if nuts is None else nuts[k], laplace, state)
    entry = {"calibration": dict(zip(obs.channels, map(float, fit.calibration(name)), strict=True))}
    if sd is not None:
        sd = np.asarray(sd)[columns]
        entry["calibration_sd"] = dict(zip(obs.channels, _finite_or_none(sd), strict=True))
        entry["calibration_sd_method"] = method
    return entry


def _flux_errors(state):
    """``(groups, channels)`` flux sd and its method (see :func:`_choose_sd`)."""
    laplace = None if state["laplace"] is None else state["laplace"].sd("flux")
    return _choose_sd(_posterior_sd(state["idata"], "flux"), laplace, state)


def _summary(config, state, timing) -> dict:
    import numpy as np

    from . import measure

    fit, frame, approx, idata = state["fit"], state["frame"], state["laplace"], state["idata"]
    scene = fit.scene
    model = state["model"]
    observations, shift = {}, {}
    nuts_sd = _posterior_sd(idata, "shift_arcsec")
    nuts_sd_native = _posterior_sd(idata, "shift_native")
    for c, obs in zip(config.observations, state["native"], strict=True):
        native = fit.shift_native(c.name) if c.name in model.shift_names else None
        observations[c.name] = {
            "channels": list(obs.channels),
            "shape": list(obs.shape),
            "pixel_scale_arcsec": float(obs.frame.pixel_scale.to_value("arcsec")),
            "role": "reference" if native is None else "shifted",
            "noise": "resampled" if c.resample else c.noise,
            "chi2_dof": measure.goodness_of_fit(fit.scene_seen_by(c.name), obs, shift=native),
        }
        if c.name in model.calibration_names:
            observations[c.name].update(_calibration_entry(state, c.name, obs))
        if native is None:
            continue
        k = model.shift_names.index(c.name)
        laplace_sd = None if approx is None else approx.sd("shift_arcsec")[k]
        laplace_sd_native = None if approx is None else approx.sd("shift_native")[k]
        nuts_k = None if nuts_sd is None else nuts_sd[k]
        sd, method = _choose_sd(nuts_k, laplace_sd, state)
        sd_native, _ = _choose_sd(
            None if nuts_sd_native is None else nuts_sd_native[k], laplace_sd_native, state
        )
        shift[c.name] = {
            "prior_sd_arcsec": c.shift_prior_arcsec,
            "model_px": fit.shift(c.name).tolist(),
            "native_px": np.asarray(native).tolist(),
            "arcsec": fit.shift_arcsec(c.name).tolist(),
            "sky_arcsec": _sky_offset(obs.frame, native),
            "sd_arcsec": None if sd is None else _finite_or_none(sd),
            "sd_native_px": None if sd_native is None else _finite_or_none(sd_native),
            "sd_method": None if sd is None else method,
            "sd_arcsec_laplace": None if laplace_sd is None else _finite_or_none(laplace_sd),
            "sd_arcsec_nuts": None if nuts_k is None else _finite_or_none(nuts_k),
        }
    flux = np.asarray(scene.fluxes())
    flux_sd, flux_method = _flux_errors(state)
    sources = []
    for g, row in enumerate(_group_rows(scene, frame)):
        entry = {
            "id": g,
            "ra": float(row["sky"].ra.deg),
            "dec": float(row["sky"].dec.deg),
            "y_px": float(row["y"]),
            "x_px": float(row["x"]),
            "box_px": [int(v) for v in (*row["box"][0], *row["box"][1])],
            "flux": {ch: float(flux[g, i]) for i, ch in enumerate(frame.channels)},
        }
        if flux_sd is not None:
            entry["flux_sd"] = dict(zip(frame.channels, _finite_or_none(flux_sd[g]), strict=True))
        sources.append(entry)
    summary = {
        "field": None if config.path is None else str(config.path),
        "n_sources": scene.n_groups,
        "n_components": len(scene.sources),
        "frame": {
            "shape": list(frame.shape),
            "channels": list(frame.channels),
            "pixel_scale_arcsec": float(frame.pixel_scale.to_value("arcsec")),
        },
        "observations": observations,
        "shift": shift,
        "map": {
            "converged": bool(fit.converged),
            "decrement": _finite_or_none(fit.decrement),
            "iterations": int(fit.iterations),
        },
        "flux_sd_method": flux_method,
        "sources": sources,
        "timing_s": timing,
        "versions": _versions(),
    }
    if idata is not None:
        summary["diagnostics"] = _diagnostics(idata)
        summary["nuts"] = {
            "sites": list(config.sample.sites),
            "conditional": state["nuts_conditional"],
        }
    return summary


def _sources_table(state):
    import numpy as np
    from astropy.coordinates import SkyCoord
    from astropy.table import QTable

    scene, frame = state["fit"].scene, state["frame"]
    rows = _group_rows(scene, frame)
    flux = np.asarray(scene.fluxes())
    flux_sd, method = _flux_errors(state)
    table = QTable()
    table["id"] = np.arange(len(rows))
    table["sky"] = SkyCoord([r["sky"] for r in rows])
    table["y"] = [float(r["y"]) for r in rows]
    table["x"] = [float(r["x"]) for r in rows]
    for i, ch in enumerate(frame.channels):
        table[f"flux_{ch}"] = flux[:, i]
        table[f"flux_err_{ch}"] = flux_sd[:, i] if flux_sd is not None else np.nan
    for k, key in enumerate(("box_ymin", "box_xmin", "box_ymax", "box_xmax")):
        table[key] = [int(np.r_[r["box"][0], r["box"][1]][k]) for r in rows]
    table.meta["comments"] = [
        "y, x, box_*: model-frame pixels (box_*max exclusive); fluxes in data units",
        f"flux_err: marginal sd from {method or 'nothing (MAP not at the mode): NaN'}",
    ]
    return table


def _write(out_dir: pathlib.Path, state) -> None:
    # the backend is the caller's choice (the CLI picks Agg); figures are closed here
    import matplotlib.pyplot as plt

    from . import persistence, plot
    from .atomic import atomic_path, save_figure

    fit, model = state["fit"], state["model"]
    persistence.save_scene(out_dir / "scene.npz", fit.scene)
    persistence.save_fit(out_dir / "fit.npz", fit)
    with atomic_path(out_dir / "sources.ecsv") as tmp:
        _sources_table(state).write(tmp, format="ascii.ecsv", overwrite=True)
    if state["idata"] is not None:
        persistence.save_posterior(out_dir / "posterior.nc", state["idata"])
    for obs in state["native"]:
        native = fit.shift_native(obs.name) if obs.name in model.shift_names else None
        fig = plot.scene(
            fit.scene_seen_by(obs.name),
            observation=obs,
            shift=native,
            norm=plot.AsinhAutomaticNorm(obs),
            show_rendered=True,
            show_observed=True,
            show_residual=True,
            add_labels=True,
            add_boxes=True,
        )
        save_figure(fig, out_dir / f"scene_{obs.name}.png", dpi=150)
        plt.close(fig)
