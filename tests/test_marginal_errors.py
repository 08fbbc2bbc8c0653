"""Marginal error bars with every morphology pixel free: matrix-free against dense, and
against NUTS over all sites.

The scene (numpy simulator of ``colour_gradients``, one bulge + disk galaxy, HSC
resampled with its correlated noise) is small enough for a dense Hessian (~600
parameters), so the matrix-free Schur-complement solves can be checked against
``numpy.linalg`` on the same point, and the Laplace approximation against NUTS.
"""

from __future__ import annotations

import numpy as np
import pytest

import mobs_ppl as mp
from colour_gradients import default_model, simulate


@pytest.fixture(scope="module")
def fitted():
    sim = simulate(5, n_galaxies=1, hst_size=36, hsc_size=8)
    model = default_model(sim)
    fit = mp.fit_map(model)
    assert fit.converged
    return sim, model, fit


def test_matrix_free_matches_dense(fitted):
    # the default solves (rtol 1e-9, their symmetry checked) have an error (~rtol x
    # condition of the preconditioned operator) far below the 1e-6 asked here
    _, model, fit = fitted
    dense = mp.laplace(model, fit, method="dense")
    free = mp.laplace(model, fit, method="matrix-free")
    assert dense.covariance is not None and free.covariance is None
    a, b = dense.summary_covariance, free.summary_covariance
    assert np.max(np.abs(a - b)) / np.max(np.abs(a)) < 1e-6
    np.testing.assert_allclose(np.sqrt(np.diag(b)), np.sqrt(np.diag(a)), rtol=1e-6)
    np.testing.assert_allclose(free.sd("shift_native"), dense.sd("shift_native"), rtol=1e-6)
    np.testing.assert_allclose(free.sd("flux"), dense.sd("flux"), rtol=1e-6)
    assert dense.decrement == pytest.approx(free.decrement, rel=1e-3, abs=1e-3)


def test_imprecise_solves_are_tightened_or_flagged(fitted):
    from mobs_ppl import laplace_approximation as la

    _, model, fit = fitted
    dense = mp.laplace(model, fit, method="dense")
    # a loose first tolerance: the solved covariance is visibly asymmetric, so the
    # solves are repeated tighter, and the sd end as precise as the default's
    loose = mp.laplace(model, fit, method="matrix-free", rtol=1e-2)
    assert la._SOLVE_STATS["rtol"] < 1e-2
    assert la._SOLVE_STATS["asymmetry"] <= la.SOLVE_ASYMMETRY_TOLERANCE
    np.testing.assert_allclose(loose.sd("flux"), dense.sd("flux"), rtol=1e-5)
    # solves cut off after five CG steps cannot be tightened: a warning says so
    with pytest.warns(mp.MobsPplWarning, match="imprecise"):
        mp.laplace(model, fit, method="matrix-free", max_cg_steps=5)


def test_marginal_errors_include_the_morphologies(fitted):
    _, model, fit = fitted
    marginal = mp.laplace(model, fit)
    conditional = mp.laplace(model, fit, sites=["spectrum", "shift"])
    assert not marginal.conditional and conditional.conditional
    # holding the morphologies can only shrink the error bars
    assert np.all(conditional.sd("shift_native") <= marginal.sd("shift_native") * (1 + 1e-9))
    assert np.all(conditional.sd("flux") <= marginal.sd("flux") * (1 + 1e-9))
    # the draws carry the marginal covariance: the shift is linear in the parameters, so
    # their sd matches sd() to Monte Carlo error (2000 draws: 1.6% sd of an sd; 6%,
    # about 4 sd); a flux is not (the sum of many log-normal pixels), and sd() is its
    # first-order (delta-method) width, which the matrix-free draws follow exactly
    draws = marginal.draws(2000, seed=1)
    np.testing.assert_allclose(
        draws["shift_native"].std(axis=0)[0], marginal.sd("shift_native")[0], rtol=0.06
    )
    free = mp.laplace(model, fit, method="matrix-free").draws(2000, seed=1)
    np.testing.assert_allclose(
        np.log(free["flux"]).std(axis=0), marginal.sd("flux") / fit.scene.fluxes(), rtol=0.06
    )
    with pytest.raises(ValueError, match="method"):
        mp.laplace(model, fit, method="lanczos")


