"""The shift is sampled in model pixels and reaches the renderer in model pixels.

A coarse observation (0.12"/px, rotated by 30 degrees against the model grid) and a
fine one (0.03"/px) give a model frame; for every observation kind:

* ``obs.likelihood(cube, s)`` with ``s`` in model pixels is the likelihood of the scene
  whose sources are moved by ``s`` model pixels (an independent construction: the
  source centres are moved, nothing is shifted in Fourier space);
* ``SceneModel.to_native`` (the one model -> native conversion, which the
  ``shift_native`` site reads) is the derivative of the WCS map from the model grid to
  the likelihood's pixels, computed here with astropy's ``pixel_to_pixel`` directly;
* going back with ``obs.model_shift`` recovers the model-pixel shift.
"""

from __future__ import annotations

import astropy.units as u
import numpy as np
import pytest
from astropy.wcs import WCS
from astropy.wcs.utils import pixel_to_pixel
from numpyro import handlers

import mobs_ppl as mp
from mobs_ppl.psf import gaussian_psf

FINE_SCALE, COARSE_SCALE = 0.03, 0.12
SHIFT = np.array([0.7, -1.1])  # model pixels


def _wcs(scale: float, n: int, angle_deg: float = 0.0) -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.1, 2.2]
    c, s = np.cos(np.radians(angle_deg)), np.sin(np.radians(angle_deg))
    w.wcs.cd = (scale / 3600.0) * np.array([[-c, s], [s, c]])
    w.wcs.crpix = [(n + 1) / 2.0 + 0.3, (n + 1) / 2.0 - 0.2]
    w.wcs.set()
    return w


def _observations():
    rng = np.random.default_rng(3)
    fine = mp.Observation(
        rng.normal(size=(1, 64, 64)) * 0.01,
        weights=1e4,
        psf=gaussian_psf(1.2, 11),
        wcs=_wcs(FINE_SCALE, 64),
        channels=["F814W"],
        name="HST",
    )
    coarse = mp.Observation(
        rng.normal(size=(2, 20, 20)) * 0.02,
        weights=2500.0,
        psf=np.stack([gaussian_psf(1.1, 9), gaussian_psf(1.3, 9)]),
        wcs=_wcs(COARSE_SCALE, 20, angle_deg=30.0),
        channels=["i", "z"],
        name="HSC",
    )
    return fine, coarse


#: observation -> that observation as each kind, given the model frame
KINDS = {
    "independent pixels": lambda obs, frame: obs,
    "measured correlated noise": lambda obs, frame: mp.CorrelatedObservation.from_observation(
        obs, radius=2
    ),
    "resampled": lambda obs, frame: mp.CorrelatedObservation.from_observation(
        obs, resample_to_frame=frame
    ),
}


def _scene(frame, offset=(0.0, 0.0)):
    center = np.array([frame.shape[1] / 2.0 - 0.3, frame.shape[2] / 2.0 + 0.4]) + offset
    # sigma 3 model px: band-limited to ~1e-15 at the model Nyquist frequency, and the
    # box of 41 px holds the profile to 7 sigma, so a moved source is exactly a phase
    return mp.Scene(frame, [mp.GaussianSource(center, [100.0, 60.0, 40.0], 3.0, box_size=41)])


@pytest.mark.parametrize("kind", list(KINDS))
def test_likelihood_takes_the_shift_in_model_pixels(kind):
    fine, coarse = _observations()
    frame = mp.Frame.from_observations([fine, coarse])
    obs = KINDS[kind](coarse, frame).bound_to(frame)
    cube = _scene(frame).render(convolve=False)
    moved_scene = _scene(frame, SHIFT)
    moved = moved_scene.render(convolve=False)
    target = obs.likelihood_observation
    # data: the moved scene as the likelihood's pixels see it, so the log-likelihood
    # is signal-dominated and a wrong shift shows
    data = np.asarray(target.bound_to(frame).render(moved_scene.render()))

    def log_prob(c, s):
        distribution, _ = obs.likelihood(c, s)
        return float(np.sum(distribution.log_prob(data)))

    at_truth = log_prob(moved, None)
    shifted = log_prob(cube, SHIFT)
    unshifted = log_prob(cube, None)
    native = log_prob(cube, np.asarray(obs.native_from_model @ SHIFT))  # wrong convention
    # float64 Fourier shifts of a band-limited profile: agreement to ~1e-10 relative;
    # the two wrong conventions are off by >1e2 in log-likelihood
    assert shifted == pytest.approx(at_truth, rel=1e-8), target.name
    assert abs(unshifted - at_truth) > 1e2
    assert abs(native - at_truth) > 1e2


@pytest.mark.parametrize("kind", list(KINDS))
def test_to_native_is_the_wcs_derivative_at_the_model_centre(kind):
    fine, coarse = _observations()
    frame = mp.Frame.from_observations([fine, coarse])
    model = mp.SceneModel(
        _scene(frame), [fine, KINDS[kind](coarse, frame)], shifts={"HSC": 0.1 * u.arcsec}
    )
    obs = model.observations[1]
    native_wcs = obs.likelihood_observation.frame.wcs
    yc, xc = (frame.shape[1] - 1) / 2.0, (frame.shape[2] - 1) / 2.0

    def native_position(dy, dx):
        x, y = pixel_to_pixel(frame.wcs, native_wcs, xc + dx, yc + dy)
        return np.array([y, x])

    # central differences: truncation ~ (step / 7e6 px to a radian)^2, round-off ~1e-10 / step
    step = 0.5
    expected = np.column_stack(
        [
            (native_position(step, 0) - native_position(-step, 0)) / (2 * step),
            (native_position(0, step) - native_position(0, -step)) / (2 * step),
        ]
    )
    to_native = np.asarray(model.to_native["HSC"])
    np.testing.assert_allclose(to_native, expected, atol=1e-8)
    # 0.03 / 0.12 px per px, rotated by 30 degrees (independent of the WCS code)
    np.testing.assert_allclose(np.sqrt(abs(np.linalg.det(to_native))), 0.25, rtol=1e-6)

    # the shift_native site of the NumPyro program is that matrix times the shift
    trace = handlers.trace(
        handlers.seed(handlers.substitute(model, {"shift": SHIFT[None]}), rng_seed=0)
    ).get_trace(likelihood=False)
    np.testing.assert_allclose(
        np.asarray(trace["shift_native"]["value"])[0], expected @ SHIFT, atol=1e-8
    )
    # and going back: the likelihood's observation maps it to the same model shift
    back = obs.likelihood_observation.model_shift(to_native @ SHIFT)
    np.testing.assert_allclose(np.asarray(back), SHIFT, atol=1e-6)
