"""The user flow on the real COSMOS HST + HSC field, with both detections.

Sources detected on HST alone, and jointly (HST first, then what only HSC sees: a
galaxy on the bottom edge of the HSC image, outside HST); HST with its measured
correlated noise, HSC resampled onto the model frame with its exact noise model, an
HSC shift of prior sd 0.1". For each: the default ``fit_map`` reaches the mode (Newton
decrement below 0.1), the Laplace approximation of spectra and shift raises no off-mode
warning (``MobsPplWarning`` is an error in the suite), and the native HSC chi2 per dof
per band, the shift with its marginal error bar (every morphology pixel free) and with
its conditional one are printed. ``benchmarks/map_fit.py`` prints the same numbers, with
Adam for comparison, and the model-independent shift of ``measure.template_shift``;
``docs/inference.md`` discusses them.
"""

from __future__ import annotations

import time
import warnings

import astropy.units as u
import numpy as np
import pytest
from scipy import ndimage

import mobs_ppl as mp

pytestmark = pytest.mark.data


@pytest.fixture(scope="module")
def cosmos(shared_data_dir):
    hst, hsc = mp.datasets.load_cosmos(shared_data_dir)
    return hst, hsc


def _hsc_peaks(hsc, n=3):
    """The ``n`` brightest local maxima ``(y, x)`` of the smoothed HSC i-band image."""
    image = ndimage.gaussian_filter(np.asarray(hsc.data[hsc.channels.index("i")]), 1.0)
    maxima = image == ndimage.maximum_filter(image, size=5)
    ys, xs = np.nonzero(maxima)
    order = np.argsort(-image[ys, xs])[:n]
    return [(int(ys[k]), int(xs[k])) for k in order]


def test_hst_detections_cover_the_hsc_galaxies_without_shredding(cosmos):
    hst, hsc = cosmos
    detections = mp.detection.detect_sources(hst, "space", split_peaks=False)
    centres = hst.frame.pixel_to_sky(*np.array([d.center for d in detections]).T)
    for y, x in _hsc_peaks(hsc):
        separation = centres.separation(hsc.frame.pixel_to_sky(y, x)).to_value(u.arcsec)
        print(f"HSC i-band peak ({y}, {x}): nearest HST detection {separation.min():.3f} arcsec")
        assert separation.min() < 0.5
    # shredding: the knots of one compact galaxy made five sources within 0.3" before
    # the dip test (detection.DEBLEND_SIGMA); the closest distinct pair is 0.61" apart
    pairs = centres[:, None].separation(centres[None, :]).to_value(u.arcsec)
    closest = np.min(pairs[np.triu_indices(len(detections), 1)])
    print(f"\n{len(detections)} HST detections; closest pair {closest:.2f} arcsec")
    assert len(detections) >= 5
    assert closest > 0.3


def _fit(hst, hsc, detection):
    frame = mp.Frame.from_observations([hst, hsc], coverage="union")
    hsc_c = mp.CorrelatedObservation.from_observation(hsc, resample_to_frame=frame)
    hst_c = mp.CorrelatedObservation.from_observation(hst)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mp.MobsPplWarning)  # forced photometry's notes
        if detection == "joint":
            scene = mp.init.from_observations([hst, hsc], frame, image_types=["space", "ground"])
        else:
            scene = mp.init.from_observation(hst, frame, image_type="space")
            scene = mp.measure.forced_photometry(scene, hsc_c)
    model = mp.SceneModel(scene, [hst_c, hsc_c], shifts={"HSC": 0.1 * u.arcsec})
    start = time.perf_counter()
    fit = mp.fit_map(model)
    seconds = time.perf_counter() - start
    conditional = mp.laplace(model, fit, sites=["spectrum", "shift"])
    start = time.perf_counter()
    marginal = mp.laplace(model, fit)
    laplace_seconds = time.perf_counter() - start
    chi2 = mp.measure.goodness_of_fit(fit.scene, hsc, shift=fit.shift_native("HSC"))
    chi2.update(mp.measure.goodness_of_fit(fit.scene, hst_c))
    n = sum(int(np.size(v)) for v in fit.params.values())
    print(
        f"\n{detection} detection: {scene.n_groups} galaxies ({len(scene.sources)} "
        f"components), {n} parameters; MAP {seconds:.0f} s, {fit.iterations} steps, "
        f"decrement {fit.decrement:.3f}; marginal Laplace {laplace_seconds:.0f} s"
    )
    print("native chi2/dof:", {b: round(v, 3) for b, v in chi2.items()})
    print(
        f"HSC shift {np.round(fit.shift_native('HSC'), 3)} native px, marginal sd "
        f"{np.round(marginal.sd('shift_native')[0], 3)}, conditional sd "
        f"{np.round(conditional.sd('shift_native')[0], 3)}"
    )
    return {
        "model": model,
        "fit": fit,
        "chi2": chi2,
        "marginal": marginal,
        "conditional": conditional,
        "hsc": hsc,
    }


@pytest.fixture(scope="module")
def fits(cosmos):
    hst, hsc = cosmos
    return {detection: _fit(hst, hsc, detection) for detection in ("hst", "joint")}


@pytest.mark.slow
@pytest.mark.parametrize("detection", ["hst", "joint"])
def test_default_fit_reaches_the_mode(fits, detection):
    result = fits[detection]
    fit = result["fit"]
    assert fit.converged and fit.decrement < 0.1
    assert result["conditional"].conditional and not result["marginal"].conditional
    assert result["conditional"].decrement < 1.0 and result["marginal"].decrement < 1.0
    # marginal error bars are never narrower than conditional ones
    marginal, conditional = (result[k].sd("shift_native")[0] for k in ("marginal", "conditional"))
    assert np.all(marginal >= conditional)


@pytest.mark.slow
def test_joint_detection_fits_every_band(fits):
    """With the HSC-edge galaxy in the scene every native HSC band has chi2/dof <= 1.5.

    From HST detections alone that galaxy is missing and i, z, y stay far above 1.
    """
    result = fits["joint"]
    hsc = result["hsc"]
    scene = result["fit"].scene
    added = scene.sources[scene.members(scene.n_groups - 1)[0]]
    y, _ = hsc.frame.sky_to_pixel(scene.frame.pixel_to_sky(*np.asarray(added.center)))
    assert float(y) > hsc.shape[1] - 3  # on the bottom edge of the HSC image
    assert all(result["chi2"][b] <= 1.5 for b in hsc.channels), result["chi2"]
    assert result["chi2"]["F814W"] <= 1.5
