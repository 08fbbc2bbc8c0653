"""Matrix-free linear solves with curvature operators: preconditioned conjugate gradients.

Used by :func:`mobs_ppl.fit_map` (Newton steps) and :func:`mobs_ppl.laplace` (marginal
covariances) on problems of 10^4 to 10^5 parameters, where the curvature is only
available as products ``H v``.

The conjugate-gradient loop is written out here rather than taken from
``jax.scipy.sparse.linalg.cg`` or lineax because three things are needed that those do
not give together: the iteration count, a limit on it that is a traced value (one
compiled solver serves every tolerance and limit), and a stop at the first direction
of non-positive curvature (a Hessian away from a mode is not positive definite; the
caller then damps more, or reports that the point is no mode).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = [
    "apply_balancing",
    "balancing_preconditioner",
    "coarse_factor",
    "conjugate_gradient",
    "two_level_preconditioner",
]


def conjugate_gradient(
    operator: Callable[[jax.Array], jax.Array],
    b: jax.Array,
    precondition: Callable[[jax.Array], jax.Array] | None = None,
    rtol=1e-6,
    max_steps=1000,
):
    """Solve ``A x = b`` for a symmetric positive definite ``A`` given as ``v -> A v``.

    Parameters
    ----------
    operator : callable
        ``v -> A v``.
    b : jax.Array
        Right-hand side, flat.
    precondition : callable, optional
        ``r -> M^{-1} r`` for a symmetric positive definite ``M``.
    rtol : float or scalar array
        Stop when ``|b - A x| <= rtol |b|`` (Euclidean norms).
    max_steps : int or scalar array
        Largest number of iterations.

    Returns
    -------
    x : jax.Array
        The solution (the last iterate with positive curvature, if a direction of
        non-positive curvature was met).
    steps : jax.Array
        Iterations done.
    positive : jax.Array
        ``False`` if a direction ``p`` with ``p^T A p <= 0`` was met.
    """
    precondition = precondition or (lambda r: r)
    target = rtol * jnp.linalg.norm(b)
    x0 = jnp.zeros_like(b)
    z0 = precondition(b)

    def condition(state):
        _, r, _, _, k, positive = state
        return (k < max_steps) & (jnp.linalg.norm(r) > target) & positive

    def body(state):
        x, r, p, rz, k, _ = state
        ap = operator(p)
        curvature = jnp.dot(p, ap)
        positive = curvature > 0
        alpha = jnp.where(positive, rz / jnp.where(positive, curvature, 1.0), 0.0)
        x = x + alpha * p
        r = r - alpha * ap
        z = precondition(r)
        rz_new = jnp.dot(r, z)
        p = z + (rz_new / rz) * p
        return x, r, p, rz_new, k + 1, positive

    state = (x0, b, z0, jnp.dot(b, z0), jnp.asarray(0), jnp.asarray(True))
    x, _, _, _, steps, positive = jax.lax.while_loop(condition, body, state)
    return x, steps, positive


def two_level_preconditioner(
    operator: Callable[[jax.Array], jax.Array], directions: jax.Array
) -> Callable[[jax.Array], jax.Array]:
    """Balancing (Neumann-Neumann) preconditioner with a coarse space of directions.

    For an operator already scaled to unit diagonal (Jacobi), ``M^{-1} = Q + (I - Q A)
    (I - A Q)`` with ``Q = W (W^T A W)^{-1} W^T`` and ``W`` an orthonormal basis of
    ``directions``. It solves the coarse space exactly, which removes from the
    spectrum the small eigenvalues of collective directions that a diagonal
    preconditioner cannot see. ``A W`` is computed here, once (``k`` products), so
    applying ``M^{-1}`` costs no further products.

    Parameters
    ----------
    operator : callable
        ``v -> A v`` (symmetric positive definite).
    directions : jax.Array
        ``(k, n)`` coarse directions (need not be orthogonal; ``k`` may be 0).
    """
    if directions.shape[0] == 0:
        return lambda r: r
    basis = jnp.linalg.qr(directions.T)[0]
    return balancing_preconditioner(basis, jax.lax.map(operator, basis.T).T)


def balancing_preconditioner(basis: jax.Array, applied: jax.Array):
    """The preconditioner of :func:`two_level_preconditioner` from products already made.

    Parameters
    ----------
    basis : jax.Array
        ``(n, k)`` orthonormal columns ``W`` (``k >= 1``).
    applied : jax.Array
        ``(n, k)``: ``A W``.
    """
    factor = coarse_factor(basis, applied)
    return lambda r: apply_balancing(basis, applied, factor, r)


def coarse_factor(basis: jax.Array, applied: jax.Array) -> jax.Array:
    """Lower Cholesky factor of the coarse matrix ``W^T A W`` (symmetrised)."""
    small = basis.T @ applied
    return jnp.linalg.cholesky(0.5 * (small + small.T))


def apply_balancing(basis, applied, factor, r) -> jax.Array:
    """``M^{-1} r`` of :func:`balancing_preconditioner`, given :func:`coarse_factor`."""

    def solve(v):
        return jax.scipy.linalg.cho_solve((factor, True), v)

    coefficients = solve(basis.T @ r)
    t = r - applied @ coefficients
    return basis @ coefficients + t - basis @ solve(applied.T @ t)
