"""MAP and posterior of a blended HST + HSC scene drawn by GalSim, an independent renderer.

Three galaxies (a Sérsic n=1 and two Gaussians, per-band fluxes) are drawn directly by
GalSim into an HST-like image (0.03"/px, F814W, Gaussian PSF of 0.08") and an HSC-like
one (0.168"/px, g..y, Moffat PSFs of ~0.7"), the HSC image displaced by
``(dy, dx) = (0.3, -0.2)`` HSC pixels; Gaussian noise of known sigma. The model starts
off the truth, fits HST natively and HSC resampled onto the model frame
(:class:`mp.CorrelatedObservation`), with a shift of the HSC image (see
``tests/simulations.py`` for the geometry).
"""

from __future__ import annotations

import pathlib
import sys

import astropy.units as u
import numpy as np
import pytest

import mobs_ppl as mp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from residuals import dipole_noise_floor, residual_dipole  # noqa: E402
from simulations import (  # noqa: E402
    HSC_SCALE,
    build_model,
    draw_galsim,
    galsim_pixel_position,
    laplace_covariance,
    simulate_galsim_scene,
    split_r_hat,
    tan_wcs,
)

galsim = pytest.importorskip("galsim")

MAP_ITERATIONS = 600
MAP_E_REL = 1e-6
SHIFT_TOLERANCE = 0.05  # HSC pixels, MAP against the truth
N_SD = 3.0  # posterior standard deviations allowed between estimate and truth
UNITS_TOLERANCE = 0.1  # posterior sd allowed between fits of the data in other units
BROAD_PRIOR = 1.0 * u.arcsec


@pytest.fixture(scope="module")
def sim():
    return simulate_galsim_scene(seed=0)


@pytest.fixture(scope="module")
def model(sim):
    return build_model(sim)


@pytest.fixture(scope="module")
def fit(model):
    return mp.fit_map(model, max_iter=MAP_ITERATIONS, e_rel=MAP_E_REL)


def _native_shift_cov(model, cov_shift):
    jac = np.asarray(model.to_native["HSC"])
    return jac @ cov_shift @ jac.T


@pytest.fixture(scope="module")
def laplace(model, fit):
    """Laplace approximation over every latent site (morphologies included) at the MAP."""
    cov = laplace_covariance(model, fit.params, list(model.site_names))
    spectrum, cov_spectrum = cov["spectrum"]
    shift_cov = _native_shift_cov(model, cov["shift"][1])
    return {
        # parametric sources: flux = spectrum
        "flux": spectrum,
        "flux_sd": np.sqrt(np.diag(cov_spectrum)).reshape(spectrum.shape),
        "shift_native": fit.shift_native("HSC"),
        "shift_native_sd": np.sqrt(np.diag(shift_cov)),
    }


@pytest.mark.parametrize("shift", [(0.0, 0.0), (0.3, -0.2)])
def test_galsim_point_source_lands_on_the_wcs_position(shift):
    """A point source drawn by the helper is centred where the astropy WCS (+ shift) says."""
    shape = (18, 18)
    wcs = tan_wcs(HSC_SCALE, shape, (0.13, -0.21))
    coord = wcs.pixel_to_world(9.37, 7.81)  # x, y
    psf = galsim.Gaussian(sigma=0.2)  # 1.2 pixels: the stamp holds it
    image = draw_galsim([galsim.DeltaFunction()], [coord], wcs, shape, HSC_SCALE, psf, shift)
    yy, xx = np.indices(shape, dtype=float)
    # the first moments of a symmetric, pixel-integrated profile are its position
    centroid = np.array([(yy * image).sum(), (xx * image).sum()]) / image.sum()
    expected = np.array(galsim_pixel_position(wcs, coord, shift))
    np.testing.assert_allclose(expected, [7.81 + shift[0], 9.37 + shift[1]], atol=1e-9)
    np.testing.assert_allclose(centroid, expected, atol=1e-4)  # GalSim accuracy: ~3e-5


def test_simulated_scene_is_consistent(sim):
    assert sim.hst.shape == (1, 100, 100)
    assert sim.hsc.shape == (5, 18, 18)
    # GalSim conserves flux, up to the light that falls outside the stamp, and noise
    assert float(np.sum(sim.hst.data)) == pytest.approx(sim.true_fluxes[:, 0].sum(), rel=0.05)
    assert np.asarray(sim.hst.weights)[0, 0, 0] == pytest.approx(sim.sigma_hst**-2)


def test_map_recovers_the_hsc_shift(sim, fit):
    shift = fit.shift_native("HSC")
    print(f"\nMAP shift {shift.round(4)} HSC px, truth {sim.true_shift}")
    np.testing.assert_array_less(np.abs(shift - sim.true_shift), SHIFT_TOLERANCE)


