"""Likelihoods of images as NumPyro distributions (``log_prob`` and ``sample``).

Both kinds also give the residual whitened by their noise model
(``whitened_residual(value)``): a vector ``r`` with ``log_prob(value) = -0.5 |r|^2 +
const``, the residual vector of the least-squares problem that
:func:`mobs_ppl.fit_map` solves.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from numpyro.distributions import constraints

from .noise import StationaryNoise

__all__ = ["PixelNormal", "pixel_normal", "StationaryImageNormal"]


class PixelNormal(dist.Normal):
    """Independent Gaussian pixels with inverse variances ``weights`` (zero = masked).

    Batch shape is the image shape, so log-likelihoods stay pointwise (one value per
    pixel, zero for masked pixels) and ArviZ's LOO can use them.

    Parameters
    ----------
    prediction : jax.Array
        Mean image.
    weights : jax.Array
        Inverse variances, same shape; zero marks a pixel that does not count.
    """

    pytree_data_fields = ("weights",)

    def __init__(self, prediction, weights, *, validate_args=None):
        self.weights = jnp.asarray(weights)
        used = self.weights > 0
        sigma = jnp.where(used, 1.0 / jnp.sqrt(jnp.where(used, self.weights, 1.0)), 1.0)
        super().__init__(prediction, sigma, validate_args=validate_args)

    def log_prob(self, value):
        return jnp.where(self.weights > 0, super().log_prob(value), 0.0)

    def whitened_residual(self, value) -> jax.Array:
        """``sqrt(w) (value - prediction)`` (zero where masked)."""
        return jnp.sqrt(self.weights) * (value - self.loc)


def pixel_normal(prediction, weights) -> PixelNormal:
    """Independent Gaussian pixels with inverse variances ``weights`` (zero = masked)."""
    return PixelNormal(prediction, weights)


class StationaryImageNormal(dist.Distribution):
    """Image stack with stationary correlated Gaussian noise around ``prediction``.

    Parameters
    ----------
    prediction : jax.Array
        ``(channels, height, width)`` mean image.
    noise : StationaryNoise
        Fourier-diagonal covariance model.
    used : jax.Array
        Boolean mask of pixels that count (others enter as zero residuals).
    """

    support = constraints.real_vector
    pytree_data_fields = ("prediction", "noise", "used")

    def __init__(self, prediction, noise: StationaryNoise, used, *, validate_args=None):
        self.prediction = prediction
        self.noise = noise
        self.used = used
        super().__init__(
            batch_shape=(), event_shape=tuple(prediction.shape), validate_args=validate_args
        )

    @property
    def mean(self):
        return self.prediction

    def sample(self, key, sample_shape=()):
        keys = (
            jax.random.split(key, max(1, int(jnp.prod(jnp.array(sample_shape)))))
            if sample_shape
            else None
        )
        if keys is None:
            return self.prediction + self.noise.sample(key)
        draws = jax.vmap(self.noise.sample)(keys)
        return (self.prediction + draws).reshape((*sample_shape, *self.event_shape))

    def log_prob(self, value):
        return self.noise.log_likelihood((value - self.prediction) * self.used)

    def whitened_residual(self, value) -> jax.Array:
        """The masked residual whitened by the noise covariance (``C^{-1/2} r``)."""
        return self.noise.whiten((value - self.prediction) * self.used)
