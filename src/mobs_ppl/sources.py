"""Sources of a scene: a positive spectrum times a morphology on a box of the model frame.

Every source has ``spectrum`` (``(channels,)``, flux units of the data per unit of
morphology) and a morphology drawn on its own box of model-frame pixels. Source kinds:

* :class:`Source` -- non-parametric morphology, pixel values in ``[0, 1]``;
  flux in channel ``c`` is ``spectrum[c] * morphology.sum()``.
* :class:`PointSource` -- a point at a sub-pixel ``center``; flux = spectrum.
* :class:`GaussianSource` and :class:`SersicSource` -- parametric profiles with
  half-light radius (model pixels) and ellipticity; unit-flux profiles, flux = spectrum.

Positions are ``(y, x)`` in model-frame pixels (0-based, pixel centres are integers);
:class:`mobs_ppl.Scene` converts a ``SkyCoord`` centre into them. The morphology is the
scene *before* the model PSF; the scene convolves with the model PSF when rendering.

Each kind declares its morphology parameters (:meth:`parameters`), their default priors
(:meth:`default_priors`) and how to rebuild itself from sampled values
(:meth:`replace_parameters`): that is all the NumPyro model needs.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.scipy.special import gammainc, gammaln
from scipy.special import gammaincinv

from .ellipticity import shear_matrix as _shear_matrix
from .ellipticity import unit_disk as _disk
from .envelope import DEFAULT_CV, Envelope

__all__ = [
    "site_name",
    "AbstractSource",
    "Source",
    "PointSource",
    "GaussianSource",
    "SersicSource",
    "sersic_b",
]


def sersic_b(n):
    """``b_n`` solving ``P(2n, b_n) = 1/2`` (half the light inside the effective radius).

    Starts from the asymptotic series of Ciotti & Bertin (1999) and polishes it with
    three Newton steps on the regularised incomplete gamma function, so it is exact to
    round-off for 0.3 <= n <= 6 and differentiable in ``n``.
    """
    n = jnp.asarray(n, dtype=jnp.result_type(float))
    b = 2 * n - 1 / 3 + 4 / (405 * n) + 46 / (25515 * n**2) + 131 / (1148175 * n**3)
    a = 2 * n
    for _ in range(3):
        log_pdf = (a - 1) * jnp.log(b) - b - gammaln(a)
        b = b - (gammainc(a, b) - 0.5) / jnp.exp(log_pdf)
    return b


def site_name(parameter: str, index: int) -> str:
    """Name of the NumPyro site of a source parameter: ``"<parameter>_<index>"``."""
    return f"{parameter}_{index}"


def _origin_of(center, box_shape):
    """Box origin of a concrete centre; ``None`` while the centre is traced (under jit)."""
    return _box_origin(center, box_shape) if isinstance(center, jax.Array) else None


def _box_origin(center, shape) -> tuple[int, int]:
    center = np.asarray(center, float)
    return (int(np.round(center[0])) - shape[0] // 2, int(np.round(center[1])) - shape[1] // 2)


class AbstractSource(eqx.Module):
    """Interface of every source kind (see the module docstring)."""

    spectrum: jax.Array
    center: object  # (y, x) model pixels as an array, or a SkyCoord before placement
    box_shape: eqx.AbstractVar[tuple[int, int]]

    @property
    def origin(self) -> tuple[int, int]:
        """Model-frame pixel ``(y, x)`` of the box's first pixel (fixed at construction)."""
        return self._origin

    @abc.abstractmethod
    def parameters(self) -> dict[str, jax.Array]:
        """Morphology parameters by name (without the source index)."""

    @abc.abstractmethod
    def default_priors(self) -> dict[str, dist.Distribution]:
        """Prior of each morphology parameter."""

    @abc.abstractmethod
    def replace_parameters(self, values: dict) -> AbstractSource:
        """A copy with the given morphology parameters."""

    def sample_parameters(self, index: int, priors=None) -> dict:
        """Sample the morphology parameters as NumPyro sites ``<name>_<index>``.

        Parameters
        ----------
        index : int
            The source's index in the scene (site names end in it).
        priors : mapping, optional
            Distributions replacing the defaults, by site name.

        Returns
        -------
        dict
            The sampled values by parameter name (for :meth:`replace_parameters`).
        """
        priors = priors or {}
        values = {}
        for name, prior in self.default_priors().items():
            site = site_name(name, index)
            values[name] = numpyro.sample(site, priors.get(site, prior))
        return values

    @abc.abstractmethod
    def image(self) -> jax.Array:
        """Morphology on the box, ``box_shape``."""

    def flux(self) -> jax.Array:
        """Total flux per channel (``spectrum`` times the morphology's sum)."""
        return self.spectrum * jnp.sum(self.image())

    def with_spectrum(self, spectrum) -> AbstractSource:
        """A copy with another spectrum."""
        return eqx.tree_at(lambda s: s.spectrum, self, jnp.asarray(spectrum))

    @abc.abstractmethod
    def with_center(self, center) -> AbstractSource:
        """A copy placed at ``center`` (model pixels); the box moves with it."""

    # -- persistence: each kind declares the values that rebuild it ---------------------
    def persisted(self) -> dict[str, np.ndarray]:
        """The values that rebuild this source exactly (:meth:`from_persisted`).

        ``center`` (model pixels) and ``spectrum``, then the kind's own
        (:meth:`_own_persisted`). :func:`mobs_ppl.save_scene` writes them as they are.
        """
        return {
            "center": np.asarray(self.center),
            "spectrum": np.asarray(self.spectrum),
            **self._own_persisted(),
        }

    @abc.abstractmethod
    def _own_persisted(self) -> dict[str, np.ndarray]:
        """The kind's values beyond ``center`` and ``spectrum``."""

    @classmethod
    @abc.abstractmethod
    def from_persisted(cls, values: Mapping[str, np.ndarray]) -> AbstractSource:
        """The source that :meth:`persisted` gave ``values``.

        Raises
        ------
        KeyError
            If a value the kind needs is missing (an incomplete file).
        """


