"""Batched MAP fits: each scene of a batch gets the fit it would get on its own.

The reference is an independent ``mp.fit_map`` of every scene, and distances are
measured in posterior standard deviations from NumPyro's own density (the dense
Hessian of ``potential_energy`` in its unconstrained space), not from the optimiser's
bookkeeping. Scenes: small simulated blends of Gaussian galaxies (``blends.py``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from numpyro.infer.util import potential_energy, unconstrain_fn

import mobs_ppl as mp
from blends import blend_model

#: Three blends of one structure; the last starts far from the truth (radius 4 px for
#: galaxies of 1.2-2.4 px, centres up to 0.45 px off), so it needs more steps.
STARTS = ({}, {}, {"start_radius": 4.0, "start_offset": 0.45})


@pytest.fixture(scope="module")
def scenes():
    models = [blend_model(seed, **start) for seed, start in enumerate(STARTS)]
    singles = [mp.fit_map(model) for model in models]
    batched = mp.fit_map_batch(models)
    return models, singles, batched


def _unconstrained(model, params):
    latent = {k: v for k, v in params.items() if k in model.init_values()}
    return ravel_pytree(unconstrain_fn(model, (), {}, latent))


def _posterior_sd(model, params):
    """Marginal sd of every unconstrained coordinate: NumPyro's dense Laplace at ``params``."""
    flat, unravel = _unconstrained(model, params)
    hessian = jax.hessian(lambda x: potential_energy(model, (), {}, unravel(x)))(flat)
    return np.sqrt(np.diag(np.linalg.inv(np.asarray(hessian))))


def _distance_in_sd(model, a, b):
    """Largest ``|a - b| / sd`` over the unconstrained coordinates (sd at ``a``)."""
    ua, ub = _unconstrained(model, a.params)[0], _unconstrained(model, b.params)[0]
    return float(np.max(np.abs(np.asarray(ua - ub)) / _posterior_sd(model, a.params)))


def test_batched_fits_agree_with_single_fits(scenes):
    models, singles, batched = scenes
    assert len(batched) == len(models)
    for model, single, fit in zip(models, singles, batched, strict=True):
        assert single.converged and fit.converged
        assert fit.decrement < 0.1 and fit.method == "newton"
        # the batch takes every scene's decisions with the same StepControl and the
        # same random projections, so the paths are the same up to the rounding of the
        # vectorised operations (~1e-13 relative): 1e-6 sd is far above that and far
        # below what one different decision does (two converged points of different
        # paths lie up to ~0.1 sd apart, the tolerance of the decrement)
        assert _distance_in_sd(model, single, fit) < 1e-6
        assert fit.iterations == single.iterations
        np.testing.assert_allclose(fit.losses, single.losses, rtol=1e-10, atol=1e-8)
        np.testing.assert_allclose(fit.decrement, single.decrement, rtol=1e-6)
        assert set(fit.params) == set(single.params)


def test_scenes_finish_at_their_own_step_and_stay_put(scenes):
    models, singles, batched = scenes
    iterations = [fit.iterations for fit in batched]
    # the far start needs more steps than the near ones (independently: fit_map)
    assert singles[2].iterations > max(singles[0].iterations, singles[1].iterations)
    assert iterations[2] > max(iterations[:2])
    # the scenes done early were carried along for the hard one's extra steps: had
    # they been moved they would no longer sit where their own fit stopped
    for k in (0, 1):
        assert _distance_in_sd(models[k], singles[k], batched[k]) < 1e-6
        assert len(batched[k].losses) == len(singles[k].losses)


def test_each_fit_is_a_mode_of_numpyros_density(scenes):
    models, _, batched = scenes
    for model, fit in zip(models, batched, strict=True):
        flat, unravel = _unconstrained(model, fit.params)

        def energy(x, unravel=unravel, model=model):
            return potential_energy(model, (), {}, unravel(x))

        g = jax.grad(energy)(flat)
        h = jax.hessian(energy)(flat)
        decrement = float(jnp.sqrt(g @ jnp.linalg.solve(h, g)))
        # Gauss-Newton vs exact curvature: a factor 2 on the 0.1 tolerance
        assert decrement < 0.2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"n_sources": 2}, "number of sources"),
        ({"box_size": 13}, "source 0"),
        ({"start_offset": 0.9}, "origin"),
        ({"size": 30}, "observation 'blend'"),
    ],
)
def test_scenes_of_other_shapes_are_refused(change, message):
    models = [blend_model(0), blend_model(1, **change)]
    if change == {"start_offset": 0.9}:
        # some box must have moved for this case to test anything
        origins = [[s.origin for s in m.scene.sources] for m in models]
        assert origins[0] != origins[1]
    with pytest.raises(ValueError, match=message):
        mp.fit_map_batch(models)


def test_arguments_are_checked():
    model = blend_model(0)
    with pytest.raises(ValueError, match="empty"):
        mp.fit_map_batch([])
    with pytest.raises(ValueError, match="init"):
        mp.fit_map_batch([model, model], init=[None])
    with pytest.raises(ValueError, match="tol"):
        mp.fit_map_batch([model], tol=0.0)


def test_float32(float32):
    models = [blend_model(seed, dtype=np.float32) for seed in (3, 4)]
    batched = mp.fit_map_batch(models)
    for model, fit in zip(models, batched, strict=True):
        assert fit.params["spectrum"].dtype == jnp.float32
        single = mp.fit_map(model)
        assert fit.converged and single.converged
        # in float32 a rounding difference can tip a decision (a step accepted or
        # not): both are then converged points, each within 0.1 sd of the mode
        assert _distance_in_sd(model, single, fit) < 0.2
