"""The envelope prior of non-parametric morphologies, against analytic references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize, special, stats

from mobs_ppl.envelope import (
    FLOOR,
    N_MAX,
    N_MIN,
    PEAK,
    Envelope,
    PixelGamma,
    _sersic_b_series,
    index_from_parameter,
    parameter_from_index,
)


@pytest.mark.parametrize("n", [0.5, 1.0, 1.5, 2.0, 2.4])
def test_sersic_b_matches_the_exact_root(n):
    # b_n is defined by P(2n, b_n) = 1/2 (half the light inside the half-light radius);
    # the series is documented good to 2e-3 at n = 0.5 and 1e-4 from n = 1
    exact = optimize.brentq(lambda b: special.gammainc(2 * n, b) - 0.5, 1e-3, 20)
    assert _sersic_b_series(n) == pytest.approx(exact, rel=2.5e-3 if n < 1 else 1e-4)


@pytest.mark.parametrize("n", [0.6, 1.0, 2.0])
def test_half_the_light_lies_inside_the_half_light_radius(n):
    # a round envelope, large box: the light (floor removed) inside R is half of the
    # total; softening (0.5 px) and pixellation move it by well under 2% at R = 12 px
    radius = 12.0
    half = 200
    env = Envelope.from_values((half, half), radius, index=n)
    img = np.asarray(env.image((0, 0), (2 * half + 1, 2 * half + 1)), float) - PEAK * FLOOR
    yy, xx = np.indices(img.shape)
    r = np.hypot(yy - half, xx - half)
    assert img[half, half] == pytest.approx(PEAK * (1 - FLOOR))
    assert img[r <= radius].sum() / img.sum() == pytest.approx(0.5, abs=0.02)


def test_ellipticity_follows_galsim_convention():
    # GalSim's reduced shear: g1 > 0 stretches along x, g2 > 0 along x = y
    env = Envelope.from_values((30, 30), 6.0, ellipticity=(0.3, 0.0))
    np.testing.assert_allclose(env.ellipticity, [0.3, 0.0], atol=1e-12)
    img = np.asarray(env.image((0, 0), (61, 61)))
    assert img[30, 40] > img[40, 30]
    img = np.asarray(Envelope.from_values((30, 30), 6.0, (0.0, 0.3)).image((0, 0), (61, 61)))
    assert img[37, 37] > img[37, 23]
    with pytest.raises(ValueError, match="ellipticity"):
        Envelope.from_values((0, 0), 1.0, ellipticity=(0.8, 0.8))
    with pytest.raises(ValueError, match="radius"):
        Envelope.from_values((0, 0), -1.0)


def test_index_parameter_round_trips():
    for n in (0.5, 1.0, 2.2):
        assert float(index_from_parameter(parameter_from_index(n))) == pytest.approx(n, rel=1e-9)
    assert float(index_from_parameter(-50.0)) + 1e-9 > N_MIN
    assert float(index_from_parameter(50.0)) <= N_MAX


def test_from_image_recovers_a_gaussian():
    # an analytic elliptical Gaussian: centroid to 0.01 px, half-light radius of a
    # Gaussian (1.1774 sigma, sigma the geometric mean) to 1%, shear from the moments
    sigma_y, sigma_x = 4.0, 2.5
    yy, xx = np.indices((61, 61), dtype=float)
    img = np.exp(-0.5 * (((yy - 31.3) / sigma_y) ** 2 + ((xx - 28.6) / sigma_x) ** 2))
    env = Envelope.from_image(img, origin=(10, -5))
    np.testing.assert_allclose(env.center, [41.3, 23.6], atol=0.01)
    assert float(env.radius) == pytest.approx(1.1774 * np.sqrt(sigma_y * sigma_x), rel=0.01)
    g1 = (sigma_x - sigma_y) / (sigma_y + sigma_x)  # negative: longer along y
    np.testing.assert_allclose(env.ellipticity, [g1, 0.0], atol=1e-3)
    # rotated by 45 degrees (longer along x = y): g2 > 0, the same |g|
    u, v = (xx - 30 + yy - 30) / np.sqrt(2), (xx - 30 - (yy - 30)) / np.sqrt(2)
    diagonal = Envelope.from_image(np.exp(-0.5 * ((u / sigma_y) ** 2 + (v / sigma_x) ** 2)), (0, 0))
    np.testing.assert_allclose(diagonal.ellipticity, [0.0, -g1], atol=1e-3)
    assert float(env.index) == pytest.approx(1.0, rel=1e-6)
    with pytest.raises(ValueError, match="no positive pixel"):
        Envelope.from_image(np.zeros((5, 5)), (0, 0))


@pytest.mark.parametrize("alpha", [1.0, 4.0, 16.0])
def test_pixel_gamma_is_the_gamma_density(alpha):
    mean = jnp.array([0.01, 0.05, 0.2])
    values = jnp.array([0.003, 0.07, 0.5])
    got = PixelGamma(alpha, mean).log_prob(values)
    want = stats.gamma.logpdf(np.asarray(values), a=alpha, scale=np.asarray(mean) / alpha)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_pixel_gamma_draws_have_the_stated_mean_and_spread():
    # 4 x 10^4 draws: the sample mean is good to ~0.5% of the mean (3 sd margin: 2%)
    d = PixelGamma(4.0, jnp.full((40_000,), 0.1))
    draws = np.asarray(d.sample(jax.random.PRNGKey(3)))
    assert draws.min() > 0 and draws.max() < 1
    assert draws.mean() == pytest.approx(0.1, rel=0.02)
    assert draws.std() / draws.mean() == pytest.approx(0.5, rel=0.03)


def test_morphology_prior_favours_the_envelope_over_a_pedestal():
    # the root of the flat pedestals: away from the source a flat prior does not mind
    # noise fitted into the box; under the envelope prior a pedestal of 5% of the peak
    # over the outskirts costs hundreds of nats
    env = Envelope.from_values((20, 20), 3.0)
    prior = env.morphology_prior((0, 0), (41, 41))
    tau = env.image((0, 0), (41, 41))
    pedestal = tau + 0.05 * PEAK
    assert float(prior.log_prob(tau) - prior.log_prob(pedestal)) > 100
