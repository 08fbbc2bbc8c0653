"""Physics at the edges: undersampled PSFs, observations apart on the sky, boxes cut by
the frame.

References are independent of the renderer: a point source seen through a Gaussian
PSF integrated over square pixels is the product of erf differences per axis.
"""

from __future__ import annotations

import re
import warnings

import astropy.units as u
import equinox as eqx
import numpy as np
import pytest
from astropy.wcs import WCS
from scipy.special import erf

import mobs_ppl as mp
from mobs_ppl.renderer import FLUX_ERROR_TOLERANCE, build_renderer

OBS_SCALE = 0.1  # arcsec per observed pixel
OBS_N = 24
RATIO = 3  # model pixels per observed pixel
MODEL_N = OBS_N * RATIO


def _wcs(scale, n, offset=(0.0, 0.0), crval=(150.0, 2.0)):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = list(crval)
    w.wcs.cd = np.diag([-1.0, 1.0]) * scale / 3600.0
    w.wcs.crpix = [(n - 1) / 2.0 + 1 + offset[0], (n - 1) / 2.0 + 1 + offset[1]]
    w.wcs.set()
    return w


def _pixel_gaussian(n, cy, cx, sigma):
    """Unit point at ``(cy, cx)`` through a Gaussian PSF integrated over the pixels."""
    edges = np.arange(n + 1) - 0.5
    py = np.diff(0.5 * (1 + erf((edges - cy) / (np.sqrt(2) * sigma))))
    px = np.diff(0.5 * (1 + erf((edges - cx) / (np.sqrt(2) * sigma))))
    return np.outer(py, px)


def _observation(sigma, name="WFC3-IR"):
    return mp.Observation(
        np.zeros((1, OBS_N, OBS_N)),
        weights=1.0,
        psf=mp.psf.gaussian_psf(sigma, 2 * int(np.ceil(6 * max(sigma, 1.0))) + 1),
        wcs=_wcs(OBS_SCALE, OBS_N, offset=(0.37, -0.21)),
        channels=["a"],
        name=name,
    )


def _fine_frame():
    return mp.Frame(
        (1, MODEL_N, MODEL_N),
        wcs=_wcs(OBS_SCALE / RATIO, MODEL_N),
        channels=["a"],
        psf=mp.psf.gaussian_psf(0.8),
    )


def _measured_flux_errors(obs, frame, sigma, positions, box_size=15 * RATIO):
    """|rendered flux / analytic flux - 1| of unit points at observed-pixel positions."""
    bound = obs.match(frame) if obs.renderer is None else obs
    render = eqx.filter_jit(bound.render)
    errors = []
    for cy, cx in positions:
        my, mx = frame.sky_to_pixel(obs.frame.pixel_to_sky(cy, cx))
        point = mp.PointSource(np.array([float(my), float(mx)]), [1.0], box_size=box_size)
        image = np.asarray(render(mp.Scene(frame, [point]).render()))[0]
        errors.append(image.sum() / _pixel_gaussian(OBS_N, cy, cx, sigma).sum() - 1)
    return np.abs(errors)


