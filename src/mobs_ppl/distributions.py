"""Likelihoods of images as NumPyro distributions (``log_prob`` and ``sample``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from numpyro.distributions import constraints

from .noise import StationaryNoise

__all__ = ["pixel_normal", "StationaryImageNormal"]


def pixel_normal(prediction, weights) -> dist.Distribution:
    """Independent Gaussian pixels with inverse variances ``weights`` (zero = masked).

    Batch shape is the image shape, so log-likelihoods stay pointwise (one value per
    pixel, zero for masked pixels) and ArviZ's LOO can use them.
    """
    used = weights > 0
    sigma = jnp.where(used, 1.0 / jnp.sqrt(jnp.where(used, weights, 1.0)), 1.0)
    return dist.Normal(prediction, sigma).mask(used)


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
