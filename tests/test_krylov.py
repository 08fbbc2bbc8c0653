"""Conjugate gradients and the two-level preconditioner, against dense linear algebra."""

import jax
import jax.numpy as jnp
import numpy as np

from mobs_ppl.krylov import conjugate_gradient, two_level_preconditioner
from mobs_ppl.laplace_approximation import SOLVE_ASYMMETRY_TOLERANCE, solve_asymmetry


def _spd(n, condition, seed):
    rng = np.random.default_rng(seed)
    q = np.linalg.qr(rng.normal(size=(n, n)))[0]
    values = np.geomspace(1.0, condition, n)
    return q @ np.diag(values) @ q.T, q, values


def test_solves_a_positive_definite_system():
    a, _, _ = _spd(120, 1e4, 0)
    b = np.random.default_rng(1).normal(size=120)
    x, steps, positive = conjugate_gradient(
        lambda v: jnp.asarray(a) @ v, jnp.asarray(b), rtol=1e-10
    )
    # residual below rtol |b| (the stopping rule); the error then below cond * rtol
    assert bool(positive)
    assert np.linalg.norm(a @ np.asarray(x) - b) <= 1e-10 * np.linalg.norm(b) * 1.0001
    np.testing.assert_allclose(x, np.linalg.solve(a, b), rtol=1e-5, atol=1e-8)
    assert 0 < int(steps) <= 10 * 120  # rounding loses conjugacy: beyond n, not unbounded


def test_step_limit_is_a_traced_value():
    a, _, _ = _spd(60, 1e3, 2)
    b = jnp.ones(60)

    @jax.jit
    def solve(limit):
        return conjugate_gradient(lambda v: jnp.asarray(a) @ v, b, rtol=1e-12, max_steps=limit)

    assert int(solve(jnp.asarray(3))[1]) == 3
    assert int(solve(jnp.asarray(7))[1]) == 7


def test_stops_at_negative_curvature():
    a, q, values = _spd(50, 10.0, 3)
    indefinite = a - 2.0 * np.outer(q[:, 0], q[:, 0])  # eigenvalue 1 -> -1
    b = jnp.asarray(q[:, 0] + 0.1 * q[:, 1])
    _, _, positive = conjugate_gradient(lambda v: jnp.asarray(indefinite) @ v, b)
    assert not bool(positive)


def test_two_level_preconditioner_is_exact_on_its_coarse_space():
    # unit-diagonal operator whose smallest eigenvalues belong to a few directions
    a, q, values = _spd(80, 1e5, 4)
    d = 1 / np.sqrt(np.diag(a))
    a = d[:, None] * a * d[None, :]
    w, v = np.linalg.eigh(a)
    coarse = np.random.default_rng(5).normal(size=(5, 5)) @ v[:, :5].T  # not orthogonal
    inverse = two_level_preconditioner(lambda x: jnp.asarray(a) @ x, jnp.asarray(coarse))
    m_inv = np.stack([np.asarray(inverse(jnp.asarray(e))) for e in np.eye(80)], axis=1)
    # symmetric, positive definite, and M^-1 A is the identity on span(directions)
    np.testing.assert_allclose(m_inv, m_inv.T, atol=1e-8)
    assert np.linalg.eigvalsh(0.5 * (m_inv + m_inv.T)).min() > 0
    np.testing.assert_allclose(m_inv @ a @ v[:, :5], v[:, :5], atol=1e-8)
    # it removes the small eigenvalues: CG needs fewer iterations than unpreconditioned
    b = jnp.asarray(np.random.default_rng(6).normal(size=80))
    plain = conjugate_gradient(lambda x: jnp.asarray(a) @ x, b, rtol=1e-8, max_steps=2000)
    two_level = conjugate_gradient(lambda x: jnp.asarray(a) @ x, b, inverse, 1e-8, 2000)
    np.testing.assert_allclose(two_level[0], np.linalg.solve(a, np.asarray(b)), rtol=1e-4)
    assert int(two_level[1]) < int(plain[1])


def test_no_directions_is_the_identity():
    inverse = two_level_preconditioner(lambda x: 2 * x, jnp.zeros((0, 4)))
    np.testing.assert_array_equal(inverse(jnp.arange(4.0)), jnp.arange(4.0))


def test_asymmetry_of_solved_covariances_measures_their_error():
    # G = R X^T from CG solves of H X^T = R^T, against the dense R H^-1 R^T. The
    # asymmetry is at most twice the largest normalised error (each G_ij - G_ji is the
    # difference of two errors), and here, ill-conditioned (1e6), within 20x of it:
    # loose solves are caught, tight ones pass
    a, _, _ = _spd(150, 1e6, 7)
    rows = np.random.default_rng(8).normal(size=(6, 150))
    exact = rows @ np.linalg.solve(a, rows.T)
    scale = np.sqrt(np.outer(np.diag(exact), np.diag(exact)))
    found = {}
    for rtol in (1e-2, 1e-4, 1e-10):
        solved = np.stack(
            [
                np.asarray(
                    conjugate_gradient(
                        lambda v: jnp.asarray(a) @ v, jnp.asarray(r), None, rtol, 5000
                    )[0]
                )
                for r in rows
            ]
        )
        gram = rows @ solved.T
        error = np.max(np.abs(gram - exact) / scale)
        found[rtol] = solve_asymmetry(gram), error
        assert found[rtol][0] <= 2.0 * error * 1.01
        assert found[rtol][0] >= error / 20
    assert found[1e-2][0] > SOLVE_ASYMMETRY_TOLERANCE
    assert found[1e-10][0] < SOLVE_ASYMMETRY_TOLERANCE
    print({k: f"asymmetry {v[0]:.1e}, error {v[1]:.1e}" for k, v in found.items()})
    # a dense solve is symmetric to rounding (condition 1e6 x 2.2e-16 = 2e-10)
    assert solve_asymmetry(exact) < 1e-8
