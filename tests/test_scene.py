"""The ``Scene``: placement of sources, validation, PSF convolution, jit and scaling."""

from __future__ import annotations

import astropy.units as u
import equinox as eqx
import jax
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.wcs import WCS
from numpyro.infer.util import log_density
from scipy.signal import fftconvolve

import mobs_ppl as mp

SHAPE = (3, 40, 46)
SPECTRUM = [1.0, 2.0, 0.5]


def _tan_wcs(scale_arcsec, n_y, n_x, crval=(150.1, 2.2)):
    """North-up TAN WCS with the tangent point at the grid centre."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = list(crval)
    w.wcs.crpix = [(n_x + 1) / 2.0, (n_y + 1) / 2.0]
    w.wcs.cdelt = [-scale_arcsec / 3600.0, scale_arcsec / 3600.0]
    w.wcs.cunit = ["deg", "deg"]
    w.wcs.set()
    return w


def _frame(psf=None, wcs=True, shape=SHAPE, no_psf=False):
    kernel = None if no_psf else (mp.psf.gaussian_psf(1.1) if psf is None else psf)
    return mp.Frame(shape, wcs=_tan_wcs(0.05, *shape[1:]) if wcs else None, psf=kernel)


def _sources(rng):
    morphology = rng.uniform(0.05, 0.95, size=(7, 9))
    return [
        mp.Source((10.2, 12.7), SPECTRUM, morphology),
        mp.GaussianSource((25.4, 30.1), [0.3, 1.0, 2.0], 2.0, (0.1, 0.2)),
        mp.SersicSource((20.0, 20.6), [2.0, 1.0, 1.0], 2.5, 1.5, (-0.2, 0.05)),
        mp.PointSource((30.3, 10.8), [4.0, 3.0, 2.0], box_size=11),
    ]


def _placed(shape, source):
    """Independent placement: paste the whole box on a padded canvas, then crop it."""
    channels, height, width = shape
    h, w = source.box_shape
    pad = max(h, w)
    canvas = np.zeros((channels, height + 2 * pad, width + 2 * pad))
    y0, x0 = source.origin
    box = np.asarray(source.spectrum)[:, None, None] * np.asarray(source.image())[None]
    canvas[:, y0 + pad : y0 + pad + h, x0 + pad : x0 + pad + w] += box
    return canvas[:, pad : pad + height, pad : pad + width]


# -- rendering -----------------------------------------------------------------------------


def test_render_is_the_sum_of_the_sources(rng):
    frame = _frame()
    sources = _sources(rng)
    scene = mp.Scene(frame, sources)
    expected = sum(_placed(frame.shape, s) for s in scene.sources)
    np.testing.assert_allclose(np.asarray(scene.render(convolve=False)), expected, atol=1e-14)
    # linear: the convolved scene is the sum of the single-source scenes
    singles = sum(np.asarray(mp.Scene(frame, [s]).render()) for s in sources)
    np.testing.assert_allclose(np.asarray(scene.render()), singles, atol=1e-13)


def test_box_centred_on_the_nearest_pixel(rng):
    source = mp.Source((10.4, 12.6), SPECTRUM, rng.uniform(0.1, 0.9, size=(7, 9)))
    assert source.origin == (10 - 3, 13 - 4)


def test_empty_scene_renders_zeros():
    scene = mp.Scene(_frame())
    assert len(scene) == 0
    np.testing.assert_array_equal(np.asarray(scene.render()), np.zeros(SHAPE))


@pytest.mark.parametrize(
    "center", [(0.2, 0.1), (39.4, 45.4), (-0.49, 20.0), (20.0, 45.49), (0.0, 45.0)]
)
def test_box_partly_outside_the_frame_is_clipped(center, rng):
    frame = _frame()
    sources = [
        mp.GaussianSource(center, SPECTRUM, 3.0, (0.2, 0.1)),
        mp.Source(center, SPECTRUM, rng.uniform(0.1, 0.9, size=(9, 5))),
    ]
    scene = mp.Scene(frame, sources)
    image = np.asarray(scene.render(convolve=False))
    expected = sum(_placed(frame.shape, s) for s in scene.sources)
    np.testing.assert_allclose(image, expected, atol=1e-14)
    assert np.all(np.isfinite(np.asarray(scene.render())))
    # the parts outside the frame are dropped, not folded back in
    assert image[0].sum() < float(scene.fluxes()[:, 0].sum())


def test_no_psf_means_no_convolution(rng):
    scene = mp.Scene(_frame(no_psf=True), _sources(rng))
    np.testing.assert_array_equal(np.asarray(scene.render()), np.asarray(scene.render(False)))


# -- placement from the sky ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["source", "gaussian", "sersic", "point"])
def test_skycoord_center_goes_through_the_frame_wcs(kind, rng):
    frame = _frame()
    coord = frame.pixel_to_sky(17.3, 22.85)
    y, x = frame.sky_to_pixel(coord)
    morphology = rng.uniform(0.1, 0.9, size=(5, 5))
    make = {
        "source": lambda c: mp.Source(c, SPECTRUM, morphology),
        "gaussian": lambda c: mp.GaussianSource(c, SPECTRUM, 2.0, (0.1, -0.3), oversample=4),
        "sersic": lambda c: mp.SersicSource(c, SPECTRUM, 2.0, 2.0, (0.1, -0.3), box_size=21),
        "point": lambda c: mp.PointSource(c, SPECTRUM, box_size=9),
    }[kind]
    from_sky = mp.Scene(frame, [make(coord)])
    from_pixels = mp.Scene(frame, [make((float(y), float(x)))])
    placed = from_sky.sources[0]
    np.testing.assert_allclose(np.asarray(placed.center), [y, x], rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.asarray(placed.center), [17.3, 22.85], atol=1e-8)
    assert placed.origin == from_pixels.sources[0].origin
    assert placed.box_shape == from_pixels.sources[0].box_shape
    for name, value in from_pixels.sources[0].parameters().items():
        np.testing.assert_allclose(np.asarray(placed.parameters()[name]), value, atol=1e-12)
    np.testing.assert_allclose(
        np.asarray(from_sky.render()), np.asarray(from_pixels.render()), atol=1e-12
    )


def test_skycoord_center_needs_a_frame_wcs():
    coord = SkyCoord(150.1 * u.deg, 2.2 * u.deg)
    with pytest.raises(ValueError, match="no WCS"):
        mp.Scene(_frame(wcs=False), [mp.PointSource(coord, SPECTRUM)])


# -- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize("center", [(-0.6, 10.0), (40.0, 10.0), (10.0, 45.5), (10.0, -3.0)])
def test_center_outside_the_frame_raises(center):
    with pytest.raises(ValueError, match="lies outside the model frame of 40 x 46"):
        mp.Scene(_frame(), [mp.GaussianSource(center, SPECTRUM, 2.0)])


def test_skycoord_outside_the_frame_raises():
    frame = _frame()
    coord = frame.pixel_to_sky(-20.0, 10.0)
    with pytest.raises(ValueError, match="lies outside the model frame"):
        mp.Scene(frame, [mp.PointSource(coord, SPECTRUM)])


@pytest.mark.parametrize("spectrum", [[1.0], [1.0, 2.0], [1.0, 2.0, 3.0, 4.0]])
def test_spectrum_length_must_match_the_channels(spectrum):
    with pytest.raises(ValueError, match=r"spectrum values; the frame has 3 channels"):
        mp.Scene(_frame(), [mp.PointSource((10.0, 10.0), spectrum)])


@pytest.mark.parametrize("thing", [None, 3.0, "source", np.ones((5, 5)), object()])
def test_non_sources_raise_type_error(thing):
    with pytest.raises(TypeError, match="source 1 is a .*, not a source"):
        mp.Scene(_frame(), [mp.PointSource((10.0, 10.0), SPECTRUM), thing])


def test_frame_must_be_a_frame():
    with pytest.raises(TypeError, match="frame must be a Frame"):
        mp.Scene(np.zeros(SHAPE), [])


# -- PSF convolution -----------------------------------------------------------------------


def _asymmetric_psf(rng, channels, h, w):
    """Odd-sized, lopsided kernels peaking at the array centre (catches a flipped kernel)."""
    yy, xx = np.indices((h, w), dtype=float)
    yy -= (h - 1) / 2
    xx -= (w - 1) / 2
    out = []
    for c in range(channels):
        image = np.exp(-0.5 * ((yy / 1.3) ** 2 + (xx / (1.0 + 0.3 * c)) ** 2 + 0.4 * xx * yy))
        image += 0.05 * rng.uniform(size=(h, w)) * (xx > 0)
        image[(h - 1) // 2, (w - 1) // 2] += 0.5
        out.append(image / image.sum())
    return np.stack(out)


@pytest.mark.parametrize("psf_kind", ["shared", "per-channel", "wide"])
def test_convolution_equals_scipy_fftconvolve(psf_kind, rng):
    if psf_kind == "shared":
        psf = mp.psf.gaussian_psf(1.4)[None]
    elif psf_kind == "per-channel":
        psf = _asymmetric_psf(rng, SHAPE[0], 9, 13)
    else:  # larger than the frame along x
        psf = _asymmetric_psf(rng, SHAPE[0], 11, 51)
    frame = _frame(psf=psf)
    scene = mp.Scene(frame, _sources(rng))
    plain = np.asarray(scene.render(convolve=False))
    kernels = np.asarray(frame.psf)
    expected = np.stack(
        [
            fftconvolve(plain[c], kernels[c if len(kernels) > 1 else 0], mode="same")
            for c in range(SHAPE[0])
        ]
    )
    np.testing.assert_allclose(np.asarray(scene.render()), expected, rtol=0, atol=1e-10)


def test_even_sized_psf_keeps_the_centroid():
    """An even-sized PSF is centred on its geometric centre (h - 1) / 2: no half-pixel
    shift, and a point convolved with a symmetric PSF stays symmetric about its pixel."""
    yy, xx = np.indices((10, 10), dtype=float) - 4.5
    psf = np.exp(-(yy**2 + xx**2) / (2 * 1.2**2))
    frame = mp.Frame((1, 40, 40), psf=psf / psf.sum())
    scene = mp.Scene(frame, [mp.Source((20.0, 21.0), [1.0], np.full((1, 1), 0.5))])
    image = np.asarray(scene.render())[0]
    # centroid in a window symmetric about the source: the half-pixel phase rings weakly
    # across the whole padded FFT grid (the truncated kernel is not band-limited), and the
    # frame crops that ringing asymmetrically (measured 2e-4 px on the full frame; the
    # bug moved it by 0.5 px)
    window = image[5:36, 6:37]
    yy, xx = np.indices(window.shape, dtype=float)
    centroid = [(window * yy).sum() / window.sum() + 5, (window * xx).sum() / window.sum() + 6]
    np.testing.assert_allclose(centroid, [20.0, 21.0], atol=1e-9)
    full = np.indices(image.shape, dtype=float)
    full_centroid = [(image * full[0]).sum() / image.sum(), (image * full[1]).sum() / image.sum()]
    np.testing.assert_allclose(full_centroid, [20.0, 21.0], atol=1e-3)
    core = image[12:29, 13:30]
    np.testing.assert_allclose(core, core[::-1, ::-1], rtol=0, atol=1e-12 * image.max())
    np.testing.assert_allclose(core, core.T, rtol=0, atol=1e-12 * image.max())


def test_even_sized_psf_equals_fftconvolve_of_the_half_pixel_shifted_grid():
    """Independent check: a separable even PSF on the frame grid equals scipy's
    convolution with the PSF resampled half a pixel over (odd size, centred), when the
    PSF is a band-limited function (here a wide Gaussian, whose aliasing is ~1e-15)."""
    sigma = 2.0
    even = np.exp(-0.5 * ((np.arange(24) - 11.5) / sigma) ** 2)
    odd = np.exp(-0.5 * ((np.arange(25) - 12.0) / sigma) ** 2)
    psf = np.outer(even, even)
    frame = mp.Frame((1, 64, 64), psf=psf / psf.sum())
    morphology = np.full((1, 1), 0.5)
    scene = mp.Scene(frame, [mp.Source((31.0, 33.0), [1.0], morphology)])
    image = np.asarray(scene.render())[0]
    plain = np.asarray(scene.render(convolve=False))[0]
    reference = fftconvolve(plain, np.outer(odd, odd) / psf.sum(), mode="same")
    np.testing.assert_allclose(image, reference, rtol=0, atol=1e-6 * reference.max())


def test_convolution_conserves_flux_away_from_the_edges(rng):
    frame = _frame()
    scene = mp.Scene(
        frame,
        [
            mp.GaussianSource((20.3, 22.8), SPECTRUM, 2.0, (0.3, 0.1)),
            mp.Source((15.0, 25.0), SPECTRUM, rng.uniform(0.1, 0.9, size=(5, 5))),
        ],
    )
    plain = np.asarray(scene.render(convolve=False)).sum(axis=(1, 2))
    convolved = np.asarray(scene.render()).sum(axis=(1, 2))
    np.testing.assert_allclose(convolved, plain, rtol=1e-12)
    # a box holds its morphology's sum (the Gaussian's: the light enclosed, 1 - 5e-9)
    in_boxes = sum(
        np.asarray(s.spectrum) * float(np.sum(np.asarray(s.image()))) for s in scene.sources
    )
    np.testing.assert_allclose(plain, in_boxes, rtol=1e-12)
    np.testing.assert_allclose(plain, np.asarray(scene.fluxes()).sum(axis=0), rtol=1e-7)


# -- fluxes and jit ------------------------------------------------------------------------


def test_fluxes_shape_and_values(rng):
    sources = _sources(rng)
    scene = mp.Scene(_frame(), sources)
    fluxes = np.asarray(scene.fluxes())
    assert fluxes.shape == (len(sources), SHAPE[0])
    morphology = np.asarray(sources[0].morphology)
    np.testing.assert_allclose(fluxes[0], np.asarray(SPECTRUM) * morphology.sum(), rtol=1e-12)
    for i in (1, 2, 3):  # unit-flux profiles: the flux is the spectrum
        np.testing.assert_allclose(fluxes[i], np.asarray(sources[i].spectrum), rtol=1e-12)
    one = mp.Scene(_frame(), sources[:1])
    assert np.asarray(one.fluxes()).shape == (1, SHAPE[0])


def test_jit_render_equals_eager(rng):
    scene = mp.Scene(_frame(), _sources(rng))
    convolved, plain = jax.jit(lambda s: (s.render(), s.render(convolve=False)))(scene)
    np.testing.assert_allclose(np.asarray(convolved), np.asarray(scene.render()), atol=1e-13)
    np.testing.assert_allclose(np.asarray(plain), np.asarray(scene.render(False)), atol=1e-13)
    # equinox's filtering jit traces the same module (static fields hashed, arrays traced)
    filtered = eqx.filter_jit(lambda s: s.render(convolve=False))(scene)
    np.testing.assert_allclose(np.asarray(filtered), np.asarray(plain), rtol=0, atol=1e-13)


# -- scaling of the traced model with the number of sources --------------------------------

HST_SCALE, HSC_SCALE = 0.03, 0.168


def _observations(n_model=48, n_hsc=8):
    hst = mp.Observation(
        np.zeros((1, n_model, n_model)),
        weights=1.0,
        psf=mp.psf.gaussian_psf(1.0),
        wcs=_tan_wcs(HST_SCALE, n_model, n_model),
        channels=["F814W"],
        name="HST",
    )
    hsc = mp.Observation(
        np.zeros((5, n_hsc, n_hsc)),
        weights=1.0,
        psf=mp.psf.gaussian_psf(1.2),
        wcs=_tan_wcs(HSC_SCALE, n_hsc, n_hsc),
        channels=list("grizy"),
        name="HSC",
    )
    frame = mp.Frame.from_observations([hst, hsc])
    return frame, [hst.match(frame), hsc.match(frame)]


def _count_equations(jaxpr) -> int:
    """Equations of a jaxpr, including those of every nested jaxpr (pjit, jvp, loops)."""
    total = 0
    for eqn in jaxpr.eqns:
        total += 1
        for value in eqn.params.values():
            for item in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(item, "jaxpr", item)
                if hasattr(inner, "eqns"):
                    total += _count_equations(inner)
    return total


def _gradient_equations(frame, observations, n_sources, kind):
    rng = np.random.default_rng(n_sources)
    sources = []
    for _ in range(n_sources):
        center = rng.uniform(8, frame.shape[1] - 8, size=2)
        spectrum = rng.uniform(0.5, 2.0, size=frame.n_channels)
        if kind == "gaussian":
            sources.append(mp.GaussianSource(center, spectrum, 1.5, (0.1, 0.0)))
        else:
            sources.append(mp.Source(center, spectrum, rng.uniform(0.1, 0.9, size=(7, 7))))
    model = mp.SceneModel(mp.Scene(frame, sources), observations)
    params = model.init_values()

    def loss(p):
        return -log_density(model, (), {}, p)[0]

    return _count_equations(jax.make_jaxpr(jax.grad(loss))(params).jaxpr)


@pytest.mark.parametrize("kind", ["gaussian", "source"])
def test_traced_gradient_grows_linearly_with_sources(kind):
    """Equations of jaxpr(grad(loss)) are a + b N: no per-pair work between sources."""
    frame, observations = _observations()
    counts = {n: _gradient_equations(frame, observations, n, kind) for n in (2, 4, 8)}
    per_source = (counts[4] - counts[2]) / 2
    assert per_source > 0
    assert counts[8] - counts[4] <= 1.05 * 4 * per_source  # constant cost per source
    assert counts[8] < 4 * counts[2]  # 4x the sources, less than 4x the program