def test_fitted_shift_lowers_the_native_hsc_dipole(sim):
    """The user flow on the GalSim scene: the shift, carried into native HSC pixels,
    aligns the model with the data there.

    Non-parametric sources from HST detections, HSC resampled, MAP with and without the
    HSC shift; the residual dipole (``tests/residuals.py``) around the brightest HSC
    pixel is measured in the native HSC image, the shift converted with
    ``relative_jacobian``. Measured: D = 0.0108 without the shift, 0.0056 with it
    (ratio 1.94; pure noise gives 0.0081), from 0.036 for the initial scene; free
    morphologies absorb part of the offset when no shift is fitted, hence a bound of
    1.5 on the ratio. Rendering the same fit with the shift mis-carried gives
    D = 0.365 (sign flipped), 0.822 (model pixels taken as native) and 0.185 (shift
    dropped), so the test fails for each of those mistakes.
    """
    frame = mp.Frame.from_observations([sim.hst, sim.hsc])
    hsc_c = mp.CorrelatedObservation.from_observation(sim.hsc, resample_to_frame=frame)
    scene = mp.init.from_observation(sim.hst, frame, image_type="space")
    scene = mp.measure.forced_photometry(scene, hsc_c)
    hsc_native = sim.hsc.match(frame)
    image = np.asarray(sim.hsc.data).sum(axis=0)
    centre = np.unravel_index(np.argmax(image), image.shape)
    dipoles = {}
    for key, shifts in (("shift", {"HSC": 0.1 * u.arcsec}), ("no shift", None)):
        model = mp.SceneModel(scene, [sim.hst, hsc_c], shifts=shifts)
        fit = mp.fit_map(model, max_iter=1000, e_rel=MAP_E_REL)
        native = None
        if shifts:
            native = mp.frame.relative_jacobian(hsc_c.frame, sim.hsc.frame) @ fit.shift("HSC")
            np.testing.assert_array_less(np.abs(native - sim.true_shift), SHIFT_TOLERANCE)
        prediction = np.asarray(hsc_native.render(fit.scene.render(), native))
        dipoles[key] = residual_dipole(sim.hsc, prediction, centre)[0]
    floor = dipole_noise_floor(sim.hsc, centre)
    print(f"\ndipoles {dipoles}, noise floor {floor:.4f}")
    # with the envelope prior and cores (issue 13) the morphologies absorb the offset
    # without a shift as well (measured D 0.0035 without, 0.0038 with it, noise floor
    # ~0.004): the dipole no longer tells the two apart, so the shift is tested against
    # the truth above, and the fit with it must leave no dipole beyond the noise
    assert dipoles["shift"] < 2.0 * floor


def test_posterior_covers_shift_and_fluxes(sim, laplace):
    """Shift and every flux within 3 posterior sd (Laplace, morphology uncertainty included)."""
    z_shift = (laplace["shift_native"] - sim.true_shift) / laplace["shift_native_sd"]
    z_flux = (laplace["flux"] - sim.true_fluxes) / laplace["flux_sd"]
    print(
        f"\nshift {laplace['shift_native'].round(4)} +- {laplace['shift_native_sd'].round(4)} "
        f"HSC px, z = {z_shift.round(2)}\nflux z (rows: galaxies; F814W, g..y):\n"
        f"{z_flux.round(2)}\nflux sd / flux:\n{(laplace['flux_sd'] / sim.true_fluxes).round(4)}"
    )
    assert np.all(np.abs(z_shift) < N_SD)
    assert np.all(np.abs(z_flux) < N_SD)


def test_shift_posterior_is_set_by_the_likelihood_not_the_prior(model, fit, laplace):
    """Under a 1" prior, the posterior sd of the HSC shift is >10x narrower than the prior."""
    broad = mp.SceneModel(model.scene, model.observations, shifts={"HSC": BROAD_PRIOR})
    assert broad.shift_scales[0] * broad.pixel_scale_arcsec == pytest.approx(1.0)
    # the curvature at the MAP of the 0.1" model: the prior adds (0.1")^-2 to a
    # likelihood curvature ~1e4 times larger, so the two MAPs coincide
    cov = laplace_covariance(broad, fit.params, list(broad.site_names))
    sd_native = np.sqrt(np.diag(_native_shift_cov(broad, cov["shift"][1])))
    sd_arcsec = np.sqrt(np.diag(cov["shift"][1])) * broad.pixel_scale_arcsec
    ratio = BROAD_PRIOR.to_value(u.arcsec) / sd_arcsec
    print(f'\nshift sd under a 1" prior: {sd_arcsec.round(5)} arcsec (prior / posterior {ratio})')
    assert np.all(ratio > 10)
    # the likelihood's width: the same as under the 0.1" prior, within 1%
    np.testing.assert_allclose(sd_native, laplace["shift_native_sd"], rtol=1e-2)


