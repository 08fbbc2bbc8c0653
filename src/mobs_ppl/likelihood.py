"""Gaussian log-likelihoods of images."""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["gaussian_log_likelihood"]


def gaussian_log_likelihood(data, prediction, weights) -> jax.Array:
    """Log-likelihood of independent Gaussian pixels with inverse variances ``weights``.

    ``-0.5 * sum(w * (d - m)^2) + 0.5 * sum_{w > 0} log(w / (2 pi))``; pixels of zero
    weight contribute nothing.
    """
    used = weights > 0
    safe = jnp.where(used, weights, 1.0)
    chi2 = jnp.sum(weights * (data - prediction) ** 2)
    norm = jnp.sum(jnp.where(used, jnp.log(safe / (2 * jnp.pi)), 0.0))
    return -0.5 * chi2 + 0.5 * norm
