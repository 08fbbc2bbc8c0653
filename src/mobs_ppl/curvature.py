"""Curvature of a scalar function of a flat parameter vector: Hessians and metrics.

Pure functions used by the Laplace approximation (:mod:`mobs_ppl.laplace_approximation`) and by
:func:`mobs_ppl.sample` to start NUTS with a mass matrix fitted to the posterior.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["curvature_metric", "hessian", "hessian_diagonal", "inverse_metric"]


def _exact_hessian(fn: Callable, x: jnp.ndarray, batch_size: int) -> np.ndarray:
    grad = jax.grad(fn)

    def column(direction):
        return jax.jvp(grad, (x,), (direction,))[1]

    basis = jnp.eye(x.size, dtype=x.dtype)
    return np.asarray(jax.jit(lambda b: jax.lax.map(column, b, batch_size=batch_size))(basis))


def _finite_difference_hessian(
    fn: Callable, x: jnp.ndarray, batch_size: int, rel_step: float
) -> np.ndarray:
    grad = jax.grad(fn)
    steps = rel_step * jnp.maximum(jnp.abs(x), 1.0)

    def column(i):
        e = jnp.zeros_like(x).at[i].set(steps[i])
        return (grad(x + e) - grad(x - e)) / (2 * steps[i])

    indices = jnp.arange(x.size)
    return np.asarray(jax.jit(lambda i: jax.lax.map(column, i, batch_size=batch_size))(indices))


def hessian(
    fn: Callable[[jnp.ndarray], jnp.ndarray],
    x,
    batch_size: int = 8,
    rel_step: float = 1e-5,
) -> np.ndarray:
    """Hessian of a scalar function at a flat point, symmetrised.

    Columns are Hessian-vector products (forward-over-reverse differentiation), computed
    ``batch_size`` at a time so memory stays that of a few gradients. Where JAX has no
    second derivative (the Sérsic ``b_n`` goes through the incomplete gamma function,
    whose derivative in its first argument is not differentiable again), the columns
    are central differences of the exact gradient with steps
    ``rel_step * max(|x|, 1)`` instead.

    Parameters
    ----------
    fn : callable
        Scalar function of a 1-d array.
    x : array_like
        The point, shape ``(n,)``.
    batch_size : int
        Columns computed together.
    rel_step : float
        Relative step of the finite-difference fallback.

    Returns
    -------
    ndarray
        ``(n, n)`` symmetric matrix.
    """
    x = jnp.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"x must be a flat vector, got shape {x.shape}")
    try:
        h = _exact_hessian(fn, x, batch_size)
    except NotImplementedError:
        h = _finite_difference_hessian(fn, x, batch_size, rel_step)
    if not np.all(np.isfinite(h)):
        raise FloatingPointError("the Hessian has non-finite entries at this point")
    return 0.5 * (h + h.T)


def hessian_diagonal(
    fn: Callable[[jnp.ndarray], jnp.ndarray], x, batch_size: int = 8, rel_step: float = 1e-5
) -> np.ndarray:
    """Diagonal of the Hessian of a scalar function, in memory linear in ``x.size``.

    Each entry is one Hessian-vector product along a coordinate axis (exact, or a
    central difference of the gradient where JAX has no second derivative, as in
    :func:`hessian`); only the diagonal element of each column is kept.
    """
    x = jnp.asarray(x)
    grad = jax.grad(fn)

    def exact(i):
        e = jnp.zeros_like(x).at[i].set(1.0)
        return jax.jvp(grad, (x,), (e,))[1][i]

    def difference(i):
        step = rel_step * jnp.maximum(jnp.abs(x[i]), 1.0)
        e = jnp.zeros_like(x).at[i].set(step)
        return (grad(x + e)[i] - grad(x - e)[i]) / (2 * step)

    indices = jnp.arange(x.size)
    try:
        diag = jax.jit(lambda i: jax.lax.map(exact, i, batch_size=batch_size))(indices)
    except NotImplementedError:
        diag = jax.jit(lambda i: jax.lax.map(difference, i, batch_size=batch_size))(indices)
    diag = np.asarray(diag)
    if not np.all(np.isfinite(diag)):
        raise FloatingPointError("the Hessian has non-finite entries at this point")
    return diag


def inverse_metric(hess: np.ndarray, floor: float = 1e-10) -> np.ndarray:
    """A positive-definite inverse of a symmetric Hessian (covariance-like matrix).

    At a mode the Hessian of the negative log density is positive definite and this
    is its inverse, the Laplace covariance. Elsewhere (a start point that is not a
    mode) eigenvalues may be negative or zero: their absolute values are used, floored
    at ``floor`` times the largest, so the result is always a usable NUTS metric.

    Parameters
    ----------
    hess : ndarray
        ``(n, n)`` symmetric matrix.
    floor : float
        Smallest eigenvalue kept, relative to the largest absolute eigenvalue.
    """
    values, vectors = np.linalg.eigh(np.asarray(hess, float))
    magnitude = np.abs(values)
    largest = magnitude.max() if magnitude.size else 1.0
    magnitude = np.maximum(magnitude, floor * largest if largest > 0 else 1.0)
    return (vectors / magnitude) @ vectors.T


def curvature_metric(potential, location, dense: bool) -> tuple:
    """NUTS inverse mass matrix from the curvature of ``potential`` at ``location``.

    Dense: the positive-definite inverse of the Hessian (:func:`inverse_metric`).
    Otherwise: the inverse of the Hessian's absolute diagonal, floored at 1e-10 of its
    largest entry, computed in linear memory.

    Returns
    -------
    matrix : jax.Array
        ``(n, n)`` or ``(n,)``.
    at_mode : bool
        Whether the curvature is positive (definite) there, as at a local mode.
    """
    if not dense:
        diag = hessian_diagonal(potential, location)
        magnitude = np.abs(diag)
        floor = 1e-10 * magnitude.max() if magnitude.max() > 0 else 1.0
        return jnp.asarray(1.0 / np.maximum(magnitude, floor)), bool(diag.min() > 0)
    hess = hessian(potential, location)
    return jnp.asarray(inverse_metric(hess)), bool(np.linalg.eigvalsh(hess).min() > 0)
