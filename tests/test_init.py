"""Initial scenes from an observation: ``mp.init.from_observation``.

A simulated field seen by two instruments: a sharp one ("space": 64 x 64 pixels of
0.06", channel "a") on which sources are detected, and a coarse one ("ground": 20 x 20
pixels of 0.18", channels "g", "r") inside it, so that the model frame is the sharp
grid with two extra channels. Galaxies are Gaussians (two of them blended) on white
noise; every simulation is seeded.
"""

from __future__ import annotations

import functools

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.wcs import WCS

import mobs_ppl as mp
from mobs_ppl.psf import gaussian_psf

SPACE_SCALE, GROUND_SCALE = 0.06, 0.18  # arcsec per pixel
SPACE_N, GROUND_N = 64, 20
NOISE = 0.2  # white-noise sigma of the space image
#: (y, x) in space pixels, Gaussian sigma (pixels), peak value (data units)
TRUTH = [
    ((14.3, 15.8), 1.8, 4.0),
    ((47.6, 16.2), 2.5, 3.0),
    ((30.2, 40.7), 2.2, 5.0),  # these two are blended
    ((36.9, 46.1), 1.6, 3.5),
    ((50.4, 50.6), 1.3, 2.5),
]


def _wcs(scale, n, offset=(0.0, 0.0)):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.1, 2.2]
    w.wcs.cd = np.diag([-scale, scale]) / 3600.0
    centre = (n - 1) / 2.0
    w.wcs.crpix = [centre + offset[1] + 1, centre + offset[0] + 1]
    w.wcs.set()
    return w


def _image(shape, truth, scale=1.0, offset=(0.0, 0.0)):
    """Sum of the true Gaussians on a grid ``scale`` times coarser (same centre)."""
    yy, xx = np.indices(shape, dtype=float)
    image = np.zeros(shape)
    for (y, x), sigma, peak in truth:
        # position on this grid: same sky position, both grids centred on crval
        yg = (y - (SPACE_N - 1) / 2) / scale + (shape[0] - 1) / 2 - offset[0]
        xg = (x - (SPACE_N - 1) / 2) / scale + (shape[1] - 1) / 2 - offset[1]
        s = sigma / scale
        g = np.exp(-0.5 * ((yy - yg) ** 2 + (xx - xg) ** 2) / s**2)
        image += peak * g  # surface brightness is kept: coarse pixels are brighter per area
    return image


@functools.cache
def _field(seed=0):
    rng = np.random.default_rng(seed)
    space_image = _image((SPACE_N, SPACE_N), TRUTH) + rng.normal(
        scale=NOISE, size=(SPACE_N, SPACE_N)
    )
    space = mp.Observation(
        space_image,
        weights=1 / NOISE**2,
        psf=gaussian_psf(1.0),
        wcs=_wcs(SPACE_SCALE, SPACE_N),
        channels=["a"],
        name="space",
    )
    offset = (0.23, -0.31)
    ground_image = np.stack(
        [_image((GROUND_N, GROUND_N), TRUTH, 3.0, offset) * f for f in (2.0, 4.0)]
    )
    ground_image += rng.normal(scale=0.3, size=ground_image.shape)
    ground = mp.Observation(
        ground_image,
        weights=1 / 0.3**2,
        psf=gaussian_psf(1.2),
        wcs=_wcs(GROUND_SCALE, GROUND_N, offset),
        channels=["g", "r"],
        name="ground",
    )
    frame = mp.Frame.from_observations([space, ground])
    assert frame.shape == (3, SPACE_N, SPACE_N)
    assert frame.channels == ("a", "g", "r")
    return space, ground, frame


def _truth_in_frame(frame, observation):
    """True centres in model-frame pixels (through the sky)."""
    ys, xs = np.array([t[0] for t in TRUTH]).T
    y, x = frame.sky_to_pixel(observation.frame.pixel_to_sky(ys, xs))
    return np.stack([y, x], axis=1)


