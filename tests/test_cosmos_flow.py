"""The whole user flow on the shared COSMOS field (HST F814W + HSC g, r, i, z, y).

detect on HST -> initialise a scene -> forced photometry in HSC -> joint MAP fit of HST
(measured correlated noise) and HSC (resampled onto the model frame), with and without
an astrometric shift of HSC.

The residual dipole around the brightest galaxy is measured in native HSC pixels:
``D = sum_b |sum_p r_b(p) (p - c)| / sum_b sum_p |m_b(p)|`` over the pixels ``p`` within
4 HSC pixels of the galaxy's peak ``c``, with ``r = data - model`` and ``m`` the model
rendered into the original ``hsc`` observation with the native shift
``relative_jacobian(hsc_c.frame, hsc.frame) @ fit.shift("HSC")``. A model displaced by
``a`` pixels from the data gives ``D ~ |a|``.

Measured (CPU, 1000 iterations per fit; see the printout): the shift comes out near
(+0.07, -0.35) native HSC pixels (0.06 arcsec), the fit with the shift reaches a lower
loss, and both fits cut the dipole of the initial scene (0.098) by more than 2x. The
dipole with the shift (0.045) is however only ~5% below the one without (0.047), not
2x: without a shift the non-parametric morphologies absorb the offset (the no-shift
HSC dipole in i, z and y is already at the noise level, ~0.01), and what remains is
dominated by the g band (~-0.1 along y in both fits: a colour gradient that one
morphology shared by all bands cannot follow). 2000 iterations (0.036 vs 0.039), or a
frame covering only the intersection of the two images, give the same picture. The test
therefore checks that the shift helps, not the factor 2, and prints every number.

Why not 2x (measured with scratch fits, 1000 MAP steps each): the dipole is dominated by
the g band in both fits (0.027 of the 0.042 with the shift, 0.029 of 0.046 without),
so even a perfect i, z, y would leave the ratio <= 1.25; the i+z+y part alone shrinks
only 1.16x. It is the fit *with* the shift whose brightest morphology moves (its centroid
by about minus the fitted shift), making the HST residual dipole worse (0.23 -> 0.93 in
HST pixels): one morphology shared by all bands lets the shift absorb colour gradients.
An independent estimate (the HST image itself rendered into HSC pixels, least-squares
shift per band) gives (+0.10, +0.17) native HSC pixels from i+z+y and a shift that
shrinks from g (0.25, 0.50) to y (-0.02, 0.08), i.e. chromatic; the joint fit's x
component (-0.36) has the other sign and returns there when started at the independent
value. Smaller boxes, symmetry or monotonicity priors on the morphologies, and modelling
the HSC-edge galaxy below change the ratio to 0.99-1.15.

Measured in a third session (scratch fits, 1000 MAP steps each):

* Noise floor. Pure noise in the residual gives ``D ~ 0.017`` here (from the HSC
  weights within the 4-pixel radius; printed by the test). The no-shift dipole, 0.047,
  is therefore 0.044 of systematics plus noise, and 2x means ``D <= 0.023``.
* The dipole is chromatic and differs from galaxy to galaxy. With the morphologies held
  at an HST-only fit (``fit_map(..., sites=["spectrum", "shift"])``), the per-band
  dipole ``(dy, dx)`` of the brightest galaxy runs monotonically from g (-0.17, +0.02)
  through r (-0.09, +0.03), i (-0.03, +0.03), z (-0.02, +0.05) to y (+0.01, +0.05); the
  second galaxy (27, 39) is achromatic (dx ~ +0.065 in every band), the third (23, 17)
  chromatic in another direction (g (-0.09, -0.23), y (+0.01, 0.00)). Colour gradients,
  not an instrument effect, so one achromatic shift cannot remove them: that fit gives
  a ratio of 1.00 (shift (0.04, 0.08) native pixels).
* Modelling colour gradients with two nested components per galaxy, each with its own
  spectrum, lowers both dipoles (0.031 without the shift, 0.028 with it; ratio 1.12),
  but 2x would then need 0.0155, below the noise floor.
* Even on the GalSim simulation of ``test_inference_sim.py`` (a known achromatic offset
  of 0.36 HSC pixels, no colour gradients), free morphologies absorb most of the
  offset without a shift: D = 0.0108 without, 0.0056 with the shift (ratio 1.94, from
  an initial 0.036), while the fitted shift is (0.317, -0.179) for a truth of
  (0.3, -0.2). The HSC dipole is a weak diagnostic of a shift; the shift itself is
  tested against truth there.

HSC chi2 per dof is ~1 in g but 5-11 in i, z and y: almost all of it comes from a galaxy
on the bottom edge of the HSC image (row 49), outside the HST image, so never detected
and not in the model; near the brightest galaxy chi2 per pixel is ~1 in every band.
Joint detection (``mp.init.from_observations``) adds it: see the last test, where i, z
and y come down to 1.36, 1.63 and 0.77.
"""