@pytest.fixture(scope="module")
def nuts_against_laplace():
    # NUTS over every site (morphology pixels and envelopes included) on a smaller,
    # brighter scene (~550 parameters; noise half the default), started at the MAP with
    # the Laplace metric, 2 chains x 200 draws
    import arviz as az

    sim = simulate(
        7,
        n_galaxies=1,
        hst_size=24,
        hsc_size=6,
        sigma_hst=0.001,
        sigma_hsc=(0.002, 0.0015, 0.00125, 0.0015, 0.0025),
    )
    model = default_model(sim)
    fit = mp.fit_map(model)
    assert fit.converged
    approx = mp.laplace(model, fit)
    post = mp.sample(model, fit, num_warmup=200, num_samples=200, num_chains=2, seed=3)
    idata = post.to_arviz(log_likelihood="none")
    summary = az.summary(idata, var_names=["shift_native", "flux"], kind="diagnostics")
    print("\n", summary)
    flux_mcse = np.asarray(az.mcse(idata, var_names=["flux"], method="mean")["flux"])
    return fit, approx, post.samples(), flux_mcse


def _sd_pair(fitted, name):
    fit, approx, samples, _ = fitted
    sd, draws = approx.sd(name), np.asarray(samples[name])
    if name == "shift_native":
        draws, sd = draws[:, 0], sd[0]
    print(name, "laplace sd", np.round(sd, 5), "nuts sd", np.round(draws.std(axis=0), 5))
    return sd, draws


@pytest.mark.slow
def test_laplace_flux_errors_match_nuts_over_all_sites(nuts_against_laplace):
    # flux sd: NUTS / Laplace 0.92 - 1.19 measured (bulk ESS 8 - 310 per band, so the
    # sd of an sd is 4 - 25%); the bound, 25%. The posterior means lie within 0.5 sd
    # of the MAP (a flux is a sum of log-normal pixels: its mean is not its mode) plus
    # three Monte Carlo standard errors of the mean: with ESS 8 in z that error is
    # 0.4 sd, and z's mean, 1.0 sd from the MAP, is within 0.5 sd + 3 MCSE = 1.8 sd
    fit, mcse = nuts_against_laplace[0], nuts_against_laplace[3]
    sd, draws = _sd_pair(nuts_against_laplace, "flux")
    np.testing.assert_allclose(draws.std(axis=0), sd, rtol=0.25)
    offset = np.abs(draws.mean(axis=0) - np.asarray(fit.scene.fluxes()))
    print("|mean - MAP| / sd", np.round(offset / sd, 2), "MCSE / sd", np.round(mcse / sd, 2))
    assert np.all(offset < 0.5 * sd + 3 * mcse)


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="issue 13, open: the marginal Laplace sd of the shift is 0.037 / 0.062 native px "
    "(y / x) where NUTS over all sites gives 0.055 / 0.060, but NUTS mixes badly along the "
    "shift (bulk ESS 11 - 14 of 400, r_hat 1.12 - 1.14): which one is wrong in y is not "
    "settled",
)
def test_laplace_shift_errors_match_nuts_over_all_sites(nuts_against_laplace):
    fit = nuts_against_laplace[0]
    sd, draws = _sd_pair(nuts_against_laplace, "shift_native")
    np.testing.assert_allclose(draws.std(axis=0), sd, rtol=0.25)
    assert np.all(np.abs(np.median(draws, axis=0) - fit.shift_native("HSC")[0]) < 0.5 * sd)
