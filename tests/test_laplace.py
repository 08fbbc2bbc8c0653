"""Laplace approximation and the curvature behind it, against closed forms.

The problem is linear in the fluxes: two blended Gaussian galaxies of fixed shape in
one 24 x 24 image with Gaussian noise, only the spectrum sampled. With ``A`` the
design (each galaxy rendered with unit flux, a column per galaxy), ``W`` the weights,
``s`` the HalfNormal prior scales and ``f = exp(z)``, the potential NumPyro works with is

    U(z) = 1/2 (d - A f)^T W (d - A f) + sum f^2 / (2 s^2) - sum z

(the last term: log-Jacobian of ``f = exp(z)``), whose exact Hessian is

    H(z) = diag(f) [A^T W A + diag(1/s^2)] diag(f) + diag(f * g),
    g = -A^T W (d - A f) + f / s^2.

The design is built here by rendering each galaxy alone, the covariance of the fluxes
by a dense NumPy solve; neither goes through the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest
from astropy.wcs import WCS

import mobs_ppl as mp
from mobs_ppl.curvature import hessian, inverse_metric
from mobs_ppl.laplace_approximation import unconstrained_problem
from mobs_ppl.psf import gaussian_psf

N = 24
SIGMA = 0.01
TRUE_FLUX = np.array([4.0, 1.5])


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
        mp.GaussianSource((13.5, 13.8), [1.0], radius=1.6),
    ]
    matched = template.match(frame)
    design = np.stack(
        [np.asarray(matched.render(mp.Scene(frame, [s]).render())).ravel() for s in sources], 1
    )
    rng = np.random.default_rng(3)
    data = (design @ TRUE_FLUX).reshape(1, N, N) + rng.normal(0, SIGMA, (1, N, N))
    obs = mp.Observation(data, weights=SIGMA**-2, psf=gaussian_psf(1.3), wcs=_wcs(), channels=["a"])
    scene = mp.Scene(frame, [s.with_spectrum([f]) for s, f in zip(sources, TRUE_FLUX, strict=True)])
    model = mp.SceneModel(scene, [obs])
    # dense generalised least squares (W = I / sigma^2), prior curvature included
    prior_scale = np.asarray(model.default_priors()["spectrum"].scale).ravel()
    fisher = design.T @ design / SIGMA**2 + np.diag(prior_scale**-2.0)
    return {
        "model": model,
        "design": design,
        "data": data.ravel(),
        "fisher": fisher,
        "prior_scale": prior_scale,
    }


def _exact_hessian(p, z):
    f = np.exp(z)
    residual = p["data"] - p["design"] @ f
    g = -p["design"].T @ residual / SIGMA**2 + f / p["prior_scale"] ** 2
    return np.diag(f) @ p["fisher"] @ np.diag(f) + np.diag(f * g)


def _fixed(model):
    return {k: v for k, v in model.init_values().items() if k != "spectrum"}


def test_hessian_of_the_potential_is_the_closed_form(problem):
    model = problem["model"]
    start = {"spectrum": np.array([[3.0], [2.0]])}  # not the mode: gradient terms count
    unconstrained = unconstrained_problem(model, start, _fixed(model))
    z = np.asarray(unconstrained.location)
    np.testing.assert_allclose(z, np.log([3.0, 2.0]), rtol=1e-12)
    ours = hessian(unconstrained.potential, z)
    np.testing.assert_allclose(ours, _exact_hessian(problem, z), rtol=1e-9)


def test_finite_difference_fallback_agrees():
    """Central differences of the gradient (the fallback) match the exact Hessian."""
    import jax.numpy as jnp

    matrix = np.array([[3.0, 0.4, 0.1], [0.4, 2.0, -0.3], [0.1, -0.3, 1.5]])

    def fn(x):
        return 0.5 * x @ jnp.asarray(matrix) @ x + jnp.sum(jnp.exp(x))

    x = np.array([0.3, -0.2, 0.1])
    from mobs_ppl.curvature import _finite_difference_hessian

    fd = _finite_difference_hessian(fn, jnp.asarray(x), 2, 1e-5)
    exact = matrix + np.diag(np.exp(x))
    np.testing.assert_allclose(fd, exact, rtol=1e-8)
    np.testing.assert_allclose(hessian(fn, x), exact, rtol=1e-12)


def test_inverse_metric_is_the_inverse_at_a_mode_and_positive_elsewhere():
    rng = np.random.default_rng(0)
    q = np.linalg.qr(rng.normal(size=(4, 4)))[0]
    positive = q @ np.diag([5.0, 2.0, 1.0, 0.1]) @ q.T
    np.testing.assert_allclose(inverse_metric(positive), np.linalg.inv(positive), rtol=1e-10)
    indefinite = q @ np.diag([5.0, -2.0, 1.0, 0.0]) @ q.T
    metric = inverse_metric(indefinite)
    assert np.all(np.linalg.eigvalsh(metric) > 0)
    # the zero eigenvalue is floored at 1e-10 x 5: its 2e9 amplifies round-off to ~1e-7
    np.testing.assert_allclose(metric @ q[:, 1], q[:, 1] / 2.0, atol=1e-6)


def _mode(p):
    """The mode of U(z) by Newton's method on the closed forms above."""
    z = np.log(np.linalg.solve(p["fisher"], p["design"].T @ p["data"] / SIGMA**2))
    for _ in range(50):
        f = np.exp(z)
        g = -p["design"].T @ (p["data"] - p["design"] @ f) / SIGMA**2 + f / p["prior_scale"] ** 2
        z = z - np.linalg.solve(_exact_hessian(p, z), f * g - 1.0)
    return z


