"""The scene as a NumPyro model.

:func:`scene_model` is a plain module-level NumPyro program: a sample site for the
spectra of all sources (positive), for every morphology parameter of every source, for
the astrometric shift of every named observation, and one observed site per
observation. :class:`SceneModel` holds its arguments and is the callable users pass to
NumPyro (``SVI``, ``MCMC``, ``Predictive``, handlers).

Site names and ArviZ dimensions (``i`` is the index of a scene's source -- a component
of a galaxy when sources are grouped, see :class:`~mobs_ppl.Scene` -- and ``name`` an
observation):

============== ============================== ==================================
site           shape                          dims
============== ============================== ==================================
spectrum       (components, channels)         component, channel
flux           (sources, channels)            source, channel (deterministic; the sum
                                              over the components of each source)
envelope_i     (6,)                           envelope_param (see mobs_ppl.envelope)
morphology_i   (h_i, w_i)                     morph_y_i, morph_x_i
center_i       (2,)                           axis
radius_i       ()                             (model pixels)
shape_i        (2,)                           shape_component (unconstrained)
sersic_n_i     ()
shift          (shifted observations, 2)      observation, axis (model pixels)
shift_arcsec   (shifted observations, 2)      observation, axis (deterministic)
shift_native   (shifted observations, 2)      observation, axis (native pixels)
calibration    (calibrated observations,      calibrated_observation,
               calibrated channels)           calibrated_channel (flux scale)
obs_<name>     observation's (native) shape   channel_<name>, y_<name>, x_<name>
============== ============================== ==================================

Calibration convention: ``calibration[k, c]`` multiplies the model fluxes that the
``k``-th calibrated observation sees in its channel ``c`` (a model channel, see
:attr:`SceneModel.calibrated_channels`): the data of that observation are
``calibration`` times brighter than the reference observations (those without one)
say. Its prior is LogNormal(0, width) per entry; the reference observations' scale is
fixed to one.

Shift convention: ``shift`` is where sources appear in that observation minus where
its WCS puts them, in model-frame pixels ``(dy, dx)``, positive toward larger pixel
coordinates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import astropy.units as u
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

from ._checks import check_positive
from .envelope import ENVELOPE_PARAMETERS
from .frame import overlap_fraction
from .observation import FramedData
from .scene import Scene
from .sites import Site, observed_site_name
from .sources import site_name

__all__ = ["SceneModel", "scene_model", "site_dims"]

#: Relative width of the default spectrum prior: HalfNormal with scale ten times the
#: initial spectrum, i.e. nearly flat over any flux the data can support.
SPECTRUM_PRIOR_FACTOR = 10.0


def scene_model(
    scene: Scene,
    observations: Sequence,
    shift_names: Sequence[str] = (),
    shift_scales=None,
    to_native: Mapping[str, np.ndarray] | None = None,
    priors: Mapping[str, dist.Distribution] | None = None,
    pixel_scale_arcsec: float = 1.0,
    observed: bool = True,
    likelihood: bool = True,
    calibration_names: Sequence[str] = (),
    calibration_widths=None,
    calibrated_channels: Sequence[int] = (),
):
    """NumPyro model of a scene seen by several observations.

    Parameters
    ----------
    scene : Scene
        Sources with their initial values (which set the default priors' scales).
    observations : sequence
        Observations bound to ``scene.frame`` (``obs.match(frame)``).
    shift_names : sequence of str
        Observations whose astrometric shift is sampled.
    shift_scales : array_like
        Prior standard deviation of each shift, model pixels.
    to_native : mapping, optional
        Per shifted observation's name, the ``(2, 2)`` matrix from model pixels to the
        pixels in which its likelihood is evaluated, for the ``shift_native`` site. By
        default each observation's own :attr:`~mobs_ppl.Observation.native_from_model`.
    priors : mapping, optional
        Distributions replacing defaults, by site name.
    pixel_scale_arcsec : float
        Model pixel scale, for the ``shift_arcsec`` site.
    observed : bool
        Condition on the data (``False`` draws images, for prior predictive checks).
    likelihood : bool
        ``False`` leaves out the observations (no rendering): the prior alone, with the
        deterministic sites.
    calibration_names : sequence of str
        Observations whose photometric scale is sampled (site ``calibration``).
    calibration_widths : array_like
        LogNormal width of each one's scale (natural log).
    calibrated_channels : sequence of int
        Model channels those observations see (the ``calibration`` site's columns).
    """
    priors = dict(priors or {})
    frame = scene.frame
    init = jnp.stack([s.spectrum for s in scene.sources])
    spectrum_prior = priors.get("spectrum", dist.HalfNormal(SPECTRUM_PRIOR_FACTOR * init))
    with (
        numpyro.plate("component", len(scene.sources), dim=-2),
        numpyro.plate("channel", frame.n_channels, dim=-1),
    ):
        spectrum = numpyro.sample("spectrum", spectrum_prior)
    sources = []
    for i, source in enumerate(scene.sources):
        values = source.sample_parameters(i, priors)
        sources.append(source.replace_parameters(values).with_spectrum(spectrum[i]))
    realised = scene.replace_sources(sources)
    numpyro.deterministic("flux", realised.fluxes())

    shifts = {}
    if shift_names:
        scales = jnp.asarray(shift_scales)[:, None] * jnp.ones((1, 2))
        shift = numpyro.sample("shift", priors.get("shift", dist.Normal(0.0, scales).to_event(2)))
        numpyro.deterministic("shift_arcsec", shift * pixel_scale_arcsec)
        if to_native is None:
            to_native = {obs.name: obs.native_from_model for obs in observations}
        native = jnp.stack([to_native[n] @ shift[k] for k, n in enumerate(shift_names)])
        numpyro.deterministic("shift_native", native)
        shifts = {n: shift[k] for k, n in enumerate(shift_names)}
    scales = {}
    if calibration_names:
        calibration = numpyro.sample(
            "calibration",
            priors.get(
                "calibration",
                _calibration_prior(calibration_widths, len(calibrated_channels)),
            ),
        )
        index = jnp.asarray(calibrated_channels)
        for k, name in enumerate(calibration_names):
            # a flux scale per model channel: one on the channels it does not calibrate
            scales[name] = jnp.ones(frame.n_channels).at[index].set(calibration[k])
    if not likelihood:
        return
    cube = realised.render(convolve=False)
    for obs in observations:
        # rendering is linear: scaling the model cube's channels scales the prediction
        seen = cube if obs.name not in scales else cube * scales[obs.name][:, None, None]
        # the shift stays in model pixels all the way to the renderer's phase
        distribution, value = obs.likelihood(seen, shifts.get(obs.name), convolved=False)
        site = observed_site_name(obs.name)
        numpyro.sample(site, distribution, obs=value if observed else None)


def _calibration_prior(widths, n_channels: int) -> dist.Distribution:
    """LogNormal(0, width) for every (calibrated observation, channel) entry."""
    scale = jnp.asarray(widths)[:, None] * jnp.ones((1, n_channels))
    return dist.LogNormal(0.0, scale).to_event(2)


def _check_calibrations(calibrations, frame, observations):
    """``(names, widths, model channels)`` of the calibrated observations, checked."""
    names = [o.name for o in observations]
    if calibrations is None:
        return (), (), ()
    if not isinstance(calibrations, Mapping):
        raise TypeError(
            "calibrations must be a mapping {observation name: LogNormal width}, e.g. "
            f"{{{names[-1]!r}: 0.05}}; got {calibrations!r}"
        )
    unknown = [n for n in calibrations if n not in names]
    if unknown:
        raise ValueError(f"calibrations name unknown observations {unknown}; known: {names}")
    if not calibrations:
        return (), (), ()
    if len(calibrations) == len(names):
        raise ValueError(
            "a calibration for every observation is degenerate (every spectrum could scale "
            "instead): leave at least one observation as the photometric reference"
        )
    chosen = tuple(n for n in names if n in calibrations)
    widths = tuple(check_positive(f"calibrations[{n!r}]", calibrations[n]) for n in chosen)
    seen = {o.name: frame.channel_indices(o.frame) for o in observations}
    columns = sorted({c for n in chosen for c in seen[n]})
    for n in chosen:
        if sorted(seen[n]) != columns:
            raise ValueError(
                f"the calibrated observations see different channels "
                f"({ {m: [frame.channels[c] for c in seen[m]] for m in chosen} }): the "
                "calibration site holds one scale per calibrated observation and channel; "
                "calibrate observations of the same bands together"
            )
    referenced = {c for o in observations if o.name not in calibrations for c in seen[o.name]}
    lonely = [frame.channels[c] for c in columns if c not in referenced]
    if lonely:
        raise ValueError(
            f"the calibration of {list(chosen)} in channels {lonely} is not identifiable: "
            "no reference (uncalibrated) observation sees those channels, so the scale "
            "trades freely with the spectra; share the channel with a reference "
            "observation (Frame.from_observations(..., channels='shared')) or drop the "
            "calibration"
        )
    return chosen, widths, tuple(columns)


def _base_constraint(c):
    while isinstance(c, constraints.independent):
        c = c.base_constraint
    return c


def _holds(condition) -> bool:
    """``bool(all(condition))``; ``True`` when it depends on traced values (unknowable)."""
    try:
        return bool(jnp.all(condition))
    except jax.errors.ConcretizationTypeError:
        return True


def _support_ok(prior: dist.Distribution, default: dist.Distribution) -> bool:
    """Whether ``prior``'s support lies inside ``default``'s (same kind of set)."""
    p, d = _base_constraint(prior.support), _base_constraint(default.support)
    if d is constraints.real:
        return True
    if d in (constraints.positive,):
        return (
            p in (constraints.positive, constraints.nonnegative)
            or (isinstance(p, constraints.interval) and _holds(p.lower_bound >= 0))
            or isinstance(p, type(constraints.positive))
        )
    if isinstance(d, constraints.interval):
        if not isinstance(p, constraints.interval):
            return False
        return _holds((p.lower_bound >= d.lower_bound) & (p.upper_bound <= d.upper_bound))
    return type(p) is type(d)


def _check_prior_shape(name: str, prior: dist.Distribution, default: dist.Distribution) -> None:
    """Raise ``ValueError`` unless ``prior`` draws values of the site's shape.

    The default prior says how the site is sampled: its event shape is the part of
    the value that one draw holds, its batch shape that of the plates around the site
    (the spectrum's components and channels; none for the other sites). A prior must
    have the same event shape, and a batch shape that broadcasts to the plates'.
    """
    event, batch = tuple(prior.event_shape), tuple(prior.batch_shape)
    value_shape = tuple(default.batch_shape) + tuple(default.event_shape)
    try:
        broadcast = np.broadcast_shapes(batch, tuple(default.batch_shape))
    except ValueError:
        broadcast = None
    if event == tuple(default.event_shape) and broadcast == tuple(default.batch_shape):
        return
    hint = ""
    if not default.batch_shape and not event and value_shape:
        hint = (
            f" (declare the dimensions as the event's: prior.to_event({len(batch)}))"
            if batch == value_shape
            else f" (e.g. prior.expand({value_shape}).to_event({len(value_shape)}))"
        )
    raise ValueError(
        f"prior for {name!r} draws values of shape {batch + event} (batch {batch}, event "
        f"{event}); the site's values have shape {value_shape} (event shape "
        f"{tuple(default.event_shape)}){hint}"
    )


def _require_shared_sky(observations, shift_names) -> None:
    """Refuse a shift on an observation that shares no sky with any other one.

    Nothing else sees its sources, so its shift is constrained by its prior alone (it
    trades freely with the positions of its sources). Observations without a WCS are
    not checked (their grids coincide with the model frame's).
    """
    for obs in observations:
        if obs.name not in shift_names or obs.frame.wcs is None:
            continue
        others = [o for o in observations if o is not obs and o.frame.wcs is not None]
        if others and max(overlap_fraction(obs.frame, o.frame) for o in others) == 0.0:
            raise ValueError(
                f"observation {obs.name!r} shares no sky with the other observations "
                f"{[o.name for o in others]}, so its shift would be constrained by its "
                "prior alone: drop it from shifts (or fit that observation on its own)"
            )


class SceneModel(eqx.Module):
    """A scene and its observations as a callable NumPyro model.

    Parameters
    ----------
    scene : Scene
        Initial scene (its values initialise fits and set default prior scales).
    observations : sequence of Observation or CorrelatedObservation
        Each is bound to ``scene.frame`` here unless it already is.
    shifts : mapping, optional
        ``{observation name: prior scale}``: the scale is an astropy angle (e.g.
        ``0.1 * u.arcsec``) or a number of model pixels (``u.pix``). Observations not
        named are astrometric references; at least one must remain.
    priors : mapping, optional
        ``{site name: numpyro distribution}`` replacing the defaults; the support must
        match the site's constraint.
    calibrations : mapping, optional
        ``{observation name: width}``: a photometric scale per channel of each named
        observation (site ``calibration``), with a LogNormal(0, width) prior (``width``
        the sd of its natural log, e.g. 0.05 for 5%). The observations not named are
        the photometric references (scale one). A scale is identifiable only against
        a reference that sees the same channel (a channel shared through
        ``Frame.from_observations(..., channels="shared")``); the calibrated
        observations must see the same channels.

    Raises
    ------
    ValueError
        For names of unknown observations in ``shifts`` or ``calibrations``, a shift
        or a calibration on every observation, a calibration on a channel that no
        reference observation sees, or calibrated observations that see different
        channels.
    """

    scene: Scene
    observations: tuple
    shift_names: tuple[str, ...] = eqx.field(static=True)
    shift_scales: tuple[float, ...] = eqx.field(static=True)
    to_native: dict
    priors: dict
    pixel_scale_arcsec: float = eqx.field(static=True)
    calibration_names: tuple[str, ...] = eqx.field(static=True)
    calibration_widths: tuple[float, ...] = eqx.field(static=True)
    calibrated_channels: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, scene: Scene, observations, shifts=None, priors=None, calibrations=None):
        if not isinstance(scene, Scene):
            raise TypeError(f"scene must be a Scene, got {type(scene).__name__}")
        if len(scene.sources) == 0:
            raise ValueError("the scene has no sources")
        if isinstance(observations, FramedData):
            observations = [observations]
        frame = scene.frame
        bound = []
        names = []
        for obs in observations:
            if not isinstance(obs, FramedData):
                raise TypeError(f"expected observations, got {type(obs).__name__}")
            obs = obs.bound_to(frame)
            bound.append(obs)
            names.append(obs.name)
        if not bound:
            raise ValueError(
                "observations is empty: a SceneModel needs at least one Observation or "
                "CorrelatedObservation"
            )
        if len(set(names)) != len(names):
            raise ValueError(f"observation names must be unique; got {names}")
        model_scale = frame.pixel_scale.to_value(u.arcsec) if frame.wcs is not None else None

        if shifts is not None and not isinstance(shifts, Mapping):
            raise TypeError(
                "shifts must be a mapping {observation name: prior scale}, e.g. "
                f"{{{names[-1]!r}: 0.1 * u.arcsec}}; got {shifts!r}"
            )
        shifts = dict(shifts or {})
        unknown = [n for n in shifts if n not in names]
        if unknown:
            raise ValueError(f"shifts name unknown observations {unknown}; known: {names}")
        if shifts and len(shifts) == len(names):
            raise ValueError(
                "a shift for every observation is degenerate (the whole scene could move "
                "instead): leave at least one observation as the astrometric reference"
            )
        scales = []
        for name in names:
            if name not in shifts:
                continue
            scale = shifts[name]
            if isinstance(scale, u.Quantity) and scale.unit.physical_type == "angle":
                if model_scale is None:
                    raise ValueError("an angular shift scale needs a model frame with WCS")
                scales.append(scale.to_value(u.arcsec) / model_scale)
            elif isinstance(scale, u.Quantity) and scale.unit == u.pix:
                scales.append(float(scale.value))
            else:
                raise TypeError(
                    f"shift scale for {name!r} must be an astropy angle (e.g. 0.1 * u.arcsec) "
                    f"or pixels (u.pix); got {scale!r}"
                )
            if not (np.isfinite(scales[-1]) and scales[-1] > 0):
                raise ValueError(
                    f"shift scale for {name!r} must be positive and finite; got {scale!r}"
                )
        self.shift_names = tuple(n for n in names if n in shifts)
        self.shift_scales = tuple(float(s) for s in scales)
        _require_shared_sky(bound, self.shift_names)
        (
            self.calibration_names,
            self.calibration_widths,
            self.calibrated_channels,
        ) = _check_calibrations(calibrations, frame, bound)

        self.scene = scene
        self.observations = tuple(bound)
        self.to_native = {obs.name: obs.native_from_model for obs in self.observations}
        self.pixel_scale_arcsec = float(model_scale) if model_scale is not None else 1.0
        self.priors = {}
        self.priors = dict(self._check_priors(priors or {}))

    # -- the NumPyro program ------------------------------------------------------------
    def __call__(
        self, observed: bool = True, priors: Mapping | None = None, likelihood: bool = True
    ):
        """Run the NumPyro model (see :func:`scene_model`).

        Parameters
        ----------
        observed : bool
            Condition on the data (``False`` draws images).
        priors : mapping, optional
            Priors replacing the model's for this call, by site name. This is how a
            wrapping NumPyro program adds its own sites: sample a hyper-parameter, then
            call the model with priors that depend on it (see ``docs/inference.md``).
        likelihood : bool
            ``False`` runs the prior alone (no observation sites, no rendering).
        """
        merged = self.priors if priors is None else {**self.priors, **self._check_priors(priors)}
        return scene_model(
            self.scene,
            self.observations,
            self.shift_names,
            self.shift_scales,
            self.to_native,
            merged,
            self.pixel_scale_arcsec,
            observed,
            likelihood,
            self.calibration_names,
            self.calibration_widths,
            self.calibrated_channels,
        )

    # -- site table ----------------------------------------------------------------------
    def site_table(self) -> tuple[Site, ...]:
        """Every latent site, in the order of the NumPyro program (see :class:`Site`).

        The one place where site names, kinds, default priors, initial values and dims
        are put together: :meth:`default_priors`, :meth:`init_values`,
        :attr:`site_names`, :meth:`realise`, :func:`site_dims`, site selection
        (``sites=``) and the per-kind step sizes of SVI read it.
        """
        spectra = jnp.stack([s.spectrum for s in self.scene.sources])
        table = [
            Site(
                "spectrum",
                "spectrum",
                None,
                dist.HalfNormal(SPECTRUM_PRIOR_FACTOR * spectra),
                spectra,
                ("component", "channel"),
            )
        ]
        for i, source in enumerate(self.scene.sources):
            values = source.parameters()
            for kind, prior in source.default_priors().items():
                table.append(
                    Site(
                        site_name(kind, i),
                        kind,
                        i,
                        prior,
                        jnp.asarray(values[kind]),
                        _source_site_dims(kind, i),
                    )
                )
        if self.shift_names:
            scales = jnp.asarray(self.shift_scales)[:, None] * jnp.ones((1, 2))
            table.append(
                Site(
                    "shift",
                    "shift",
                    None,
                    dist.Normal(0.0, scales).to_event(2),
                    jnp.zeros((len(self.shift_names), 2)),
                    ("observation", "axis"),
                )
            )
        if self.calibration_names:
            shape = (len(self.calibration_names), len(self.calibrated_channels))
            table.append(
                Site(
                    "calibration",
                    "calibration",
                    None,
                    _calibration_prior(self.calibration_widths, shape[1]),
                    jnp.ones(shape),
                    ("calibrated_observation", "calibrated_channel"),
                )
            )
        return tuple(table)

    def calibration(self, params: Mapping, name: str) -> np.ndarray:
        """Flux scale per channel of observation ``name`` at ``params``.

        ``(observation's channels,)`` in the observation's channel order: the fitted
        ``calibration`` row of a calibrated observation, ones for a reference.
        """
        names = [o.name for o in self.observations]
        if name not in names:
            raise KeyError(f"no observation {name!r}; observations: {names}")
        obs = self.observations[names.index(name)]
        index = self.scene.frame.channel_indices(obs.frame)
        if name not in self.calibration_names:
            return np.ones(len(index))
        row = np.asarray(params["calibration"])[self.calibration_names.index(name)]
        return np.array([row[self.calibrated_channels.index(i)] for i in index])

    def default_priors(self) -> dict[str, dist.Distribution]:
        """Default prior of every latent site, by name."""
        return {site.name: site.prior for site in self.site_table()}

    def init_values(self) -> dict[str, jnp.ndarray]:
        """Initial value of every latent site (from the scene; zero shifts, unit scales)."""
        return {site.name: site.init for site in self.site_table()}

    @property
    def site_names(self) -> tuple[str, ...]:
        """Names of the latent sites."""
        return tuple(site.name for site in self.site_table())

    def _check_priors(self, priors):
        if not isinstance(priors, Mapping):
            raise TypeError(
                "priors must be a mapping {site name: numpyro distribution}; got "
                f"{type(priors).__name__}"
            )
        defaults = self.default_priors()
        for name, prior in priors.items():
            if name not in defaults:
                raise ValueError(f"prior for unknown site {name!r}; sites are {sorted(defaults)}")
            if not isinstance(prior, dist.Distribution):
                raise TypeError(f"prior for {name!r} must be a numpyro distribution")
            _check_prior_shape(name, prior, defaults[name])
            if not _support_ok(prior, defaults[name]):
                raise ValueError(
                    f"prior for {name!r} has support {prior.support}, but the site needs "
                    f"{defaults[name].support}"
                )
        return priors

    def realise(self, params: Mapping[str, jnp.ndarray]) -> Scene:
        """The scene with latent values ``params`` (constrained space) substituted."""
        spectrum = params.get("spectrum", jnp.stack([s.spectrum for s in self.scene.sources]))
        values = [{} for _ in self.scene.sources]
        for site in self.site_table():
            if site.component is not None and site.name in params:
                values[site.component][site.kind] = params[site.name]
        sources = [
            source.replace_parameters(v).with_spectrum(spectrum[i])
            for i, (source, v) in enumerate(zip(self.scene.sources, values, strict=True))
        ]
        return self.scene.replace_sources(sources)


def _source_site_dims(kind: str, component: int) -> tuple[str, ...] | None:
    """ArviZ dims of a source parameter's site (``None``: ArviZ's defaults)."""
    if kind == "morphology":
        return (f"morph_y_{component}", f"morph_x_{component}")
    return _SOURCE_SITE_DIMS.get(kind)


_SOURCE_SITE_DIMS = {
    "envelope": ("envelope_param",),
    "center": ("axis",),
    "shape": ("shape_component",),
}


def site_dims(model: SceneModel) -> tuple[dict[str, list[str]], dict[str, list]]:
    """ArviZ ``dims`` and ``coords`` for every site of ``model``."""
    scene = model.scene
    coords = {
        "source": list(range(scene.n_groups)),
        "component": list(range(len(scene.sources))),
        "channel": list(scene.frame.channels),
        "axis": ["y", "x"],
        "shape_component": ["u1", "u2"],
        "envelope_param": list(ENVELOPE_PARAMETERS),
        "observation": list(model.shift_names),
        "calibrated_observation": list(model.calibration_names),
        "calibrated_channel": [scene.frame.channels[c] for c in model.calibrated_channels],
    }
    dims = {"flux": ["source", "channel"]}
    for site in model.site_table():
        if site.dims is not None:
            dims[site.name] = list(site.dims)
    if model.shift_names:
        for name in ("shift_arcsec", "shift_native"):
            dims[name] = ["observation", "axis"]
    for obs in model.observations:
        target = obs.likelihood_observation
        dims[observed_site_name(obs.name)] = [
            f"channel_{obs.name}",
            f"y_{obs.name}",
            f"x_{obs.name}",
        ]
        coords[f"channel_{obs.name}"] = list(target.channels)
    return dims, coords