@functools.cache
def _scene():
    """The initialisation from the space image, one component per galaxy (shared)."""
    space, _, frame = _field()
    return mp.init.from_observation(space, frame, cores="none")


def _check_values(scene):
    for source in scene.sources:
        spectrum = np.asarray(source.spectrum)
        assert np.all(np.isfinite(spectrum)) and np.all(spectrum > 0)
        if isinstance(source, mp.Source):  # cores are parametric
            morphology = np.asarray(source.morphology)
            assert np.all(morphology > 0) and np.all(morphology < 1)


def _centres(scene):
    return np.array([np.asarray(s.center) for s in scene.sources])


# -- from detections --------------------------------------------------------------------


def test_one_source_per_detection_inside_the_constraints():
    space, _, frame = _field()
    detections = mp.detection.detect_sources(space, "space", split_peaks=False)
    scene = _scene()
    assert isinstance(scene, mp.Scene)
    assert scene.frame.shape == frame.shape and scene.frame.channels == frame.channels
    assert len(scene.sources) == len(detections) == len(TRUTH)
    _check_values(scene)
    # centres within one pixel of the truth, one source per true galaxy
    truth = _truth_in_frame(frame, space)
    centres = _centres(scene)
    distance = np.hypot(*(centres[:, None, :] - truth[None, :, :]).transpose(2, 0, 1))
    nearest = np.argmin(distance, axis=1)
    assert sorted(nearest.tolist()) == list(range(len(TRUTH)))
    assert np.all(distance.min(axis=1) < 1.0)
    print(f"init centres: largest distance to the truth {distance.min(axis=1).max():.2f} px")


@pytest.mark.parametrize("box_growth", [1.5, 2.0])
def test_boxes_are_larger_than_the_footprints(box_growth):
    space, _, frame = _field()
    detections = mp.detection.detect_sources(space, "space", split_peaks=False)
    scene = mp.init.from_observation(space, frame, box_growth=box_growth, cores="none")
    smaller = mp.init.from_observation(space, frame, box_growth=1.0, cores="none")
    for source, small, detection in zip(scene.sources, smaller.sources, detections, strict=True):
        y0, y1, x0, x1 = detection.bbox
        height, width = source.box_shape
        assert height == width and height % 2 == 1
        # boxes grow with box_growth (about the light's extent, not the footprint's)
        assert height >= small.box_shape[0]
        # the box holds the source's own part of its footprint
        ys, xs = np.nonzero(detection.own)
        oy, ox = source.origin
        assert oy <= ys.min() and ox <= xs.min()
        assert oy + height > ys.max() and ox + width > xs.max()


def test_blended_sources_start_distinct():
    space, _, frame = _field()
    scene = _scene()
    truth = _truth_in_frame(frame, space)
    centres = _centres(scene)
    pair = [int(np.argmin(np.hypot(*(centres - truth[k]).T))) for k in (2, 3)]
    a, b = (scene.sources[i] for i in pair)
    # shared footprint, same box extent, but each morphology peaks on its own source
    for source, k in zip((a, b), (2, 3), strict=True):
        image = np.asarray(source.morphology)
        peak = np.array(np.unravel_index(np.argmax(image), image.shape)) + source.origin
        assert np.hypot(*(peak - truth[k])) < 2.0


def test_extra_frame_channels_hold_a_positive_placeholder():
    scene = _scene()
    spectra = np.array([np.asarray(s.spectrum) for s in scene.sources])
    observed, others = spectra[:, 0], spectra[:, 1:]
    assert np.all(others > 0)
    np.testing.assert_array_equal(others, others[0, 0])  # one value for all
    assert others[0, 0] < observed.min()