from __future__ import annotations

import pathlib
import sys
import time

import astropy.units as u
import numpy as np
import pytest
from scipy import ndimage

import mobs_ppl as mp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from residuals import dipole_noise_floor, residual_dipole  # noqa: E402

pytestmark = pytest.mark.data

MAX_ITER = 1000
DIPOLE_RADIUS = 4.0  # native HSC pixels


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


def test_hst_detections_cover_the_hsc_galaxies(cosmos):
    hst, hsc = cosmos
    start = time.perf_counter()
    detections = mp.detection.detect_sources(hst, "space", split_peaks=False)
    print(f"\n{len(detections)} HST detections in {time.perf_counter() - start:.2f} s")
    assert len(detections) >= 7
    centres = hst.frame.pixel_to_sky(*np.array([d.center for d in detections]).T)
    for y, x in _hsc_peaks(hsc):
        separation = centres.separation(hsc.frame.pixel_to_sky(y, x)).to_value(u.arcsec)
        print(f"HSC i-band peak ({y}, {x}): nearest HST detection {separation.min():.3f} arcsec")
        assert separation.min() < 0.5


@pytest.mark.slow
def test_fit_with_hsc_shift(cosmos):
    hst, hsc = cosmos
    timings = {}
    start = time.perf_counter()
    frame = mp.Frame.from_observations([hst, hsc], coverage="union")
    hsc_c = mp.CorrelatedObservation.from_observation(hsc, resample_to_frame=frame)
    hst_c = mp.CorrelatedObservation.from_observation(hst)
    timings["observations"] = time.perf_counter() - start

    start = time.perf_counter()
    scene = mp.init.from_observation(hst, frame, image_type="space")
    assert len(scene.sources) >= 7
    scene = mp.measure.forced_photometry(scene, hsc_c)
    timings["init + forced photometry"] = time.perf_counter() - start
    spectra = np.array([np.asarray(s.spectrum) for s in scene.sources])
    assert np.all(spectra > 0)

    hsc_native = hsc.match(frame)
    centre = _hsc_peaks(hsc, 1)[0]
    initial = np.asarray(hsc_native.render(scene.render()))
    dipoles = {"initial": residual_dipole(hsc, initial, centre, DIPOLE_RADIUS)}
    fits, native_shift, chi2 = {}, {}, {}
    for key, shifts in (("shift", {"HSC": 0.1 * u.arcsec}), ("no shift", None)):
        model = mp.SceneModel(scene, [hst_c, hsc_c], shifts=shifts)
        start = time.perf_counter()
        fit = mp.fit_map(model, max_iter=MAX_ITER, e_rel=1e-6)
        timings[f"fit_map ({key})"] = time.perf_counter() - start
        assert np.all(np.isfinite(fit.losses))
        native = None
        if shifts:
            native = mp.frame.relative_jacobian(hsc_c.frame, hsc.frame) @ fit.shift("HSC")
        prediction = np.asarray(hsc_native.render(fit.scene.render(), native))
        fits[key], native_shift[key] = fit, native
        dipoles[key] = residual_dipole(hsc, prediction, centre, DIPOLE_RADIUS)
        chi2[key] = mp.measure.goodness_of_fit(fit.scene, hsc, shift=native)
        chi2[key].update(mp.measure.goodness_of_fit(fit.scene, hst_c))

    fit = fits["shift"]
    shift, native = fit.shift("HSC"), native_shift["shift"]
    print(
        f"\nHSC shift: model pixels {np.round(shift, 3)}, native HSC pixels "
        f"{np.round(fit.shift_native('HSC'), 3)}, arcsec {np.round(fit.shift_arcsec('HSC'), 4)}"
    )
    for key in fits:
        print(f"chi2/dof ({key}):", {b: round(v, 3) for b, v in chi2[key].items()})
        print(f"final loss ({key}): {fits[key].losses[-1]:.1f}")
    for key, (value, per_band) in dipoles.items():
        print(f"dipole ({key}): {value:.4f}; per band (dy, dx):", np.round(per_band, 3).tolist())
    floor = dipole_noise_floor(hsc, centre, DIPOLE_RADIUS)
    print(f"dipole of pure noise: {floor:.4f}")
    ratio = dipoles["no shift"][0] / dipoles["shift"][0]
    print(f"dipole without shift / with shift: {ratio:.2f} (target 2)")
    print("timings [s]:", {k: round(v, 1) for k, v in timings.items()})

    # the three units of the shift agree with each other and with the WCS
    np.testing.assert_allclose(fit.shift_native("HSC"), native, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(
        fit.shift_arcsec("HSC"), shift * frame.pixel_scale.to_value(u.arcsec), rtol=1e-6
    )
    assert np.hypot(*fit.shift_arcsec("HSC")) < 0.15  # a plausible HST-HSC offset
    assert np.all(np.isfinite(list(chi2["shift"].values())))
    # the extra freedom is used: lower loss and lower HSC chi2 than without the shift
    assert fits["shift"].losses.min() < fits["no shift"].losses.min()
    hsc_bands = hsc.channels
    assert sum(chi2["shift"][b] for b in hsc_bands) < sum(chi2["no shift"][b] for b in hsc_bands)
    # both fits align HSC far better than the initial scene ...
    assert dipoles["shift"][0] < 0.5 * dipoles["initial"][0]
    assert dipoles["no shift"][0] < 0.5 * dipoles["initial"][0]
    # ... and the shift lowers the dipole further, though not by the 2x hoped for (see
    # the module docstring for why)
    assert dipoles["shift"][0] < dipoles["no shift"][0]


@pytest.mark.slow
def test_joint_detection_models_the_hsc_edge_galaxy(cosmos):
    """Joint HST + HSC detection adds the galaxy on the HSC edge that HST never sees.

    From HST alone the native HSC chi2 per dof after the fit is 7.4 (i), 11.0 (z) and
    5.0 (y), almost all from that galaxy (see the module docstring). With it in the
    scene, measured: 1.36, 1.63, 0.77 (g 1.03, r 0.93). Bound: 2.5 per band, above
    the measured values by 0.9 or more but far below the values without it.
    """
    hst, hsc = cosmos
    frame = mp.Frame.from_observations([hst, hsc], coverage="union")
    hsc_c = mp.CorrelatedObservation.from_observation(hsc, resample_to_frame=frame)
    hst_c = mp.CorrelatedObservation.from_observation(hst)
    alone = mp.init.from_observation(hst, frame, image_type="space")
    scene = mp.init.from_observations([hst, hsc], frame, image_types=["space", "ground"])
    assert len(scene.sources) == len(alone.sources) + 1
    known = frame.pixel_to_sky(*np.array([np.asarray(s.center) for s in alone.sources]).T)
    added = frame.pixel_to_sky(*np.asarray(scene.sources[-1].center))
    distance = added.separation(known).to_value(u.arcsec).min()
    y, x = hsc.frame.sky_to_pixel(added)
    print(f"\nadded source at native HSC ({float(y):.1f}, {float(x):.1f}), {distance:.2f} arcsec")
    assert distance > 2.0
    assert float(y) > hsc.shape[1] - 3  # on the bottom edge of the HSC image

    scene = mp.measure.forced_photometry(scene, hsc_c)
    model = mp.SceneModel(scene, [hst_c, hsc_c], shifts={"HSC": 0.1 * u.arcsec})
    fit = mp.fit_map(model, max_iter=MAX_ITER, e_rel=1e-6)
    chi2 = mp.measure.goodness_of_fit(fit.scene, hsc, shift=fit.shift_native("HSC"))
    print("chi2/dof with joint detection:", {b: round(v, 3) for b, v in chi2.items()})
    print(f"HSC shift, native pixels: {np.round(fit.shift_native('HSC'), 3)}")
    assert all(chi2[b] < 2.5 for b in hsc.channels)
