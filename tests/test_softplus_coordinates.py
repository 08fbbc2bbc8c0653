"""NUTS in softplus coordinates of the spectra, against closed forms and quadrature.

The problem is linear in the fluxes: two blended Gaussian galaxies of fixed shape in
one 24 x 24 image with Gaussian noise, only the spectrum sampled, the second galaxy
so faint that its flux is consistent with zero. With ``A`` the design (each galaxy
rendered with unit flux, built here by rendering each alone), ``W = I / sigma^2``, the
HalfNormal prior scales ``p`` and ``x = s softplus(z)``, the potential in the sampled
coordinates is

    U(z) = 1/2 (d - A x)^T W (d - A x) + sum x^2 / (2 p^2) - sum log(s sigmoid(z)),

whose exact Hessian ``_hessian`` writes out by hand. The posterior of ``x`` is a Gaussian
truncated to ``x >= 0``, whose mean and sd a grid quadrature gives.
"""

from __future__ import annotations

import numpy as np
import numpyro
import pytest
from astropy.wcs import WCS
from numpyro.infer.util import potential_energy

import mobs_ppl as mp
from mobs_ppl.laplace_approximation import start_inverse_mass_matrix, unconstrained_problem
from mobs_ppl.psf import gaussian_psf
from mobs_ppl.softplus_coordinates import auxiliary_name, inverse_softplus, softplus_start

N = 24
SIGMA = 0.01
#: The second galaxy at ~0.6 of its flux sd (~0.08): its posterior piles up at zero.
TRUE_FLUX = np.array([4.0, 0.05])


def _wcs():
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.cd = np.diag([-0.05, 0.05]) / 3600.0
    w.wcs.crpix = [(N + 1) / 2, (N + 1) / 2]
    w.wcs.set()
    return w


@pytest.fixture(scope="module")
def problem():
    template = mp.Observation(
        np.zeros((1, N, N)), weights=SIGMA**-2, psf=gaussian_psf(1.3), wcs=_wcs(), channels=["a"]
    )
    frame = mp.Frame.from_observations([template])
    sources = [
        mp.GaussianSource((10.2, 11.0), [1.0], radius=2.0, ellipticity=(0.1, 0.0)),
        mp.GaussianSource((12.5, 13.0), [1.0], radius=1.6),
    ]
    matched = template.match(frame)
    design = np.stack(
        [np.asarray(matched.render(mp.Scene(frame, [s]).render())).ravel() for s in sources], 1
    )
    rng = np.random.default_rng(3)
    data = (design @ TRUE_FLUX).reshape(1, N, N) + rng.normal(0, SIGMA, (1, N, N))
    obs = mp.Observation(data, weights=SIGMA**-2, psf=gaussian_psf(1.3), wcs=_wcs(), channels=["a"])
    start = np.array([4.0, 0.08])  # near the mode
    scene = mp.Scene(frame, [s.with_spectrum([f]) for s, f in zip(sources, start, strict=True)])
    model = mp.SceneModel(scene, [obs])
    prior_scale = np.asarray(model.default_priors()["spectrum"].scale).ravel()
    fixed = {k: v for k, v in model.init_values().items() if k != "spectrum"}
    return {
        "model": model,
        "design": design,
        "data": data.ravel(),
        "prior_scale": prior_scale,
        "start": start,
        "fixed": fixed,
    }


def _softplus(z):
    return np.logaddexp(0.0, z)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _potential(p, scale, z):
    x = scale * _softplus(z)
    r = p["data"] - p["design"] @ x
    return (
        0.5 * r @ r / SIGMA**2
        + np.sum(x**2 / (2 * p["prior_scale"] ** 2))
        - np.sum(np.log(scale * _sigmoid(z)))
    )


def _hessian(p, scale, z):
    """Closed form: x' = s sigmoid, x'' = s sigmoid (1 - sigmoid)."""
    x = scale * _softplus(z)
    d1 = scale * _sigmoid(z)
    d2 = d1 * (1.0 - _sigmoid(z))
    fisher = p["design"].T @ p["design"] / SIGMA**2 + np.diag(p["prior_scale"] ** -2.0)
    gradient_x = (
        -p["design"].T @ (p["data"] - p["design"] @ x) / SIGMA**2 + x / p["prior_scale"] ** 2
    )
    # -log sigmoid(z) has second derivative sigmoid (1 - sigmoid)
    return (
        np.diag(d1) @ fisher @ np.diag(d1)
        + np.diag(gradient_x * d2)
        + np.diag(_sigmoid(z) * (1.0 - _sigmoid(z)))
    )


def _softplus_start(p, dense=True):
    start = {"spectrum": p["start"][:, None]}
    unconstrained = unconstrained_problem(p["model"], start, p["fixed"])
    log_metric, _ = start_inverse_mass_matrix(unconstrained, dense=dense)
    return softplus_start(unconstrained, "spectrum", log_metric, dense), log_metric


def test_scale_is_the_laplace_sd_of_the_flux(problem):
    """s = x sd(log x): the first-order sd of x from the log-coordinate metric."""
    result, log_metric = _softplus_start(problem)
    expected = problem["start"] * np.sqrt(np.diag(np.asarray(log_metric)))
    np.testing.assert_allclose(np.ravel(result.scale), expected, rtol=1e-10)
    # start point: s softplus(z) is the start flux
    np.testing.assert_allclose(
        np.ravel(result.scale) * _softplus(np.ravel(result.z)), problem["start"], rtol=1e-10
    )