def test_observed_channel_holds_the_forced_flux():
    space, _, frame = _field()
    scene = _scene()
    truth = _truth_in_frame(frame, space)
    true_flux = np.array([2 * np.pi * s**2 * p for _, s, p in TRUTH])
    for source in scene.sources:
        k = int(np.argmin(np.hypot(*(truth - np.asarray(source.center)).T)))
        if k in (2, 3):
            continue  # the blend's flux split depends on the starting morphologies
        # a starting point only: the morphology is the noisy image inside the light's
        # region, continued by an exponential envelope outside it (no edges), whose
        # wings add light a Gaussian galaxy lacks: measured 1.13 - 1.74 of the truth,
        # the most for the faintest galaxy; the MAP fit refines it
        flux = float(mp.measure.flux(source)[0])
        assert 0.8 < flux / true_flux[k] < 2.0


def test_initialisation_from_the_coarse_image():
    _, ground, frame = _field()
    detections = mp.detection.detect_sources(ground, "ground", split_peaks=False)
    scene = mp.init.from_observation(ground, frame, image_type="ground", cores="none")
    assert len(scene.sources) == len(detections) >= 3
    _check_values(scene)
    spectra = np.array([np.asarray(s.spectrum) for s in scene.sources])
    assert np.all(spectra[:, 0] == spectra[0, 0])  # channel "a" is the placeholder now
    # boxes are in model pixels: three per coarse pixel
    for source, detection in zip(scene.sources, detections, strict=True):
        y0, y1, x0, x1 = detection.bbox
        assert source.box_shape[0] >= 1.5 * 3 * max(y1 - y0 + 1, x1 - x0 + 1) - 1e-9
    # centres within one coarse pixel (three model pixels) of a true galaxy
    truth = _truth_in_frame(frame, _field()[0])
    for centre in _centres(scene):
        assert np.min(np.hypot(*(truth - centre).T)) < 3.0


# -- from a catalogue --------------------------------------------------------------------


def _catalogue(space, extra_pixels=()):
    ys, xs = np.array([t[0] for t in TRUTH] + list(extra_pixels), float).T
    return space.frame.pixel_to_sky(ys, xs)


def test_catalogue_gives_one_source_per_entry():
    space, _, frame = _field()
    blank = (8.0, 50.0)  # empty sky: nothing is detected there
    catalog = _catalogue(space, [blank])
    scene = mp.init.from_observation(space, frame, catalog=catalog, cores="none")
    assert len(scene.sources) == len(TRUTH) + 1
    _check_values(scene)
    # each source sits on its catalogue position (model pixels, through the WCS)
    y, x = frame.sky_to_pixel(catalog)
    np.testing.assert_allclose(_centres(scene), np.stack([y, x], axis=1), atol=1e-6)
    # the blank entry got a compact source anyway
    blank_source = scene.sources[-1]
    assert blank_source.box_shape[0] >= 11  # min_box
    assert np.all(np.asarray(blank_source.spectrum) > 0)


def test_catalogue_outside_the_frame_warns_and_skips():
    space, _, frame = _field()
    catalog = _catalogue(space, [(-30.0, 20.0), (20.0, 200.0)])
    with pytest.warns(mp.MobsPplWarning, match=r"\[5, 6\].*outside"):
        scene = mp.init.from_observation(space, frame, catalog=catalog)
    assert scene.n_groups == len(TRUTH)
    _check_values(scene)


def test_catalogue_entirely_outside_is_refused():
    space, _, frame = _field()
    outside = space.frame.pixel_to_sky(np.array([-40.0, 150.0]), np.array([10.0, 10.0]))
    with (
        pytest.warns(mp.MobsPplWarning, match="outside"),
        pytest.raises(ValueError, match="no catalogue position"),
    ):
        mp.init.from_observation(space, frame, catalog=outside)


def test_single_skycoord_catalogue():
    space, _, frame = _field()
    coord = space.frame.pixel_to_sky(*TRUTH[0][0])
    assert isinstance(coord, SkyCoord) and coord.isscalar
    scene = mp.init.from_observation(space, frame, catalog=coord)
    assert scene.n_groups == 1
    _check_values(scene)


# -- cores: a second component where the data resolve a bright galaxy --------------------


