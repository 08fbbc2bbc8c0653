"""The envelope: the smooth profile that a non-parametric morphology is drawn about.

A non-parametric morphology has one free value per pixel of its box. With a flat prior
on each pixel, noise is fitted into the morphology wherever the galaxy is fainter than
the noise: every pixel is positive, so the fitted light there is the positive part of
the noise, a pedestal that fills the whole box and biases the flux upward by tens of
per cent (measured on a Gaussian galaxy of S/N 50 in a 41 x 41 box: +65% at the mode
of NumPyro's unconstrained space). The prior here removes it. Each pixel value ``m`` is
drawn from a Gamma distribution on the morphology's support ``[0, 1]``
(:class:`PixelGamma`) whose mean is the envelope ``tau``, a smooth elliptical Sérsic
profile with its own free parameters:

``m_p ~ Gamma(alpha, alpha / tau_p)``,  ``tau_p = PEAK * exp(-b_n ((r_p / R)^(1/n) - ...))``

with ``alpha = 1 / cv^2`` (``cv``, the pixels' coefficient of variation about the
envelope: 0.5 by default). Where the data are informative the pixels follow the data
(knots, spiral arms, asymmetries); where they are not, they stay close to the smooth
profile whose size, shape and index the data of the whole galaxy determine, instead of
following the noise. Far from the source the envelope, and so the morphology, goes to
zero.

The envelope's parameters are one real vector per source (site ``envelope_<i>``):

====== ====================================================================
index  meaning
====== ====================================================================
0, 1   centre ``(y, x)``, model pixels
2      log of the half-light radius ``R``, model pixels
3, 4   ellipticity parameter (mapped into the unit disk, as for
       :class:`~mobs_ppl.GaussianSource`)
5      Sérsic index parameter ``t``: ``n = N_MIN + (N_MAX - N_MIN) sigmoid(t)``
====== ====================================================================
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

from .ellipticity import shear_matrix, unit_disk

__all__ = ["Envelope", "PixelGamma", "ENVELOPE_PARAMETERS", "PEAK", "DEFAULT_CV"]

#: Names of the envelope's parameters (coordinates of the ``envelope_param`` dimension).
ENVELOPE_PARAMETERS = ("y", "x", "log_radius", "shape_1", "shape_2", "index")

#: Envelope value at its centre. Morphologies are drawn about it, so their values stay
#: well inside ``[0, 1]``: the upper bound never pulls on a fit (with the envelope's
#: peak at 1 the logit transform's Jacobian does, and a Gaussian galaxy came out 6%
#: too bright); a knot five times brighter than the envelope still fits.
PEAK = 0.2

#: Default coefficient of variation of the pixels about the envelope.
DEFAULT_CV = 0.5

#: Softening radius of the profile's centre, model pixels.
_SOFTENING = 0.5

#: Range of the envelope's Sérsic index.
N_MIN, N_MAX = 0.4, 2.5

#: The envelope is never below this fraction of its peak (far pixels stay positive).
FLOOR = 1e-6

#: Widths of the prior on the parameters about their initial values: centre (model
#: pixels), log radius, ellipticity parameter, index parameter.
PRIOR_WIDTHS = (1.5, 1.5, 0.7, 0.5, 0.5, 1.5)


def _sersic_b_series(n):
    """``b_n`` from the asymptotic series of Ciotti & Bertin (1999).

    Relative error 6e-3 at ``n = 0.4``, 2e-3 at 0.5, 1e-4 from ``n = 1`` (against the
    root of ``P(2n, b) = 1/2``; a 0.2% error in ``b`` moves the half-light radius by
    less than 0.1%); unlike the exact root it has derivatives of every
    order in JAX, which the Hessians of the Laplace approximation need.
    """
    return 2 * n - 1 / 3 + 4 / (405 * n) + 46 / (25515 * n**2) + 131 / (1148175 * n**3)


def index_from_parameter(t):
    """Sérsic index ``n`` of an index parameter ``t``."""
    return N_MIN + (N_MAX - N_MIN) * jax.nn.sigmoid(t)


def parameter_from_index(n: float) -> float:
    """Index parameter ``t`` of a Sérsic index ``n`` (inside ``(N_MIN, N_MAX)``)."""
    f = (float(n) - N_MIN) / (N_MAX - N_MIN)
    f = min(max(f, 1e-6), 1 - 1e-6)
    return float(np.log(f / (1 - f)))


class PixelGamma(dist.Distribution):
    """Gamma distribution of mean ``mean`` and shape ``concentration``, on ``(0, 1)``.

    The density is the Gamma density; its mass above 1, which a truncation would
    remove, is left in the normalisation: for means up to :data:`PEAK` it is
    ``Q(alpha, alpha / PEAK)``, 7e-3 for ``alpha = 1`` and 3e-6 for the default
    ``alpha = 4``, so the normalisation is right to that fraction and its dependence
    on the mean (what a fit feels) smaller still. Leaving it out avoids the incomplete
    gamma function, whose derivatives are slow to compile and to run. Draws above 1
    (that rare) are set just below it.

    Parameters
    ----------
    concentration : float
        Gamma shape ``alpha``.
    mean : jax.Array
        Mean of every pixel, in ``(0, PEAK]``.
    """

    arg_constraints = {
        "concentration": dist.constraints.positive,
        "expected": dist.constraints.positive,
    }
    support = dist.constraints.unit_interval
    reparametrized_params = ["expected"]
    pytree_data_fields = ("concentration", "expected")

    def __init__(self, concentration, mean, *, validate_args=None):
        self.concentration = jnp.asarray(concentration, dtype=jnp.result_type(float))
        self.expected = jnp.asarray(mean)
        super().__init__(batch_shape=jnp.shape(self.expected), validate_args=validate_args)

    @property
    def mean(self):
        return self.expected

    def log_prob(self, value):
        alpha = self.concentration
        rate = alpha / self.expected
        return (
            alpha * jnp.log(rate)
            + (alpha - 1) * jnp.log(value)
            - rate * value
            - jax.scipy.special.gammaln(alpha)
        )

    def sample(self, key, sample_shape=()):
        shape = tuple(sample_shape) + self.batch_shape
        unit = jax.random.gamma(key, self.concentration, shape) / self.concentration
        draws = unit * self.expected
        return jnp.clip(draws, 1e-12, 1.0 - 1e-12)


class Envelope(eqx.Module):
    """Smooth elliptical profile about which a non-parametric morphology is drawn.

    Parameters
    ----------
    params : array_like
        ``(6,)`` parameter vector (see the module docstring).
    cv : float
        Coefficient of variation of the pixels about the envelope.
    """

    params: jax.Array
    cv: float = eqx.field(static=True, default=DEFAULT_CV)

    @classmethod
    def from_values(
        cls, center, radius: float, ellipticity=(0.0, 0.0), index: float = 1.0, cv=DEFAULT_CV
    ) -> Envelope:
        """Envelope of given centre (model pixels), half-light radius, ellipticity, index."""
        g = np.asarray(ellipticity, float)
        if g.shape != (2,) or not np.hypot(*g) < 1:
            raise ValueError(f"ellipticity must be (g1, g2) with |g| < 1; got {ellipticity!r}")
        if not float(radius) > 0:
            raise ValueError(f"envelope radius must be positive; got {radius}")
        if not float(cv) > 0:
            raise ValueError(f"cv must be positive; got {cv}")
        shape = g / np.sqrt(1 - np.sum(g**2))
        params = np.array(
            [*np.asarray(center, float), np.log(float(radius)), *shape, parameter_from_index(index)]
        )
        return cls(jnp.asarray(params), float(cv))

    @classmethod
    def from_image(cls, image, origin, cv=DEFAULT_CV) -> Envelope:
        """Envelope matching the centroid and second moments of an image on a box.

        Parameters
        ----------
        image : ndarray
            ``(h, w)`` non-negative image (e.g. an initial morphology).
        origin : (int, int)
            Model pixel of the box's first pixel.
        cv : float
            Coefficient of variation of the pixels about the envelope.

        Notes
        -----
        The half-light radius is that of a Gaussian with the image's second moments
        (``1.18 sigma``) and the index is 1 (exponential): wide wings, so that light
        beyond the moments' reach is not ruled out before the fit sets the profile.
        """
        img = np.clip(np.asarray(image, float), 0, None)
        total = img.sum()
        if not total > 0:
            raise ValueError("cannot build an envelope from an image with no positive pixel")
        yy, xx = np.indices(img.shape, dtype=float)
        cy, cx = (yy * img).sum() / total, (xx * img).sum() / total
        dy, dx = yy - cy, xx - cx
        iyy = (dy * dy * img).sum() / total
        ixx = (dx * dx * img).sum() / total
        ixy = (dx * dy * img).sum() / total
        sigma = max(float((iyy * ixx - ixy**2) ** 0.25), 0.5)
        # reduced shear from the moments (|g| = (a - b) / (a + b) for axes a, b), in
        # GalSim's convention (as GaussianSource): g1 > 0 stretches along x, g2 > 0
        # along the diagonal x = y
        denominator = ixx + iyy + 2 * np.sqrt(max(iyy * ixx - ixy**2, 1e-12))
        g1, g2 = (ixx - iyy) / denominator, 2 * ixy / denominator
        g = np.array([g1, g2])
        norm = np.hypot(*g)
        if norm > 0.9:
            g = g * 0.9 / norm
        center = (cy + origin[0], cx + origin[1])
        return cls.from_values(center, 1.1774 * sigma, tuple(g), 1.0, cv)

    # -- views ---------------------------------------------------------------------
    @property
    def center(self) -> jax.Array:
        """Centre ``(y, x)``, model pixels."""
        return self.params[:2]

    @property
    def radius(self) -> jax.Array:
        """Half-light radius, model pixels."""
        return jnp.exp(self.params[2])

    @property
    def ellipticity(self) -> jax.Array:
        """Reduced shear ``(g1, g2)``."""
        return unit_disk(self.params[3:5])

    @property
    def index(self) -> jax.Array:
        """Sérsic index."""
        return index_from_parameter(self.params[5])

    @property
    def concentration(self) -> float:
        """Gamma shape ``alpha = 1 / cv^2`` of the pixels about the envelope."""
        return 1.0 / self.cv**2

    def with_params(self, params) -> Envelope:
        """A copy with another parameter vector."""
        return eqx.tree_at(lambda e: e.params, self, jnp.asarray(params))

    # -- the profile and the prior ---------------------------------------------------
    def image(self, origin, box_shape) -> jax.Array:
        """Envelope ``(h, w)`` on a box of model pixels starting at ``origin``."""
        yy = jnp.arange(box_shape[0]) + origin[0] - self.params[0]
        xx = jnp.arange(box_shape[1]) + origin[1] - self.params[1]
        dy, dx = yy[:, None], xx[None, :]
        a = shear_matrix(unit_disk(self.params[3:5]))
        u = a[0, 0] * dx + a[0, 1] * dy
        v = a[1, 0] * dx + a[1, 1] * dy
        # softened by half a pixel so the cusp of n > 1 profiles stays differentiable;
        # the profile is PEAK at its centre whatever its radius and index, so that the
        # envelope fixes the morphology's scale (against which the spectrum's is traded)
        r = jnp.sqrt(u**2 + v**2 + _SOFTENING**2)
        n = self.index
        b = _sersic_b_series(n)
        exponent = (r / self.radius) ** (1.0 / n) - (_SOFTENING / self.radius) ** (1.0 / n)
        return jnp.maximum(PEAK * jnp.exp(-b * exponent), PEAK * FLOOR)

    def morphology_prior(self, origin, box_shape) -> dist.Distribution:
        """Prior of the morphology's pixels given this envelope (event shape ``box``)."""
        return PixelGamma(self.concentration, self.image(origin, box_shape)).to_event(2)

    def prior(self) -> dist.Distribution:
        """Prior of the envelope's parameters: normal about their current values."""
        widths = jnp.asarray(PRIOR_WIDTHS, dtype=self.params.dtype)
        return dist.Normal(self.params, widths).to_event(1)
