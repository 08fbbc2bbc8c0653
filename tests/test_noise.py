"""Correlated pixel noise: the measured model of the HST co-add, and StationaryNoise.

The HST F814W image of the shared COSMOS field is a drizzled co-add: neighbouring pixels
share about half their noise. ``CorrelatedObservation.from_observation(hst)`` measures
the autocovariance ``xi`` on source-free pixels. We check it on the background:

* the exact (dense, per tile) chi-square of background pixels per pixel is ~1;
* a per-pixel chi-square cannot tell correlated from independent noise (it is ~1 for
  both: it only sees the marginal variance ``xi(0)``), so the independent-pixel model
  is refuted with a statistic that sees correlations: the chi-square of k x k block
  sums, whose variance is ``sum_{p, q in block} xi(p - q)`` under the measured model
  and ``k^2 xi(0)`` under the independent one.

Then the Fourier-diagonal :class:`~mobs_ppl.StationaryNoise` is compared with dense
covariances on a small synthetic image, and its samples with their covariance.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.linalg import solve_triangular

import mobs_ppl as mp
from mobs_ppl.noise import StationaryNoise, dense_covariance

BLOCKS = (2, 3, 4)
CHI2_TOLERANCE = 0.05  # |chi2 / dof - 1| under the correlated model


@functools.cache
def _hst(data_dir):
    hst, _ = mp.datasets.load_cosmos(data_dir)
    co = mp.CorrelatedObservation.from_observation(hst)
    return hst, co


def _background(hst, grow=None):
    """Background mask (package default growth unless given) and residual of HST."""
    data = np.asarray(hst.data)[0]
    kwargs = {} if grow is None else {"grow": grow}
    mask = mp.noise.background_mask(hst.data, hst.weights, **kwargs)[0]
    return mask, data - np.median(data[mask])


def _block_chi2(residual, mask, xi, k):
    """Block-sum chi2 per block under the correlated and the independent model.

    Non-overlapping k x k blocks lying entirely on background pixels; each block sum
    ``S`` is compared with its variance under both models.
    """
    radius = xi.shape[0] // 2
    h, w = residual.shape
    hb, wb = h // k, w // k
    sums = residual[: hb * k, : wb * k].reshape(hb, k, wb, k).sum(axis=(1, 3))
    full = mask[: hb * k, : wb * k].reshape(hb, k, wb, k).all(axis=(1, 3))
    s = sums[full]
    yy, xx = np.indices((k, k))
    dy = yy.ravel()[:, None] - yy.ravel()[None, :]
    dx = xx.ravel()[:, None] - xx.ravel()[None, :]
    var_correlated = xi[dy + radius, dx + radius].sum()
    var_independent = k * k * xi[radius, radius]
    return (
        float(np.mean(s**2) / var_correlated),
        float(np.mean(s**2) / var_independent),
        int(full.sum()),
    )


@pytest.mark.data
def test_hst_correlation_is_measured_and_reported(shared_data_dir):
    hst, co = _hst(shared_data_dir)
    assert not co.is_resampled
    xi = np.asarray(co.correlation)[0]
    r = xi.shape[0] // 2
    along_y, along_x = xi[r + 1, r] / xi[r, r], xi[r, r + 1] / xi[r, r]
    print(
        f"\nHST xi(1,0)/xi(0,0) = {along_y:.3f}, xi(0,1)/xi(0,0) = {along_x:.3f}, "
        f"xi(1,1)/xi(0,0) = {xi[r + 1, r + 1] / xi[r, r]:.3f}, xi(0,0) = {xi[r, r]:.2f}"
    )
    assert 0.4 < along_y < 0.6 and 0.4 < along_x < 0.6  # drizzled: ~0.49
    np.testing.assert_allclose(xi, xi[::-1, ::-1], rtol=1e-12)  # xi(d) = xi(-d)
    # the marginal variance agrees with the robust independent-pixel estimate to ~10%
    assert xi[r, r] * float(hst.weights[0, 0, 0]) == pytest.approx(1.0, abs=0.15)
    # weights hold 1 / xi(0) on used pixels
    np.testing.assert_allclose(np.asarray(co.weights)[0], 1 / xi[r, r])


@pytest.mark.data
def test_hst_background_chi2_under_measured_model(shared_data_dir):
    hst, co = _hst(shared_data_dir)
    xi = np.asarray(co.correlation)[0]
    r = xi.shape[0] // 2
    mask, residual = _background(hst)
    chi2, dof = mp.noise.background_chi2(residual, xi, mask)
    marginal = float(np.sum(residual[mask] ** 2) / xi[r, r] / mask.sum())
    print(
        f"\nHST background ({dof} px): chi2/dof correlated (dense per tile) "
        f"{chi2 / dof:.4f}, independent with the same marginal variance {marginal:.4f}"
    )
    assert dof > 40_000
    assert abs(chi2 / dof - 1) < CHI2_TOLERANCE
    # the per-pixel statistic is blind to correlations: ~1 for the independent model too
    assert abs(marginal - 1) < CHI2_TOLERANCE


def _check_blocks(residual, mask, xi, label, ks=BLOCKS):
    results = {}
    for k in ks:
        correlated, independent, n = _block_chi2(residual, mask, xi, k)
        print(
            f"\n{label}: {k}x{k} block sums ({n} blocks): chi2/dof correlated "
            f"{correlated:.3f}, independent {independent:.3f}"
        )
        results[k] = (correlated, independent, n)
    return results


@pytest.mark.data
@pytest.mark.parametrize(
    "k",
    [2, 3, 4],
)
def test_hst_block_sums_refute_independent_pixels(shared_data_dir, k):
    hst, co = _hst(shared_data_dir)
    xi = np.asarray(co.correlation)[0]
    mask, residual = _background(hst)
    correlated, independent, n = _check_blocks(residual, mask, xi, "HST measured", (k,))[k]
    assert n > 2000
    assert independent > 1.8  # measured 2.2, 2.9, 3.4 for k = 2, 3, 4
    assert abs(correlated - 1) < CHI2_TOLERANCE


@pytest.mark.data
def test_hst_block_sums_with_conservative_background(shared_data_dir):
    """With sources grown by 8 pixels the measured model passes at every block size."""
    hst, _ = _hst(shared_data_dir)
    mask, residual = _background(hst, grow=8)
    xi = mp.noise.measure_correlation(hst.data, hst.weights, radius=4, mask=mask[None])[0]
    r = xi.shape[0] // 2
    print(f"\nfloor xi(4,4)/xi(0,0) with grow=8: {xi[0, 0] / xi[r, r]:.4f}")
    results = _check_blocks(residual, mask, xi, "HST grow=8")
    for correlated, independent, n in results.values():
        assert n > 2000
        assert abs(correlated - 1) < CHI2_TOLERANCE
        assert independent > 1.8
    chi2, dof = mp.noise.background_chi2(residual, xi, mask)
    assert abs(chi2 / dof - 1) < CHI2_TOLERANCE


@pytest.mark.data
def test_measured_loglike_is_stationary_noise_of_residual(shared_data_dir):
    hst, co = _hst(shared_data_dir)
    frame = mp.Frame.from_observations([hst])
    bound = co.match(frame)
    rng = np.random.default_rng(1)
    model = np.zeros(frame.shape)
    model[0, 120:130, 100:110] = rng.uniform(0, 5, (10, 10))
    residual = (bound.data - bound.render(model)) * (bound.weights > 0)
    expected = float(co.noise.log_likelihood(residual))
    assert float(bound.log_likelihood(model)) == pytest.approx(expected, rel=1e-12)
    # the measured model is far more likely for the data than independent pixels
    ll_corr = float(bound.log_likelihood(model))
    ll_indep = float(mp.gaussian_log_likelihood(bound.data, bound.render(model), bound.weights))
    print(f"\nHST log-likelihood: correlated {ll_corr:.1f}, independent {ll_indep:.1f}")
    assert ll_corr > ll_indep + 1e4


# -- StationaryNoise against dense covariances (synthetic) ------------------------------

SYN_N = 20
SYN_TAPS = 0.35  # separable 3-tap smoothing kernel [a, 1, a] (x) [a, 1, a]
#: relative error of a log-likelihood difference between two models (same noise, a
#: compact source in the middle) against the non-periodic dense covariance; the
#: measured maximum over 20 draws is 2.4e-6
MODEL_DIFF_RTOL = 1e-5


def _synthetic_correlation():
    """Autocovariance (radius 2) of white noise smoothed by the separable kernel."""
    g1 = np.array([SYN_TAPS, 1.0, SYN_TAPS])
    auto1 = np.correlate(g1, g1, mode="full")  # lags -2 .. 2
    return np.outer(auto1, auto1)


def _circulant(xi, n):
    radius = xi.shape[0] // 2
    yy, xx = np.indices((n, n))
    dy = (yy.ravel()[:, None] - yy.ravel()[None, :] + n // 2) % n - n // 2
    dx = (xx.ravel()[:, None] - xx.ravel()[None, :] + n // 2) % n - n // 2
    inside = (np.abs(dy) <= radius) & (np.abs(dx) <= radius)
    return np.where(
        inside,
        xi[np.clip(dy + radius, 0, 2 * radius), np.clip(dx + radius, 0, 2 * radius)],
        0.0,
    )


def _dense_ll(residual, cov):
    _, logdet = np.linalg.slogdet(cov)
    r = np.ravel(residual)
    return -0.5 * (r @ np.linalg.solve(cov, r) + logdet + r.size * np.log(2 * np.pi))


@functools.cache
def _synthetic(n=SYN_N):
    xi = _synthetic_correlation()
    noise = StationaryNoise.from_correlation(xi[None], (1, n, n))
    # the power floor does not bite: the kernel's power is >= (1 - 2a)^4 > 0
    assert float(noise.power.min()) > 2 * mp.noise.POWER_FLOOR * float(noise.power.mean())
    return xi, noise, _circulant(xi, n), dense_covariance(xi, (n, n))


def test_synthetic_correlation_is_drizzle_like():
    xi = _synthetic_correlation()
    assert xi[3, 2] / xi[2, 2] == pytest.approx(2 * SYN_TAPS / (1 + 2 * SYN_TAPS**2))  # 0.56


def test_stationary_noise_equals_dense_circulant(rng):
    xi, noise, circulant, _ = _synthetic()
    residuals = [rng.normal(size=(1, SYN_N, SYN_N)) for _ in range(2)]
    for r in residuals:
        assert float(noise.log_likelihood(jnp.asarray(r))) == pytest.approx(
            _dense_ll(r, circulant), rel=1e-12
        )
    diff = float(
        noise.log_likelihood(jnp.asarray(residuals[0]))
        - noise.log_likelihood(jnp.asarray(residuals[1]))
    )
    dense = _dense_ll(residuals[0], circulant) - _dense_ll(residuals[1], circulant)
    assert diff == pytest.approx(dense, rel=1e-10)
    assert float(noise.log_det()) == pytest.approx(np.linalg.slogdet(circulant)[1], rel=1e-12)


@pytest.mark.parametrize("n", [SYN_N, 2 * SYN_N])
def test_stationary_noise_against_non_periodic_dense(rng, n):
    """Where the Fourier-diagonal model is approximate: the image edges.

    Residuals are drawn from the non-periodic covariance. A log-likelihood difference
    between two models (a compact source in the middle) agrees to MODEL_DIFF_RTOL. The
    absolute chi-square of a noise field does not: the circulant form couples opposite
    edges, and with this strong correlation its relative error is ~4.3 / n on an
    n x n image (measured 0.22 at n = 20, 0.11 at n = 40; bound 6 / n); log det
    differs by ~0.07 per pixel at n = 20, also shrinking as 1 / n. Both are model-
    independent to first order: a fit's estimates and error bars do not feel them.
    """
    xi, noise, _, dense = _synthetic(n)
    chol = np.linalg.cholesky(dense)
    yy, xx = np.indices((n, n))
    c = n / 2 - 0.4
    source = 5.0 * np.exp(-0.5 * ((yy - c) ** 2 + (xx - c - 0.6) ** 2) / 1.5**2)

    def quadratic(r):  # r^T C^-1 r through the Cholesky factor
        return float(np.sum(solve_triangular(chol, np.ravel(r), lower=True) ** 2))

    model_errors, chi2_errors = [], []
    for _ in range(20):
        draw = (chol @ rng.normal(size=n * n)).reshape(1, n, n)
        fast = float(noise.log_likelihood(jnp.asarray(draw)) - noise.log_likelihood(draw - source))
        exact = -0.5 * (quadratic(draw) - quadratic(draw - source))
        model_errors.append(abs(fast - exact) / abs(exact))
        chi2_exact = quadratic(draw)
        chi2_errors.append(abs(float(noise.chi2(jnp.asarray(draw))) - chi2_exact) / chi2_exact)
    logdet_dense = 2 * np.sum(np.log(np.diag(chol)))
    logdet_per_px = (float(noise.log_det()) - logdet_dense) / n**2
    print(
        f"\nnon-periodic {n}x{n}: model-difference rel error max {max(model_errors):.1e}; "
        f"noise chi2 rel error mean {np.mean(chi2_errors):.3f} max {max(chi2_errors):.3f}; "
        f"log det difference per pixel {logdet_per_px:.3f}"
    )
    assert max(model_errors) < MODEL_DIFF_RTOL
    assert np.mean(chi2_errors) < 6 / n
    assert abs(logdet_per_px) < 2 / n


def test_stationary_noise_samples_have_its_covariance():
    """Empirical xi of 2000 draws matches xi at every lag to 3 standard errors."""
    xi, noise, _, _ = _synthetic()
    radius = xi.shape[0] // 2
    draws = np.asarray(jax.vmap(noise.sample)(jax.random.split(jax.random.PRNGKey(11), 2000)))[:, 0]
    worst = 0.0
    for dy in range(-radius - 1, radius + 2):
        for dx in range(0, radius + 2):
            shifted = np.roll(draws, (dy, dx), axis=(1, 2))  # the model is periodic
            per_draw = np.mean(draws * shifted, axis=(1, 2))
            se = per_draw.std(ddof=1) / np.sqrt(len(per_draw))
            inside = abs(dy) <= radius and dx <= radius
            expected = xi[radius + dy, radius + dx] if inside else 0.0
            z = abs(per_draw.mean() - expected) / se
            worst = max(worst, z)
            assert z < 3, (dy, dx, per_draw.mean(), expected, se)
    print(f"\nStationaryNoise.sample: worst |xi_hat - xi| / SE over lags = {worst:.2f}")