def test_cores_go_to_resolved_bright_galaxies_only():
    space, _, frame = _field()
    plain = _scene()
    scene = mp.init.from_observation(space, frame)
    assert scene.n_groups == len(plain.sources)
    psf_width = 1.0  # the space PSF's sigma, pixels (see _field)
    for g in range(scene.n_groups):
        members = scene.members(g)
        envelope = scene.sources[members[0]]
        assert isinstance(envelope, mp.Source)
        if len(members) == 2:
            core = scene.sources[members[1]]
            assert isinstance(core, mp.GaussianSource)
            # at the galaxy's centre, more compact than its envelope
            np.testing.assert_allclose(core.center, envelope.center)
            assert float(core.radius) < float(envelope.envelope.radius)
            assert float(envelope.envelope.radius) >= mp.init.CORE_MIN_RADIUS * psf_width
    with pytest.raises(ValueError, match="cores"):
        mp.init.from_observation(space, frame, cores="always")


# -- bad input ---------------------------------------------------------------------------


def test_no_detection_is_refused():
    _, _, frame = _field()
    noise = np.random.default_rng(3).normal(scale=NOISE, size=(SPACE_N, SPACE_N))
    empty = mp.Observation(
        noise, weights=1 / NOISE**2, wcs=_wcs(SPACE_SCALE, SPACE_N), channels=["a"]
    )
    with pytest.raises(ValueError, match="n_sigma"):
        mp.init.from_observation(empty, frame)


def test_all_zero_data_is_refused():
    _, _, frame = _field()
    zero = mp.Observation(
        np.zeros((SPACE_N, SPACE_N)), weights=1.0, wcs=_wcs(SPACE_SCALE, SPACE_N), channels=["a"]
    )
    with pytest.raises(ValueError, match="all zero"):
        mp.init.from_observation(zero, frame)


# -- joint detection in several observations --------------------------------------------

#: Galaxies of the joint field: offset (dy, dx) from the tangent point in arcsec, Gaussian
#: sigma in arcsec, total flux in "a", "g", "r". The last one lies outside the sharp image.
JOINT_TRUTH = [
    ((-0.80, -0.90), 0.12, (60.0, 30.0, 45.0)),
    ((0.60, -0.10), 0.15, (80.0, 50.0, 60.0)),
    ((0.10, 0.30), 0.10, (40.0, 25.0, 30.0)),
    ((-0.30, 2.00), 0.18, (70.0, 90.0, 120.0)),
]
JOINT_SPACE = (48, 0.06, 0.05)  # pixels, arcsec per pixel, PSF sigma in arcsec
JOINT_GROUND = (32, 0.18, 0.30)


def _gaussian_image(wcs, n, scale, psf_sigma, fluxes, noise, rng):
    """Analytic PSF-convolved Gaussians sampled at the pixel centres, plus white noise."""
    yy, xx = np.indices((n, n), dtype=float)
    image = np.zeros((len(fluxes[0]), n, n))
    for (dy, dx), sigma, _ in JOINT_TRUTH:
        sky = SkyCoord(150.1, 2.2, unit="deg").spherical_offsets_by(dx * u.arcsec, dy * u.arcsec)
        x, y = wcs.world_to_pixel(sky)
        width2 = (sigma**2 + psf_sigma**2) / scale**2  # pixels^2
        profile = np.exp(-0.5 * ((yy - y) ** 2 + (xx - x) ** 2) / width2)
        image += np.array(fluxes.pop(0))[:, None, None] * profile / (2 * np.pi * width2)
    return image + rng.normal(scale=noise, size=image.shape)