def _check_spectrum(spectrum) -> jax.Array:
    arr = np.atleast_1d(np.asarray(spectrum, float))
    if arr.ndim != 1:
        raise ValueError(f"spectrum must be one value per channel; got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("spectrum contains NaN or inf")
    if np.any(arr <= 0):
        raise ValueError(
            "spectrum must be strictly positive (the model's support); clip small or "
            "negative initial values, e.g. np.maximum(spectrum, 1e-3 * spectrum.max())"
        )
    return jnp.asarray(arr)


def _center_value(center):
    if hasattr(center, "ra") or hasattr(center, "frame"):
        return center  # SkyCoord: placed by the Scene
    arr = np.asarray(center, float)
    if arr.shape != (2,):
        raise ValueError(f"center must be (y, x) in model pixels or a SkyCoord; got {center!r}")
    return jnp.asarray(arr)


class Source(AbstractSource):
    """Source with a non-parametric morphology.

    Parameters
    ----------
    center : array_like or SkyCoord
        ``(y, x)`` in model-frame pixels (or a sky position); the box is centred on the
        nearest pixel.
    spectrum : array_like
        ``(channels,)`` strictly positive amplitudes.
    morphology : array_like
        ``(h, w)`` image with values strictly inside ``(0, 1)``.
    envelope : Envelope, optional
        The smooth profile the morphology's pixels are drawn about (see
        :mod:`mobs_ppl.envelope`); its parameters are fitted with the pixels. Default:
        one with the centroid and second moments of ``morphology``.
    cv : float
        Coefficient of variation of the pixels about the default envelope.
    prior : {"envelope", "uniform"}
        The morphology prior: pixels about the envelope (default), or independent and
        uniform on ``[0, 1]``. The uniform prior fits noise into the morphology wherever
        the galaxy is fainter than the noise (a positive pedestal over the whole box,
        which biases fluxes upward); it is kept for comparison and for simulations drawn
        from it.
    """

    spectrum: jax.Array
    center: object
    morphology: jax.Array
    envelope: Envelope | None
    box_shape: tuple[int, int] = eqx.field(static=True)
    _origin: tuple[int, int] | None = eqx.field(static=True)
    prior: str = eqx.field(static=True)
    cv: float = eqx.field(static=True)

    def __init__(
        self, center, spectrum, morphology, envelope=None, cv=DEFAULT_CV, prior="envelope"
    ):
        morph = np.asarray(morphology, float)
        if morph.ndim != 2:
            raise ValueError(f"morphology must be a 2-D image; got shape {morph.shape}")
        if not np.all(np.isfinite(morph)) or np.any(morph <= 0) or np.any(morph >= 1):
            raise ValueError(
                "morphology values must lie strictly inside (0, 1) (the model's support); "
                "use np.clip(morphology, 1e-6, 1 - 1e-6)"
            )
        if prior not in ("envelope", "uniform"):
            raise ValueError(f"prior must be 'envelope' or 'uniform'; got {prior!r}")
        if envelope is not None and not isinstance(envelope, Envelope):
            raise TypeError(f"envelope must be an Envelope; got {type(envelope).__name__}")
        self.spectrum = _check_spectrum(spectrum)
        self.center = _center_value(center)
        self.morphology = jnp.asarray(morph)
        self.box_shape = morph.shape
        self._origin = _origin_of(self.center, morph.shape)
        self.prior = prior
        self.cv = float(cv)
        if prior == "envelope" and envelope is None and self._origin is not None:
            envelope = Envelope.from_image(morph, self._origin, cv=cv)
        self.envelope = envelope if prior == "envelope" else None

    def parameters(self):
        if self.envelope is None:
            return {"morphology": self.morphology}
        return {"envelope": self.envelope.params, "morphology": self.morphology}

    def default_priors(self):
        if self.envelope is None:
            return {"morphology": dist.Uniform(0.0, 1.0).expand(self.box_shape).to_event(2)}
        return {
            "envelope": self.envelope.prior(),
            "morphology": self.envelope.morphology_prior(self._origin, self.box_shape),
        }

    def sample_parameters(self, index, priors=None):
        if self.envelope is None:
            return super().sample_parameters(index, priors)
        priors = priors or {}
        site = site_name("envelope", index)
        params = numpyro.sample(site, priors.get(site, self.envelope.prior()))
        envelope = self.envelope.with_params(params)
        site = site_name("morphology", index)
        conditional = envelope.morphology_prior(self._origin, self.box_shape)
        morphology = numpyro.sample(site, priors.get(site, conditional))
        return {"envelope": params, "morphology": morphology}

    def replace_parameters(self, values):
        out = self
        if "morphology" in values:
            out = eqx.tree_at(lambda s: s.morphology, out, values["morphology"])
        if "envelope" in values and out.envelope is not None:
            envelope = out.envelope.with_params(values["envelope"])
            out = eqx.tree_at(lambda s: s.envelope, out, envelope)
        return out

    def image(self):
        return self.morphology

    def with_center(self, center):
        envelope = self.envelope
        if envelope is not None and self._origin is not None:
            # the envelope moves with the box
            y0, x0 = _box_origin(center, self.box_shape)
            moved = np.asarray(envelope.params).copy()
            moved[:2] += np.array([y0 - self._origin[0], x0 - self._origin[1]], float)
            envelope = envelope.with_params(moved)
        return Source(center, self.spectrum, self.morphology, envelope, self.cv, self.prior)

    def _own_persisted(self):
        out = {
            "morphology": np.asarray(self.morphology),
            "prior": np.asarray(self.prior),
            "cv": np.asarray(self.cv),
        }
        if self.envelope is not None:
            out["envelope"] = np.asarray(self.envelope.params)
            out["envelope_cv"] = np.asarray(self.envelope.cv)
        return out

    @classmethod
    def from_persisted(cls, values):
        cv = float(values.get("cv", DEFAULT_CV))
        envelope = None
        if "envelope" in values:
            envelope = Envelope(
                jnp.asarray(values["envelope"]), float(values.get("envelope_cv", cv))
            )
        prior = str(values.get("prior", "envelope"))
        return cls(
            values["center"], values["spectrum"], values["morphology"], envelope, cv, prior
        )


class _ParametricSource(AbstractSource):
    """Shared machinery of unit-flux analytic profiles sampled on a box."""

    spectrum: jax.Array
    center: object
    radius: jax.Array
    shape_param: jax.Array
    box_shape: tuple[int, int] = eqx.field(static=True)
    _origin: tuple[int, int] | None = eqx.field(static=True)
    oversample: int = eqx.field(static=True)
    radius_prior_width: float = eqx.field(static=True)

    def _grid(self):
        """Sub-pixel sample positions relative to the centre, and their weights."""
        n = self.oversample
        sub = (jnp.arange(n) + 0.5) / n - 0.5
        y0, x0 = self._origin
        ys = (jnp.arange(self.box_shape[0]) + y0)[:, None] + sub[None, :]
        xs = (jnp.arange(self.box_shape[1]) + x0)[:, None] + sub[None, :]
        dy = ys[:, :, None, None] - self.center[0]
        dx = xs[None, None, :, :] - self.center[1]
        return dy, dx

    def _radius2(self):
        dy, dx = self._grid()
        # coordinates in the source's intrinsic (circular) frame
        a = _shear_matrix(_disk(self.shape_param))
        u = a[0, 0] * dx + a[0, 1] * dy
        v = a[1, 0] * dx + a[1, 1] * dy
        return u**2 + v**2

    @abc.abstractmethod
    def _profile(self, r2):
        """The unnormalised profile at squared intrinsic radius ``r2`` (pixels^2)."""

    @abc.abstractmethod
    def _total(self):
        """Integral of ``_profile`` over the plane (pixels^2); the shear preserves area."""

    #: Constructor keywords beyond ``center`` and ``spectrum`` (see :meth:`_keywords`).
    _KEYWORDS = ("radius", "ellipticity", "box_size", "oversample", "radius_prior_width")

    def _keywords(self) -> dict:
        """The values of :attr:`_KEYWORDS` that rebuild this source."""
        return {
            "radius": float(self.radius),
            "ellipticity": tuple(float(g) for g in np.asarray(self.ellipticity)),
            "box_size": self.box_shape[0],
            "oversample": self.oversample,
            "radius_prior_width": self.radius_prior_width,
        }

    def with_center(self, center):
        return type(self)(center, self.spectrum, **self._keywords())

    def _own_persisted(self):
        stored = {name: np.asarray(value) for name, value in self._keywords().items()}
        return {**stored, "shape": np.asarray(self.shape_param)}

    @classmethod
    def from_persisted(cls, values):
        # files of version 1 have no radius_prior_width: the constructor's default then
        keywords = {
            name: np.asarray(values[name]).tolist()
            for name in cls._KEYWORDS
            if name in values or name != "radius_prior_width"
        }
        source = cls(values["center"], values["spectrum"], **keywords)
        # ellipticity -> shape_param is not bit-exact: restore the stored parameter
        return eqx.tree_at(lambda s: s.shape_param, source, jnp.asarray(values["shape"]))

    def image(self):
        """Pixel-integrated profile of unit total flux (light outside the box is lost)."""
        values = self._profile(self._radius2())
        return values.mean(axis=(1, 3)) / self._total()

    def flux(self):
        return self.spectrum

    def parameters(self):
        return {"center": self.center, "radius": self.radius, "shape": self.shape_param}

    def default_priors(self):
        center = jnp.asarray(self.center)
        return {
            "center": dist.Normal(center, 1.0).to_event(1),
            "radius": dist.LogNormal(jnp.log(self.radius), self.radius_prior_width),
            "shape": dist.Normal(jnp.zeros(2), 1.0).to_event(1),
        }

    def replace_parameters(self, values):
        out = self
        for name, attr in (("center", "center"), ("radius", "radius"), ("shape", "shape_param")):
            if name in values:
                out = eqx.tree_at(lambda s, a=attr: getattr(s, a), out, jnp.asarray(values[name]))
        return out

    @property
    def ellipticity(self) -> jax.Array:
        """Reduced shear ``(g1, g2)`` of the profile."""
        return _disk(self.shape_param)


def _init_parametric(
    self, center, spectrum, radius, ellipticity, box_size, oversample, radius_prior_width, reach=6.0
):
    self.spectrum = _check_spectrum(spectrum)
    if not float(radius_prior_width) > 0:
        raise ValueError(f"radius_prior_width must be positive; got {radius_prior_width}")
    self.radius_prior_width = float(radius_prior_width)
    self.center = _center_value(center)
    if not float(radius) > 0:
        raise ValueError(f"radius must be positive (model pixels); got {radius}")
    self.radius = jnp.asarray(float(radius))
    g = np.asarray(ellipticity, float)
    if g.shape != (2,) or not np.hypot(*g) < 1:
        raise ValueError(f"ellipticity must be (g1, g2) with |g| < 1; got {ellipticity!r}")
    # invert g = u / sqrt(1 + |u|^2): u = g / sqrt(1 - |g|^2)
    self.shape_param = jnp.asarray(g / np.sqrt(1 - np.sum(g**2)))
    size = int(box_size) if box_size is not None else 2 * int(np.ceil(reach * radius)) + 1
    self.box_shape = (size, size)
    self._origin = _origin_of(self.center, self.box_shape)
    self.oversample = int(oversample)


class GaussianSource(_ParametricSource):
    """Elliptical Gaussian profile of unit flux.

    Parameters
    ----------
    center : array_like or SkyCoord
        ``(y, x)`` model pixels.
    spectrum : array_like
        Flux per channel.
    radius : float
        Half-light radius along the geometric mean axis, model pixels.
    ellipticity : (float, float)
        Reduced shear ``(g1, g2)``, ``|g| < 1``.
    box_size : int, optional
        Side of the square box (model pixels); default ``2 ceil(6 radius) + 1``.
    oversample : int
        Sub-pixel samples per axis when integrating over pixels (even, so that no
        sample falls on the centre of a source centred on a pixel).
    radius_prior_width : float
        Width of the LogNormal prior of the radius about its initial value (1: a
        factor ``e`` either way; a compact core of a galaxy, see
        :func:`mobs_ppl.init.from_observation`, gets 0.1).
    """

    def __init__(
        self,
        center,
        spectrum,
        radius,
        ellipticity=(0.0, 0.0),
        box_size=None,
        oversample=4,
        radius_prior_width=1.0,
    ):
        _init_parametric(
            self, center, spectrum, radius, ellipticity, box_size, oversample, radius_prior_width
        )

    def _sigma2(self):
        # half-light radius of a Gaussian is sigma * sqrt(2 ln 2)
        return self.radius**2 / (2 * jnp.log(2.0))

    def _profile(self, r2):
        return jnp.exp(-0.5 * r2 / self._sigma2())

    def _total(self):
        return 2 * jnp.pi * self._sigma2()



class SersicSource(_ParametricSource):
    """Elliptical Sérsic profile of unit flux, ``I(r) ~ exp(-b_n (r / r_e)^(1/n))``.

    Parameters are those of :class:`GaussianSource` plus ``n``, the Sérsic index
    (0.3 to 6). ``b_n`` solves ``P(2n, b_n) = 1/2`` exactly (regularised incomplete
    gamma function), so ``radius`` is the half-light radius of the untruncated profile.
    """

    n: jax.Array

    def __init__(
        self,
        center,
        spectrum,
        radius,
        n=1.0,
        ellipticity=(0.0, 0.0),
        box_size=None,
        oversample=6,
        radius_prior_width=1.0,
    ):
        if not 0.3 <= float(n) <= 6.0:
            raise ValueError(f"Sersic index n must be within [0.3, 6]; got {n}")
        # default box: the radius holding 99% of the light, at most 10 half-light radii
        b = float(sersic_b(float(n)))
        r99 = (float(gammaincinv(2 * float(n), 0.99)) / b) ** float(n)
        reach = min(max(r99, 3.0), 10.0)
        _init_parametric(
            self,
            center,
            spectrum,
            radius,
            ellipticity,
            box_size,
            oversample,
            radius_prior_width,
            reach=reach,
        )
        self.n = jnp.asarray(float(n))

    def _profile(self, r2):
        b = sersic_b(self.n)
        r = jnp.sqrt(r2 + 1e-12)
        return jnp.exp(-b * (r / self.radius) ** (1.0 / self.n))

    def _total(self):
        # 2 pi n r_e^2 b^(-2n) Gamma(2n) for I(r) = exp(-b (r / r_e)^(1/n))
        b = sersic_b(self.n)
        n = self.n
        log_total = jnp.log(2 * jnp.pi * n) + 2 * jnp.log(self.radius) - 2 * n * jnp.log(b)
        return jnp.exp(log_total + gammaln(2 * n))

    def parameters(self):
        return {**super().parameters(), "sersic_n": self.n}

    def default_priors(self):
        return {**super().default_priors(), "sersic_n": dist.Uniform(0.3, 6.0)}

    def replace_parameters(self, values):
        out = super().replace_parameters(values)
        if "sersic_n" in values:
            out = eqx.tree_at(lambda s: s.n, out, jnp.asarray(values["sersic_n"]))
        return out

    _KEYWORDS = (*_ParametricSource._KEYWORDS, "n")

    def _keywords(self):
        return {**super()._keywords(), "n": float(self.n)}


class PointSource(AbstractSource):
    """An unresolved source at a sub-pixel position: the model PSF itself.

    Parameters
    ----------
    center : array_like or SkyCoord
        ``(y, x)`` model pixels.
    spectrum : array_like
        Flux per channel.
    box_size : int
        Side of the box (model pixels) on which the point is represented, as a
        band-limited delta function (sinc-interpolated), so that after the model PSF it
        is the PSF shifted by the sub-pixel offset.
    """

    spectrum: jax.Array
    center: object
    box_shape: tuple[int, int] = eqx.field(static=True)
    _origin: tuple[int, int] | None = eqx.field(static=True)

    def __init__(self, center, spectrum, box_size: int = 15):
        self.spectrum = _check_spectrum(spectrum)
        self.center = _center_value(center)
        self.box_shape = (int(box_size), int(box_size))
        self._origin = _origin_of(self.center, self.box_shape)

    def parameters(self):
        return {"center": self.center}

    def default_priors(self):
        return {"center": dist.Normal(jnp.asarray(self.center), 1.0).to_event(1)}

    def replace_parameters(self, values):
        if "center" not in values:
            return self
        return eqx.tree_at(lambda s: s.center, self, jnp.asarray(values["center"]))

    def image(self):
        y0, x0 = self._origin
        dy = jnp.arange(self.box_shape[0]) + y0 - self.center[0]
        dx = jnp.arange(self.box_shape[1]) + x0 - self.center[1]
        # the band-limited delta (sinc), tapered to the box by a Lanczos window so the
        # truncation does not ring, and normalised to unit flux
        ay, ax = self.box_shape[0] / 2.0, self.box_shape[1] / 2.0
        wy = jnp.sinc(dy) * jnp.sinc(dy / ay) * (jnp.abs(dy) < ay)
        wx = jnp.sinc(dx) * jnp.sinc(dx / ax) * (jnp.abs(dx) < ax)
        image = wy[:, None] * wx[None, :]
        return image / jnp.sum(image)

    def flux(self):
        return self.spectrum

    def with_center(self, center):
        return PointSource(center, self.spectrum, self.box_shape[0])

    def _own_persisted(self):
        return {"box_size": np.asarray(self.box_shape[0], dtype=np.int64)}

    @classmethod
    def from_persisted(cls, values):
        return cls(values["center"], values["spectrum"], box_size=int(values["box_size"]))