def test_fit_does_not_depend_on_the_units_of_the_data(sim, fit, laplace):
    """HST data x10 (weights / 100): same shift and HSC fluxes, HST fluxes x10.

    The model is built the same way from either data set: its initial spectra are the
    forced photometry of the data, in the data's units; nothing is rescaled by hand.
    """
    factor = 10.0
    scaled = build_model(sim.scaled_hst(factor))
    fit10 = mp.fit_map(scaled, max_iter=MAP_ITERATIONS, e_rel=MAP_E_REL)
    flux, flux10 = fit.deterministic()["flux"], fit10.deterministic()["flux"]
    sd = laplace["flux_sd"]
    d_shift = (fit10.shift_native("HSC") - fit.shift_native("HSC")) / laplace["shift_native_sd"]
    d_hsc = (flux10[:, 1:] - flux[:, 1:]) / sd[:, 1:]
    d_hst = (flux10[:, 0] / factor - flux[:, 0]) / sd[:, 0]
    print(
        f"\nHST data x{factor:g}: shift moves {np.abs(d_shift).max():.1e} sd, HSC fluxes "
        f"{np.abs(d_hsc).max():.1e} sd, HST fluxes / {factor:g} {np.abs(d_hst).max():.1e} sd"
    )
    assert np.all(np.abs(d_shift) < UNITS_TOLERANCE)
    assert np.all(np.abs(d_hsc) < UNITS_TOLERANCE)
    assert np.all(np.abs(d_hst) < UNITS_TOLERANCE)


@pytest.mark.slow
def test_nuts_samples_the_shift_from_the_likelihood_under_a_broad_prior(sim, model, fit):
    """``mp.sample`` of spectrum and shift under a 1" shift prior.

    NUTS draws the HSC shift with a posterior sd >10x below the prior's, within 3 sd of
    the truth, and with the widths of the Laplace approximation (computed here by finite
    differences in the constrained space, independently of ``mp.laplace``). The
    morphologies are held at the MAP, so the flux posteriors are the conditional ones.
    """
    broad = mp.SceneModel(model.scene, model.observations, shifts={"HSC": BROAD_PRIOR})
    post = mp.sample(
        broad,
        init=fit,
        sites=["spectrum", "shift"],
        num_warmup=300,
        num_samples=500,
        num_chains=2,
        seed=0,
        chain_method="sequential",
    )
    draws = post.samples()
    grouped = post.samples(group_by_chain=True)
    shift = np.asarray(draws["shift_native"])[:, 0]
    shift_arcsec_sd = np.asarray(draws["shift_arcsec"])[:, 0].std(axis=0)
    cov = laplace_covariance(broad, fit.params, ["spectrum", "shift"])
    laplace_shift_sd = np.sqrt(np.diag(_native_shift_cov(broad, cov["shift"][1])))
    laplace_flux_sd = np.sqrt(np.diag(cov["spectrum"][1])).reshape(cov["spectrum"][0].shape)
    flux_sd = np.asarray(draws["flux"]).std(axis=0)
    diverging = int(np.sum(np.asarray(post.mcmc.get_extra_fields()["diverging"])))
    ratio = BROAD_PRIOR.to_value(u.arcsec) / shift_arcsec_sd
    print(
        f"\nNUTS shift {shift.mean(axis=0).round(4)} +- {shift.std(axis=0).round(4)} HSC px "
        f"(truth {sim.true_shift}); Laplace sd {laplace_shift_sd.round(4)}; prior sd / "
        f"posterior sd {ratio.round(1)}; flux sd NUTS / Laplace "
        f"{(flux_sd / laplace_flux_sd).min():.2f} to {(flux_sd / laplace_flux_sd).max():.2f}; "
        f"divergences {diverging}"
    )
    assert diverging == 0
    assert split_r_hat(np.asarray(grouped["shift"])).max() < 1.05
    assert np.all(ratio > 10)
    assert np.all(np.abs(shift.mean(axis=0) - sim.true_shift) < N_SD * shift.std(axis=0))
    # Monte Carlo error of an sd from ~1000 correlated draws: a few percent
    np.testing.assert_allclose(shift.std(axis=0), laplace_shift_sd, rtol=0.2)
    np.testing.assert_allclose(flux_sd, laplace_flux_sd, rtol=0.2)