@functools.cache
def _joint_field():
    rng = np.random.default_rng(11)
    observations = []
    for (n, scale, psf), channels, noise, shift in (
        (JOINT_SPACE, ["a"], 0.05, (0.0, -0.4)),
        (JOINT_GROUND, ["g", "r"], 0.05, (0.0, 0.0)),
    ):
        wcs = _wcs(scale, n)
        # the sharp image is centred 0.4" west, so the last galaxy falls outside it
        wcs.wcs.crval = [150.1 + shift[1] / 3600 / np.cos(np.radians(2.2)), 2.2 + shift[0] / 3600]
        wcs.wcs.set()
        index = [{"a": 0, "g": 1, "r": 2}[c] for c in channels]
        fluxes = [[t[2][i] for i in index] for t in JOINT_TRUTH]
        image = _gaussian_image(wcs, n, scale, psf, fluxes, noise, rng)
        observations.append(
            mp.Observation(
                image,
                weights=noise**-2,
                psf=gaussian_psf(psf / scale),
                wcs=wcs,
                channels=channels,
                name="space" if channels == ["a"] else "ground",
            )
        )
    space, ground = observations
    frame = mp.Frame.from_observations([space, ground], coverage="union")
    return space, ground, frame


def _truth_sky():
    centre = SkyCoord(150.1, 2.2, unit="deg")
    return [
        centre.spherical_offsets_by(dx * u.arcsec, dy * u.arcsec) for (dy, dx), *_ in JOINT_TRUTH
    ]


def test_joint_detection_adds_what_only_the_coarse_image_sees():
    space, ground, frame = _joint_field()
    truth = _truth_sky()
    y, x = space.frame.sky_to_pixel(truth[-1])
    assert not (0 <= y < space.shape[1] and 0 <= x < space.shape[2])  # outside the sharp one
    alone = mp.init.from_observation(space, frame, cores="none")
    assert len(alone.sources) == 3
    scene = mp.init.from_observations(
        [space, ground], frame, image_types=["space", "ground"], cores="none"
    )
    assert len(scene.sources) == 4
    _check_values(scene)
    # the first three are the sharp image's sources, the added one is the outside galaxy
    np.testing.assert_array_equal(_centres(scene)[:3], _centres(alone))
    added = frame.pixel_to_sky(*np.asarray(scene.sources[3].center))
    separation = added.separation(truth[-1]).to_value(u.arcsec)
    print(f"\nadded source {separation:.3f} arcsec from the truth")
    assert separation < 0.5 * JOINT_GROUND[1]  # half a coarse pixel
    spectra = np.array([np.asarray(s.spectrum) for s in scene.sources])
    # the sharp image does not see it: its "a" is negligible (the channel's placeholder,
    # 1e-3 of the median, or what forced photometry measures on the edge of its box
    # that reaches into the sharp image)
    assert spectra[3, 0] < 1e-2 * np.median(spectra[:3, 0])
    # coarse channels from forced photometry with a morphology cut from the coarse image:
    # it is PSF-broadened and carries the box's floor, so the total comes out high
    # (measured 1.26 of the truth; the MAP fit refines it), but the colour is exact up
    # to noise (one morphology for both bands)
    ratio = mp.measure.flux(scene.sources[3])[1:] / np.array(JOINT_TRUTH[3][2][1:])
    print("added source flux / truth:", ratio.round(3))
    assert np.all((ratio > 0.7) & (ratio < 1.5))
    assert ratio[1] / ratio[0] == pytest.approx(1.0, abs=0.02)


def test_joint_detection_matches_within_the_radius():
    space, ground, frame = _joint_field()
    scene = mp.init.from_observations(
        [space, ground], frame, image_types="space", match_radius=10 * u.arcsec
    )
    assert scene.n_groups == 3  # everything in the coarse image counts as matched


def test_joint_detection_bad_input():
    space, ground, frame = _joint_field()
    with pytest.raises(ValueError, match="2 image_types for 1 observations"):
        mp.init.from_observations([space], frame, image_types=["space", "ground"])
    with pytest.raises(ValueError, match="at least one observation"):
        mp.init.from_observations([], frame, image_types=[])
    no_wcs = mp.Observation(np.asarray(ground.data), weights=1.0, channels=["g", "r"], name="x")
    with pytest.raises(ValueError, match="'x' has no WCS"):
        mp.init.from_observations([space, no_wcs], frame, image_types=["space", "ground"])
