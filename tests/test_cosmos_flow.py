"""The user flow on the real COSMOS HST + HSC field, with sources detected on HST alone.

HST with its measured correlated noise, HSC resampled onto the model frame with its
exact noise model, an HSC shift of prior sd 0.1". ``fit_map`` (at most 200 steps, to
keep the suite to its time) should reach the mode (Newton decrement below 0.1; an
expected failure, with its numbers, where it does not), the conditional Laplace
approximation (spectra and shift) raises no off-mode warning (``MobsPplWarning`` is an
error in the suite), and the native HSC chi2 per dof per band and the shift with its
conditional error bar are printed (the marginal one, 7 CPU minutes more, is printed by
``benchmarks/map_fit.py`` and, for the joint detection, by the tutorial). The same
flow with joint detection (HST, then what only HSC sees: a galaxy on the bottom edge of
the HSC image) is the tutorial ``multi_observation``, whose numbers
``test_tutorials.py`` checks against the same criteria, every band at chi2/dof <= 1.5
included; ``benchmarks/map_fit.py`` prints both, with Adam for comparison and the
model-independent shift of ``measure.template_shift``; ``docs/inference.md`` discusses
them.
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


def _fit(hst, hsc):
    frame = mp.Frame.from_observations([hst, hsc], coverage="union")
    hsc_c = mp.CorrelatedObservation.from_observation(hsc, resample_to_frame=frame)
    hst_c = mp.CorrelatedObservation.from_observation(hst)
    scene = mp.init.from_observation(hst, frame, image_type="space")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mp.MobsPplWarning)  # forced photometry's notes
        scene = mp.measure.forced_photometry(scene, hsc_c)
    model = mp.SceneModel(scene, [hst_c, hsc_c], shifts={"HSC": 0.1 * u.arcsec})
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", mp.MobsPplWarning)
        fit = mp.fit_map(model, max_iter=200)
    seconds = time.perf_counter() - start
    assert fit.converged or any("stopped after" in str(w.message) for w in caught)
    conditional = mp.laplace(model, fit, sites=["spectrum", "shift"])
    chi2 = mp.measure.goodness_of_fit(fit.scene, hsc, shift=fit.shift_native("HSC"))
    chi2.update(mp.measure.goodness_of_fit(fit.scene, hst_c))
    n = sum(int(np.size(v)) for v in fit.params.values())
    print(
        f"\nHST detection: {scene.n_groups} galaxies ({len(scene.sources)} components), "
        f"{n} parameters; MAP {seconds:.0f} s, {fit.iterations} steps, decrement "
        f"{fit.decrement:.3f}"
    )
    print("native chi2/dof:", {b: round(v, 3) for b, v in chi2.items()})
    print(
        f"HSC shift {np.round(fit.shift_native('HSC'), 3)} native px, conditional sd "
        f"{np.round(conditional.sd('shift_native')[0], 3)}"
    )
    return {"fit": fit, "chi2": chi2, "conditional": conditional}


@pytest.fixture(scope="module")
def hst_detection_fit(cosmos):
    return _fit(*cosmos)


@pytest.mark.slow
def test_default_fit_reaches_the_mode(hst_detection_fit):
    result = hst_detection_fit
    fit = result["fit"]
    assert result["conditional"].conditional and result["conditional"].decrement <= 1.0
    assert np.all(np.isfinite(result["conditional"].sd("shift_native")))
    assert set(result["chi2"]) == {"F814W", "g", "r", "i", "z", "y"}
    assert result["chi2"]["F814W"] <= 1.5
    if not (fit.converged and fit.decrement < 0.1):
        pytest.xfail(
            f"issue 13, open: the HST-detection COSMOS fit stops at Newton decrement "
            f"{fit.decrement:.2f} after {fit.iterations} steps (tolerance 0.1)"
        )
