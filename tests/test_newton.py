"""MAP fits to the mode: the default optimiser, checked with NumPyro's own density.

The scene is drawn by the independent numpy simulator of ``colour_gradients`` (a red
bulge in a blue disk: not a profile the model has). Whether the fit is at the mode is
decided here from NumPyro's ``potential_energy`` (the density NUTS samples), its
gradient and dense Hessian by JAX, not from the optimiser's own bookkeeping.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from numpyro.infer.util import potential_energy, unconstrain_fn

import mobs_ppl as mp
from colour_gradients import default_model, simulate


@pytest.fixture(scope="module")
def small():
    sim = simulate(5, n_galaxies=1, hst_size=36, hsc_size=8)
    return sim, default_model(sim, cores="none")


def _numpyro_decrement(model, params):
    """``sqrt(g^T H^-1 g)`` of NumPyro's potential at ``params``, dense."""
    unconstrained = unconstrain_fn(model, (), {}, params)
    flat, unravel = ravel_pytree(unconstrained)

    def energy(x):
        return potential_energy(model, (), {}, unravel(x))

    g = jax.grad(energy)(flat)
    h = jax.hessian(energy)(flat)
    return float(jnp.sqrt(g @ jnp.linalg.solve(h, g))), np.linalg.eigvalsh(np.asarray(h)).min()


def test_default_fit_reaches_the_mode(small):
    _, model = small
    fit = mp.fit_map(model)
    assert fit.method == "newton"
    assert fit.converged and fit.decrement < 0.1
    assert 0 < fit.iterations < 200
    # independently: NumPyro's potential has a positive definite Hessian there, and
    # the Newton step to its mode is shorter than 0.1 posterior sd (the default
    # tolerance; a factor 2 allows for the Gauss-Newton curvature the optimiser uses)
    decrement, smallest = _numpyro_decrement(model, fit.params)
    assert smallest > 0
    assert decrement < 0.2


def test_adam_stops_short_and_says_so(small):
    # 300 Adam steps from the same start: the criterion must see it is not done
    _, model = small
    with pytest.warns(mp.MobsPplWarning, match="not converged|unconverged|decrement"):
        fit = mp.fit_map(model, method="adam", max_iter=300)
    assert not fit.converged
    assert fit.decrement > 0.1
    assert _numpyro_decrement(model, fit.params)[0] > 0.1


def test_fit_map_validates_its_arguments(small):
    _, model = small
    with pytest.raises(ValueError, match="method"):
        mp.fit_map(model, method="bfgs")
    with pytest.raises(ValueError, match="tol"):
        mp.fit_map(model, tol=-1.0)


def test_prior_curvature_model_is_positive_semi_definite():
    # the exact prior Hessian in the fit's coordinates (morphologies relative to their
    # envelopes) is not positive definite (the upper barrier -log(1 - m) is not convex
    # in the envelope's parameters); the model the Newton steps use must be, and must
    # differ from the exact one only by that barrier's second-order term
    from mobs_ppl.newton import PosteriorProblem, _prior_curvature
    from mobs_ppl.sites import split_sites

    model = default_model(simulate(3, n_galaxies=1, hst_size=20, hsc_size=5))
    values, fixed = split_sites(model, model.init_values(), None)
    problem = PosteriorProblem.build(model, values, fixed)
    assert problem.ties
    z = problem.start
    eye = jnp.eye(z.size, dtype=z.dtype)
    # compiled: op by op, these dense matrices took minutes
    modelled = np.asarray(jax.jit(lambda e: jax.vmap(_prior_curvature(problem, z))(e))(eye))
    exact = np.asarray(jax.jit(jax.hessian(problem.prior_potential))(z))
    scale = np.max(np.abs(np.diag(exact)))
    np.testing.assert_allclose(modelled, modelled.T, atol=1e-9 * scale)
    assert np.linalg.eigvalsh(modelled).min() > -1e-9 * scale
    # what is left out: the barrier's Hessian minus its Gauss-Newton term, which is
    # (-log(1 - m))' m'' = m'' / (1 - m) in every pixel -- small next to the rest
    tied = jax.jit(jax.jacfwd(problem.tied_values))(z)
    m = np.asarray(problem.tied_values(z))
    barrier_gn = np.asarray(tied).T @ (np.asarray(tied) / (1 - m)[:, None] ** 2)
    barrier = jax.hessian(lambda x: -jnp.sum(jnp.log1p(-problem.tied_values(x))))
    barrier_exact = np.asarray(jax.jit(barrier)(z))
    np.testing.assert_allclose(
        modelled - barrier_gn, exact - barrier_exact, atol=1e-8 * scale, rtol=1e-8
    )
