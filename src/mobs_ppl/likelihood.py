"""Gaussian log-likelihoods of images."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .distributions import pixel_normal

__all__ = ["gaussian_log_likelihood"]


def gaussian_log_likelihood(data, prediction, weights) -> jax.Array:
    """Log-likelihood of independent Gaussian pixels with inverse variances ``weights``.

    ``-0.5 * sum(w * (d - m)^2) + 0.5 * sum_{w > 0} log(w / (2 pi))``; pixels of zero
    weight contribute nothing. The sum of :class:`mobs_ppl.distributions.PixelNormal`'s
    pointwise density, the one implementation of the formula.
    """
    return jnp.sum(pixel_normal(prediction, weights).log_prob(jnp.asarray(data)))