def _central_positions(phases=4):
    """Positions around the central pixel and its neighbour: both parities, all phases."""
    c = OBS_N // 2
    steps = (np.arange(phases) + 0.5) / phases
    return [
        (c + oy + fy, c + ox + fx) for oy in (0, 1) for ox in (0, 1) for fy in steps for fx in steps
    ][:: max(1, phases // 2)]


def _predicted_error(sigma):
    """The flux error the renderer's warning states (a fraction), or None if it is silent."""
    obs = _observation(sigma)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bound = obs.match(_fine_frame())
    messages = [str(w.message) for w in caught if issubclass(w.category, mp.MobsPplWarning)]
    if not messages:
        return bound, None
    (message,) = messages
    return bound, float(re.search(r"error of up to ([0-9.]+)%", message).group(1)) / 100


def test_nyquist_amplitude_of_a_pixel_gaussian_matches_poisson_summation():
    # sampled pixel-integrated Gaussian: its transform is sum_m G(k + m) sinc(k + m);
    # on the edge (1/2, 0) the x factor sums to one (sinc vanishes at the integers)
    for sigma in (0.4, 0.7, 1.0):
        m = np.arange(-20, 21)
        k = 0.5 + m
        expected = abs(np.sum(np.exp(-2 * np.pi**2 * sigma**2 * k**2) * np.sinc(k)))
        got = mp.psf.nyquist_amplitude(mp.psf.gaussian_psf(sigma, 41))
        np.testing.assert_allclose(got, [expected], rtol=1e-6)


@pytest.mark.parametrize("sigma", [0.4, 0.6, 0.9])
def test_undersampled_psf_warns_with_a_bound_on_the_flux_error(sigma):
    bound, predicted = _predicted_error(sigma)
    assert predicted is not None and predicted > FLUX_ERROR_TOLERANCE
    measured = _measured_flux_errors(bound, _fine_frame(), sigma, _central_positions())
    # the stated number bounds the error at every sub-pixel position tried, and is not
    # loose by more than a factor 1.5 (measured: within 4%)
    assert measured.max() <= predicted
    assert predicted <= 1.5 * measured.max()


@pytest.mark.parametrize("sigma", [1.0, 1.2])
def test_well_sampled_psf_renders_within_a_tenth_of_a_percent_without_warning(sigma):
    bound, predicted = _predicted_error(sigma)
    assert predicted is None
    measured = _measured_flux_errors(bound, _fine_frame(), sigma, _central_positions())
    assert measured.max() < FLUX_ERROR_TOLERANCE


def test_undersampled_psf_on_its_own_grid_is_exact_and_silent():
    obs = _observation(0.4)
    frame = mp.Frame.from_observations([obs])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bound = obs.match(frame)
    measured = _measured_flux_errors(bound, frame, 0.4, _central_positions(2), box_size=15)
    # the point source's tapered box and the stamp's edges: 2e-7
    assert measured.max() < 1e-6


def test_undersampling_warning_names_the_observation_and_the_psf_width():
    obs = _observation(0.5)
    with pytest.warns(mp.MobsPplWarning) as caught:
        build_renderer(obs.frame, _fine_frame(), name="WFC3-IR")
    (message,) = [str(w.message) for w in caught]
    assert "'WFC3-IR'" in message
    # the pixel-integrated Gaussian's width: sqrt(0.5^2 + 1/12) = 0.577
    assert re.search(r"width 0\.5[78] of its pixels", message)
    assert re.search(r"up to [0-9.]+% near the observation's centre", message)


# -- observations that do not overlap ----------------------------------------------------


def _field(name, n=16, scale=0.1, crval=(150.0, 2.0), theta_deg=0.0, channel=None):
    t = np.deg2rad(theta_deg)
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = list(crval)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    w.wcs.cd = np.diag([-1.0, 1.0]) @ rot * scale / 3600.0
    w.wcs.crpix = [(n - 1) / 2.0 + 1, (n - 1) / 2.0 + 1]
    w.wcs.set()
    return mp.Observation(
        np.zeros((1, n, n)), weights=1.0, wcs=w, channels=[channel or name], name=name
    )


def test_overlap_fraction_of_shifted_and_rotated_squares():
    a = _field("a")
    assert mp.frame.overlap_fraction(a, _field("b")) == pytest.approx(1.0, abs=1e-9)
    # half a width east (RA larger: x smaller): half the area is shared
    dra = 0.8 / 3600 / np.cos(np.deg2rad(2.0))
    half = _field("b", crval=(150.0 + dra, 2.0))
    assert mp.frame.overlap_fraction(a, half) == pytest.approx(0.5, abs=1e-3)
    # a square and its 45-degree rotation about the centre share an octagon of area
    # (2 sqrt(2) - 2) s^2
    turned = _field("b", theta_deg=45.0)
    expected = 2 * np.sqrt(2) - 2
    assert mp.frame.overlap_fraction(a, turned) == pytest.approx(expected, abs=1e-3)
    assert mp.frame.overlap_fraction(a, _field("b", crval=(150.0, 3.0))) == 0.0


def test_frame_of_observations_a_degree_apart_is_refused_or_warned():
    a = _field("HST")
    b = _field("HSC", crval=(150.0, 3.0))
    with pytest.raises(ValueError, match="do not overlap") as info:
        mp.Frame.from_observations([a, b], coverage="intersection")
    message = str(info.value)
    assert "'HSC'" in message and "'HST'" in message
    assert re.search(r"3600 arcsec \(1 deg\)", message)
    # the union is still built (an existing contract), but not without a word
    with pytest.warns(UserWarning, match=r"share no sky.*3600 arcsec \(1 deg\)"):
        union = mp.Frame.from_observations([a, b], coverage="union")
    # a degree on a's tangent plane: 36000 tan(1 deg) / (1 deg in radians) px
    span = 36000 * np.tan(np.deg2rad(1.0)) / np.deg2rad(1.0) + 16
    assert union.shape[1] == pytest.approx(span, abs=1)


def test_observations_joined_by_a_chain_of_overlaps_are_accepted():
    # a and c are apart, but b overlaps both (two tiles and a wider image across them)
    a = _field("a", crval=(150.0, 2.0))
    c = _field("c", crval=(150.0, 2.0 + 2.0 / 3600))
    b = _field("b", n=20, crval=(150.0, 2.0 + 1.0 / 3600))
    assert mp.frame.overlap_fraction(a, c) == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frame = mp.Frame.from_observations([a, b, c], coverage="union")
    assert frame.n_channels == 3


def test_frame_larger_than_max_pixels_is_refused():
    a = _field("a", n=40)
    with pytest.raises(ValueError, match=r"40 x 40 = 1\.6e\+03 pixels.*max_pixels=1e\+03"):
        mp.Frame.from_observations([a], max_pixels=1000)
    assert mp.Frame.from_observations([a], max_pixels=1600).shape == (1, 40, 40)
    assert mp.frame.MAX_FRAME_PIXELS == 10**8


# -- a source box beyond the frame edge -----------------------------------------------------


def _edge_frame():
    return mp.Frame((2, 32, 40), channels=["g", "r"], psf=mp.psf.gaussian_psf(1.0))


def _edge_sources():
    rng = np.random.default_rng(3)
    morphology = np.clip(rng.uniform(0.05, 0.95, (15, 15)), 1e-6, 1 - 1e-6)
    return [
        # centres 2 pixels from a corner: most of each box lies outside the frame
        mp.GaussianSource([2.0, 37.6], [3.0, 5.0], radius=3.0),
        mp.Source([30.0, 1.0], [2.0, 1.5], morphology, prior="uniform"),
        mp.PointSource([0.3, 20.4], [4.0, 1.0], box_size=15),
        # wholly inside: its reported flux is its spectrum, unchanged
        mp.GaussianSource([16.0, 20.0], [1.0, 2.0], radius=1.5),
    ]


def test_reported_flux_of_a_source_cut_by_the_frame_is_the_rendered_flux():
    frame = _edge_frame()
    sources = _edge_sources()
    scene = mp.Scene(frame, sources)
    reported = np.asarray(scene.source_fluxes())
    for i, source in enumerate(sources):
        # an independent sum: the frame with this source alone, before the model PSF
        alone = np.asarray(scene.replace_sources([source]).render(convolve=False))
        np.testing.assert_allclose(reported[i], alone.sum(axis=(1, 2)), rtol=1e-10)
        np.testing.assert_allclose(mp.measure.flux(source, frame), reported[i], rtol=0)
    # the cut sources render far from what their whole boxes hold (the point source
    # more: the frame cuts the negative lobes of its band-limited delta)
    whole = np.array([np.asarray(s.flux()) for s in sources])
    assert np.all(np.abs(reported[:3] / whole[:3] - 1) > 0.1)
    # a source inside the frame: exactly its spectrum, as before
    assert np.array_equal(reported[3], np.asarray(sources[3].spectrum))
    np.testing.assert_array_equal(mp.measure.flux(sources[3]), np.asarray(sources[3].flux()))


def test_galaxy_fluxes_of_a_grouped_scene_sum_the_rendered_components():
    frame = _edge_frame()
    sources = _edge_sources()[:2]
    scene = mp.Scene(frame, sources, groups=[0, 0])
    total = np.asarray(scene.render(convolve=False)).sum(axis=(1, 2))
    np.testing.assert_allclose(np.asarray(scene.fluxes())[0], total, rtol=1e-10)


def test_a_shift_on_an_observation_that_shares_no_sky_is_refused():
    # two 16 x 16 fields at 0.1"/px whose centres are 2.5" apart in Dec: no shared sky
    a = _field("A")
    b = _field("B", crval=(150.0, 2.0 + 2.5 / 3600))
    assert mp.frame.overlap_fraction(a, b) == 0.0
    with pytest.warns(UserWarning, match="share no sky"):
        frame = mp.Frame.from_observations([a, b], coverage="union")
    source = mp.PointSource((8.0, 8.0), spectrum=[1.0, 1.0], box_size=5)
    scene = mp.Scene(frame, [source])
    with pytest.raises(ValueError, match=r"'B' shares no sky with the other observations"):
        mp.SceneModel(scene, [a, b], shifts={"B": 0.1 * u.arcsec})
    # the same fields overlapping by half a width: accepted
    c = _field("C", crval=(150.0, 2.0 + 0.8 / 3600))
    frame = mp.Frame.from_observations([a, c], coverage="union")
    scene = mp.Scene(frame, [mp.PointSource((8.0, 8.0), spectrum=[1.0, 1.0], box_size=5)])
    model = mp.SceneModel(scene, [a, c], shifts={"C": 0.1 * u.arcsec})
    assert model.shift_names == ("C",)