def test_laplace_flux_errors_equal_the_dense_least_squares_ones(problem):
    model = problem["model"]
    z = _mode(problem)
    approx = mp.laplace(model, {"spectrum": np.exp(z)[:, None]}, sites=["spectrum"])
    assert approx.sites == ("spectrum",)
    np.testing.assert_allclose(
        approx.covariance, np.linalg.inv(_exact_hessian(problem, z)), rtol=1e-8
    )
    # in flux space: the generalised least-squares covariance, up to the log-Jacobian
    # term (relative size 1 / (f^2 F_ii) < 2e-3 at this signal-to-noise)
    flux = np.exp(z)
    reference = np.linalg.inv(problem["fisher"])
    covariance = np.diag(flux) @ approx.covariance @ np.diag(flux)
    np.testing.assert_allclose(covariance, reference, rtol=5e-3, atol=5e-3 * reference.max())
    draws = approx.draws(num_samples=20000, seed=1)
    assert draws["flux"].shape == (20000, 2, 1)
    assert draws["spectrum"].min() > 0
    sd = draws["flux"][:, :, 0].std(axis=0)
    # Monte Carlo error of a standard deviation from 20000 draws: 0.5%
    np.testing.assert_allclose(sd, np.sqrt(np.diag(reference)), rtol=0.03)


def test_laplace_after_fit_map_runs_on_every_site(problem):
    """All sites (centres, radii, shapes too) at a MAP fit: a positive-definite covariance."""
    model = problem["model"]
    fit = mp.fit_map(model, max_iter=1500, e_rel=1e-8)
    approx = mp.laplace(model, fit)
    assert set(approx.sites) == set(model.site_names)
    assert np.all(np.linalg.eigvalsh(approx.covariance) > 0)
    draws = approx.draws(num_samples=500, seed=0)
    assert draws["radius_0"].shape == (500,) and draws["radius_0"].min() > 0


def test_laplace_refuses_a_point_that_is_not_a_mode(problem):
    model = problem["model"]
    # below half the mode the curvature in log flux is negative (f F (2 f - f_mode))
    low = {"spectrum": np.array([[0.4], [0.15]])}
    with pytest.raises(ValueError, match="not positive definite"):
        mp.laplace(model, low, sites=["spectrum"])
    # the matrix-free solves refuse it too (they stop at the first direction of
    # non-positive curvature)
    with pytest.raises(ValueError, match="non-positive curvature"):
        mp.laplace(model, low, sites=["spectrum"], method="matrix-free")
    # above it the curvature is positive, but the mode is many sd away: a warning
    high = {"spectrum": np.array([[8.0], [3.0]])}
    with pytest.warns(mp.MobsPplWarning, match="posterior sd from this point"):
        mp.laplace(model, high, sites=["spectrum"])


def test_laplace_rejects_unknown_sites(problem):
    with pytest.raises(ValueError, match="unknown site"):
        mp.laplace(problem["model"], None, sites=["nope"])


def test_sample_rejects_an_unknown_mass_matrix(problem):
    with pytest.raises(ValueError, match="mass_matrix"):
        mp.sample(problem["model"], sites=["spectrum"], mass_matrix="unit")


def test_sample_with_the_laplace_metric_matches_the_dense_errors(problem):
    """NUTS with the default (Laplace, fixed) metric: flux sd = the dense GLS sd."""
    z = _mode(problem)
    post = mp.sample(
        problem["model"],
        init={"spectrum": np.exp(z)[:, None]},
        sites=["spectrum"],
        num_warmup=200,
        num_samples=1000,
        num_chains=2,
        seed=4,
    )
    sd = np.asarray(post.samples()["flux"])[:, :, 0].std(axis=0)
    reference = np.sqrt(np.diag(np.linalg.inv(problem["fisher"])))
    # Monte Carlo error of an sd from ~2000 nearly independent draws: ~1.6%
    np.testing.assert_allclose(sd, reference, rtol=0.08)
    steps = np.asarray(post.mcmc.get_extra_fields()["num_steps"])
    assert np.median(steps) <= 7  # a well-scaled 2-d Gaussian: trees of depth <= 2-3


def test_sample_from_a_point_that_is_not_a_mode_warns_and_adapts(problem):
    low = {"spectrum": np.array([[0.4], [0.15]])}  # negative curvature (see above)
    with pytest.warns(mp.MobsPplWarning, match="not a mode"):
        post = mp.sample(
            problem["model"],
            init=low,
            sites=["spectrum"],
            num_warmup=100,
            num_samples=50,
            num_chains=1,
            seed=0,
        )
    assert np.all(np.isfinite(np.asarray(post.samples()["flux"])))


def test_many_parameters_use_the_hessian_diagonal(problem, monkeypatch):
    """Above MAX_DENSE_PARAMETERS the diagonal metric is 1 / diag(H), in linear memory."""
    from mobs_ppl import laplace_approximation as laplace_module

    model = problem["model"]
    z = np.log([3.0, 2.0])
    unconstrained = unconstrained_problem(model, {"spectrum": np.exp(z)[:, None]}, _fixed(model))
    exact = _exact_hessian(problem, z)
    monkeypatch.setattr(laplace_module, "MAX_DENSE_PARAMETERS", 1)
    metric, at_mode = laplace_module.start_inverse_mass_matrix(unconstrained, dense=False)
    np.testing.assert_allclose(metric, 1.0 / np.diag(exact), rtol=1e-9)
    assert at_mode
    with pytest.raises(ValueError, match="dense mass matrix over 2 parameters"):
        laplace_module.start_inverse_mass_matrix(unconstrained, dense=True)