@pytest.mark.parametrize("dense", [True, False])
def test_metric_is_the_inverse_of_the_closed_form_hessian(problem, dense):
    result, _ = _softplus_start(problem, dense)
    scale, z = np.ravel(result.scale), np.ravel(result.z)
    hess = _hessian(problem, scale, z)
    assert result.at_mode
    if dense:
        np.testing.assert_allclose(np.asarray(result.inverse_mass), np.linalg.inv(hess), rtol=1e-6)
    else:
        np.testing.assert_allclose(np.asarray(result.inverse_mass), 1.0 / np.diag(hess), rtol=1e-6)


def test_numpyro_potential_of_the_reparameterised_model_is_the_closed_form(problem):
    """What NUTS sees (NumPyro's potential of the reparam handler) is U(z) above."""
    result, _ = _softplus_start(problem)
    scale = np.ravel(result.scale)
    model = numpyro.handlers.reparam(
        numpyro.handlers.condition(problem["model"], data=problem["fixed"]),
        config={"spectrum": result.reparam()},
    )
    rng = np.random.default_rng(0)
    values, expected = [], []
    for _ in range(4):
        z = np.ravel(result.z) + rng.normal(0, 1.5, 2)
        params = {auxiliary_name("spectrum"): z[:, None]}
        values.append(float(potential_energy(model, (), {}, params)))
        expected.append(_potential(problem, scale, z))
    # equal up to the constants of the normal and HalfNormal densities
    differences = np.asarray(values) - np.asarray(expected)
    np.testing.assert_allclose(differences - differences[0], 0.0, atol=1e-6)


def test_inverse_softplus():
    y = np.array([1e-12, 1e-3, 0.5, 3.0, 40.0, 1e4])
    np.testing.assert_allclose(_softplus(np.asarray(inverse_softplus(y))), y, rtol=1e-10)


def _quadrature(p):
    """Posterior mean and sd of both fluxes on a grid over x >= 0 (truncated Gaussian)."""
    fisher = p["design"].T @ p["design"] / SIGMA**2 + np.diag(p["prior_scale"] ** -2.0)
    centre = np.linalg.solve(fisher, p["design"].T @ p["data"] / SIGMA**2)
    sd = np.sqrt(np.diag(np.linalg.inv(fisher)))
    axes = [
        np.linspace(max(0.0, c - 8 * s), c + 8 * s, 801) for c, s in zip(centre, sd, strict=True)
    ]
    x0, x1 = np.meshgrid(*axes, indexing="ij")
    delta = np.stack([x0 - centre[0], x1 - centre[1]], -1)
    log_density = -0.5 * np.einsum("...i,ij,...j->...", delta, fisher, delta)
    weight = np.exp(log_density - log_density.max())
    weight /= weight.sum()
    means = [np.sum(weight * x0), np.sum(weight * x1)]
    sds = [
        np.sqrt(np.sum(weight * (x0 - means[0]) ** 2)),
        np.sqrt(np.sum(weight * (x1 - means[1]) ** 2)),
    ]
    return np.asarray(means), np.asarray(sds), centre, sd


def test_nuts_in_softplus_coordinates_matches_the_truncated_posterior(problem):
    """The faint flux's posterior (mass piled at zero) by NUTS vs grid quadrature.

    Tolerances: Monte Carlo error of a mean from >= 1000 effective draws is < 3.2% of an
    sd; 0.1 sd on the means and 8% on the sds leave room for autocorrelation.
    """
    means, sds, centre, _ = _quadrature(problem)
    assert centre[1] < 1.5 * sds[1]  # the faint flux is within ~1 sd of zero
    post = mp.sample(
        problem["model"],
        init={"spectrum": problem["start"][:, None]},
        sites=["spectrum"],
        num_warmup=300,
        num_samples=1500,
        num_chains=2,
        seed=2,
    )
    assert auxiliary_name("spectrum") not in post.samples()
    flux = np.asarray(post.samples()["flux"])[:, :, 0]
    assert np.all(flux >= 0)
    np.testing.assert_allclose(flux.mean(0), means, atol=0.1 * sds.min())
    np.testing.assert_allclose(flux.std(0), sds, rtol=0.08)
    divergences = int(np.asarray(post.mcmc.get_extra_fields()["diverging"]).sum())
    assert divergences == 0
    idata = post.to_arviz(log_likelihood="none")
    assert auxiliary_name("spectrum") not in idata.posterior
    assert "spectrum" in idata.posterior


def test_log_coordinates_remain_available(problem):
    post = mp.sample(
        problem["model"],
        init={"spectrum": problem["start"][:, None]},
        sites=["spectrum"],
        num_warmup=50,
        num_samples=50,
        num_chains=1,
        spectrum_coordinates="log",
    )
    assert post.auxiliary == ()
    assert auxiliary_name("spectrum") not in post.mcmc.get_samples()
    with pytest.raises(ValueError, match="spectrum_coordinates"):
        mp.sample(problem["model"], sites=["spectrum"], spectrum_coordinates="linear")
