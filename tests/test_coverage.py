"""Pixels outside the model frame do not count, for every observation kind.

A fine image (0.03"/px, 64 x 64) and a coarse one (0.12"/px, 12 x 12, which covers a
1.44" square inside the fine 1.92") give a model frame on their intersection that is
smaller than the fine image. Changing the fine data only outside that frame must not
move the log density, the observation's own ``log_likelihood`` or the chi2 of
``measure.goodness_of_fit``: the model predicts nothing there, so counting those pixels
fits the model to light it cannot have (the bug reproduced: the measured-noise
``CorrelatedObservation`` moved the log density by ~1e7).
"""

from __future__ import annotations

import astropy.units as u
import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest
from astropy.wcs import WCS
from numpyro.infer.util import log_density

import mobs_ppl as mp

FINE_SCALE, COARSE_SCALE = 0.03, 0.12
FINE_N, COARSE_N = 64, 12


def _wcs(scale: float, n: int) -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.1, 2.2]
    w.wcs.cdelt = [-scale / 3600.0, scale / 3600.0]
    w.wcs.crpix = [(n + 1) / 2.0, (n + 1) / 2.0]
    w.wcs.set()
    return w


def _psf(sigma: float, size: int) -> np.ndarray:
    yy, xx = np.indices((size, size), dtype=float) - (size - 1) / 2.0
    psf = np.exp(-0.5 * (yy**2 + xx**2) / sigma**2)
    return psf / psf.sum()


def _observations(seed: int = 0):
    rng = np.random.default_rng(seed)
    fine = mp.Observation(
        rng.normal(size=(1, FINE_N, FINE_N)) * 0.01,
        weights=1e4,
        psf=_psf(1.2, 11),
        wcs=_wcs(FINE_SCALE, FINE_N),
        channels=["F814W"],
        name="HST",
    )
    coarse = mp.Observation(
        rng.normal(size=(2, COARSE_N, COARSE_N)) * 0.02,
        weights=2500.0,
        psf=np.stack([_psf(1.1, 9), _psf(1.3, 9)]),
        wcs=_wcs(COARSE_SCALE, COARSE_N),
        channels=["i", "z"],
        name="HSC",
    )
    return fine, coarse


def _outside(observation: mp.Observation, frame: mp.Frame) -> np.ndarray:
    """Mask of the observation's pixels whose centres fall outside ``frame``."""
    y, x = np.indices(observation.shape[1:], dtype=float)
    fy, fx = frame.sky_to_pixel(observation.frame.pixel_to_sky(y, x))
    h, w = frame.shape[1:]
    return (fy < -0.5) | (fy > h - 0.5) | (fx < -0.5) | (fx > w - 0.5)


def _with_data(observation: mp.Observation, data: np.ndarray) -> mp.Observation:
    return mp.Observation(
        data,
        weights=np.asarray(observation.weights),
        psf=np.asarray(observation.psf),
        wcs=observation.frame.wcs,
        channels=list(observation.channels),
        name=observation.name,
    )


def _measured(clean: mp.Observation, data: np.ndarray) -> mp.CorrelatedObservation:
    # the noise is measured on the clean image (it is an estimate from the data), the
    # junk goes into the data only: the likelihood's pixel rule is what is tested
    measured = mp.CorrelatedObservation.from_observation(clean)
    return eqx.tree_at(lambda o: o.data, measured, jnp.asarray(data))


#: ``(clean observation, data, frame) -> observation of that kind holding ``data``.
KINDS = {
    "independent pixels": lambda clean, data, frame: _with_data(clean, data),
    "measured correlated noise": lambda clean, data, frame: _measured(clean, data),
    "resampled": lambda clean, data, frame: mp.CorrelatedObservation.from_observation(
        _with_data(clean, data), resample_to_frame=frame
    ),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_data_outside_the_frame_do_not_count(kind):
    fine, coarse = _observations()
    frame = mp.Frame.from_observations([fine, coarse], coverage="intersection")
    outside = _outside(fine, frame)
    assert frame.shape[1] < FINE_N and 0.3 < outside.mean() < 0.7
    # the same image, but bright junk in every pixel outside the frame
    junk = np.asarray(fine.data) + np.where(outside, 50.0, 0.0)[None]

    center = (frame.shape[1] / 2.0 - 0.3, frame.shape[2] / 2.0 + 0.4)
    scene = mp.Scene(frame, [mp.GaussianSource(center, [1.0, 0.5, 0.4], 2.0, box_size=15)])
    values = {}
    for label, data in (("clean", np.asarray(fine.data)), ("junk", junk)):
        sharp = KINDS[kind](fine, data, frame)
        model = mp.SceneModel(scene, [sharp, coarse], shifts={"HSC": 0.1 * u.arcsec})
        params = model.init_values()
        bound = model.observations[0]
        values[label] = (
            float(log_density(model, (), {}, params)[0]),
            float(bound.log_likelihood(scene.render(), convolved=False)),
            mp.measure.goodness_of_fit(scene, sharp)["F814W"],
        )
    # junk of 50 at weight 1e4 over ~2000 pixels would add ~2.5e10 to -2 log L
    for name, clean, dirty in zip(
        ("log density", "log_likelihood", "chi2"), *values.values(), strict=True
    ):
        assert dirty == pytest.approx(clean, rel=1e-12, abs=1e-9), name


def test_counted_weights_are_zero_exactly_outside_the_frame():
    # the one rule of which pixels count: the weights inside the bound frame, zero out
    fine, coarse = _observations(1)
    frame = mp.Frame.from_observations([fine, coarse], coverage="intersection")
    inside = ~_outside(fine, frame)
    for kind, make in KINDS.items():
        bound = make(fine, np.asarray(fine.data), frame).match(frame)
        counted = np.asarray(bound.counted_weights())
        if kind == "resampled":  # its grid is the frame's: every pixel is inside
            assert np.all(counted > 0) == np.all(np.asarray(bound.weights) > 0), kind
            continue
        np.testing.assert_array_equal(counted[0] > 0, inside, err_msg=kind)
        np.testing.assert_array_equal(
            counted[0][inside], np.asarray(bound.weights)[0][inside], err_msg=kind
        )
    with pytest.raises(ValueError, match="match"):
        fine.counted_weights()


def test_an_observation_bound_to_another_frame_of_the_same_shape_is_rebound():
    # "already bound?" compares the frame itself (shape, WCS, channels, PSF), not only
    # its shape: a frame of the same shape elsewhere on the sky gets its own operator
    fine, coarse = _observations(2)
    frame = mp.Frame.from_observations([fine, coarse], coverage="intersection")
    wcs = frame.wcs.deepcopy()
    wcs.wcs.crpix = wcs.wcs.crpix + np.array([3.0, -2.0])
    moved = mp.Frame(frame.shape, wcs=wcs, channels=frame.channels, psf=frame.psf)
    bound = fine.match(frame)
    assert bound.bound_to(frame) is bound
    rebound = bound.bound_to(moved)
    assert rebound is not bound and rebound.renderer.renders_from(moved)
    # the moved frame sees other sky: the coverage differs
    assert not np.array_equal(
        np.asarray(rebound.renderer.coverage), np.asarray(bound.renderer.coverage)
    )
    scene = mp.Scene(moved, [mp.GaussianSource((20.0, 20.0), [1.0, 0.5, 0.4], 2.0, box_size=9)])
    model = mp.SceneModel(scene, [bound, coarse.match(frame)])
    assert all(obs.renderer.renders_from(moved) for obs in model.observations)
