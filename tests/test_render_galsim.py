"""The forward model against GalSim, an independent renderer.

A galaxy is drawn by GalSim on a fine model grid (0.03"/px) convolved with a narrow
model PSF; ``Observation.render`` takes it into a coarse HSC-like grid (0.168"/px,
Moffat PSF), aligned, offset by a fraction of a pixel, or rotated. The reference is
GalSim drawing galaxy (x) Moffat directly on the coarse grid with the same geometry.

Geometry: both grids share the tangent point; a grid with pixel scale ``s``, rotation
``theta`` and centre ``(x0, y0)`` (0-based) maps pixels to tangent-plane arcsec as
``(u, v) = s R(theta) (x - x0, y - y0)``. GalSim gets the same affine map, and draws
the profile centred at ``(x0, y0)`` through ``offset=``.
"""

from __future__ import annotations

import functools

import galsim
import numpy as np
import pytest
from astropy.wcs import WCS

import mobs_ppl as mp

FINE_SCALE = 0.03  # arcsec per model pixel
COARSE_SCALE = 0.168  # arcsec per observed pixel
FINE_N = 300
COARSE_N = 36
NARROW_SIGMA = 0.8 * FINE_SCALE  # model PSF, arcsec
MOFFAT_BETA = 3.5
MOFFAT_TRUNC = 2.4  # arcsec: fits the 31 x 31 coarse PSF stamp
PSF_N = 31

PEAK_TOLERANCE = 1e-3  # max |residual| / peak of the reference
FLUX_TOLERANCE = 1e-4  # |flux ratio - 1|

GSPARAMS = galsim.GSParams(
    folding_threshold=1e-4, maxk_threshold=1e-6, kvalue_accuracy=1e-7, xvalue_accuracy=1e-7
)

# elliptical, so that a wrong orientation of the rotated grid cannot go unnoticed
GALAXIES = {
    "gaussian": lambda: galsim.Gaussian(sigma=0.25, flux=3.0).shear(g1=0.2, g2=-0.1),
    "sersic1": lambda: galsim.Sersic(n=1, half_light_radius=0.35, trunc=1.8, flux=2.0).shear(
        g1=-0.1, g2=0.25
    ),
    "sersic4": lambda: galsim.Sersic(n=4, half_light_radius=0.3, trunc=1.8, flux=5.0).shear(
        g1=0.15, g2=0.1
    ),
}

GEOMETRIES = {
    # name: (rotation in degrees, (offset x, offset y) in coarse pixels)
    "aligned": (0.0, (0.0, 0.0)),
    "offset": (0.0, (0.3, -0.2)),
    "rotated": (30.0, (0.3, -0.2)),
}


def _jacobian(scale, theta_deg):
    """``J`` with ``(u, v) = J (dx, dy)``: arcsec per pixel, rotated by ``theta``."""
    t = np.deg2rad(theta_deg)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    return scale * rot


def _astropy_wcs(jac, n, offset=(0.0, 0.0)):
    """TAN WCS whose tangent point sits at pixel ``centre + offset`` (0-based, x first)."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.1, 2.2]
    w.wcs.cd = np.diag([-1.0, 1.0]) @ jac / 3600.0
    centre = (n - 1) / 2.0
    w.wcs.crpix = [centre + offset[0] + 1, centre + offset[1] + 1]
    w.wcs.set()
    return w


def _galsim_wcs(jac, n, offset=(0.0, 0.0)):
    centre = (n - 1) / 2.0
    return galsim.AffineTransform(
        *jac.ravel(), origin=galsim.PositionD(centre + offset[0] + 1, centre + offset[1] + 1)
    )


def _draw(profile, n, jac, offset=(0.0, 0.0), draw_offset=None):
    """GalSim image of ``profile`` centred at ``centre + offset``, as a float64 array."""
    image = galsim.ImageD(n, n, wcs=_galsim_wcs(jac, n, offset))
    draw_offset = offset if draw_offset is None else draw_offset
    profile.drawImage(image=image, offset=galsim.PositionD(*draw_offset))
    return image.array.copy()


def _narrow_psf_profile(sigma=NARROW_SIGMA):
    return galsim.Gaussian(sigma=sigma, gsparams=GSPARAMS)


def _moffat_profile(fwhm=0.7):
    return galsim.Moffat(beta=MOFFAT_BETA, fwhm=fwhm, trunc=MOFFAT_TRUNC, gsparams=GSPARAMS)


@functools.cache
def _model_image(name, sigma=NARROW_SIGMA):
    """Galaxy (x) narrow PSF on the fine model grid (cached: the slow GalSim step)."""
    galaxy = GALAXIES[name]().withGSParams(GSPARAMS)
    profile = galsim.Convolve(galaxy, _narrow_psf_profile(sigma))
    return _draw(profile, FINE_N, _jacobian(FINE_SCALE, 0.0))


@functools.cache
def _narrow_psf_image(sigma=NARROW_SIGMA):
    return _narrow_psf_profile(sigma).drawImage(nx=41, ny=41, scale=FINE_SCALE).array.copy()


def _moffat_image(jac, fwhm=0.7):
    wcs = galsim.JacobianWCS(*jac.ravel())
    return _moffat_profile(fwhm).drawImage(nx=PSF_N, ny=PSF_N, wcs=wcs).array.copy()


def _fine_frame(channels=("a",), psf=None):
    psf = _narrow_psf_image() if psf is None else psf
    return mp.Frame(
        (len(channels), FINE_N, FINE_N),
        wcs=_astropy_wcs(_jacobian(FINE_SCALE, 0.0), FINE_N),
        channels=list(channels),
        psf=psf,
    )


def _compare(rendered, target):
    """Max |residual| / peak of the target, and |flux ratio - 1|."""
    rendered = np.asarray(rendered)
    peak = np.abs(target).max()
    residual = float(np.abs(rendered - target).max() / peak)
    flux = float(abs(rendered.sum() / target.sum() - 1))
    return residual, flux


def _report(record_property, label, residual, flux):
    print(f"\n{label}: max|res|/peak = {residual:.2e}, |flux ratio - 1| = {flux:.2e}")
    record_property(f"{label}_residual", residual)
    record_property(f"{label}_flux", flux)


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
@pytest.mark.parametrize("galaxy", list(GALAXIES))
def test_render_matches_galsim(galaxy, geometry, record_property):
    theta, offset = GEOMETRIES[geometry]
    jac = _jacobian(COARSE_SCALE, theta)
    target = _draw(
        galsim.Convolve(GALAXIES[galaxy]().withGSParams(GSPARAMS), _moffat_profile()),
        COARSE_N,
        jac,
        offset,
    )
    frame = _fine_frame()
    obs = mp.Observation(
        target,
        weights=1.0,
        psf=_moffat_image(jac),
        wcs=_astropy_wcs(jac, COARSE_N, offset),
        channels=["a"],
    ).match(frame)
    assert float(np.min(obs.renderer.coverage)) == 1.0  # the whole stamp is modelled
    rendered = obs.render(_model_image(galaxy)[None])[0]
    residual, flux = _compare(rendered, target)
    _report(record_property, f"{galaxy}-{geometry}", residual, flux)
    assert residual < PEAK_TOLERANCE
    assert flux < FLUX_TOLERANCE


def test_render_multichannel_selects_channels_by_name(record_property):
    """Three observed bands, each with its own PSF, from a four-band model in another order."""
    model_channels = ("i", "z", "g", "r")
    model_sigma = {"i": 0.8, "z": 1.0, "g": 0.9, "r": 0.7}  # fine pixels
    model_galaxy = {"i": "sersic4", "z": "gaussian", "g": "gaussian", "r": "sersic1"}
    obs_channels = ("r", "g", "i")
    obs_fwhm = {"r": 0.8, "g": 0.75, "i": 0.6}  # arcsec
    theta, offset = GEOMETRIES["rotated"]
    jac = _jacobian(COARSE_SCALE, theta)

    model = np.stack(
        [_model_image(model_galaxy[c], model_sigma[c] * FINE_SCALE) for c in model_channels]
    )
    frame = _fine_frame(
        model_channels,
        psf=np.stack([_narrow_psf_image(model_sigma[c] * FINE_SCALE) for c in model_channels]),
    )
    targets = np.stack(
        [
            _draw(
                galsim.Convolve(
                    GALAXIES[model_galaxy[c]]().withGSParams(GSPARAMS), _moffat_profile(obs_fwhm[c])
                ),
                COARSE_N,
                jac,
                offset,
            )
            for c in obs_channels
        ]
    )
    obs = mp.Observation(
        targets,
        weights=1.0,
        psf=np.stack([_moffat_image(jac, obs_fwhm[c]) for c in obs_channels]),
        wcs=_astropy_wcs(jac, COARSE_N, offset),
        channels=list(obs_channels),
    ).match(frame)
    rendered = np.asarray(obs.render(model))
    assert rendered.shape == (3, COARSE_N, COARSE_N)
    for c, name in enumerate(obs_channels):
        residual, flux = _compare(rendered[c], targets[c])
        _report(record_property, f"multichannel-{name}", residual, flux)
        assert residual < PEAK_TOLERANCE
        assert flux < FLUX_TOLERANCE


@pytest.mark.parametrize("geometry", ["aligned", "rotated"])
def test_shift_matches_galsim_offset(geometry, record_property):
    """``shift=(dy, dx)`` in observed pixels is GalSim's ``offset=(dx, dy)`` on top of the WCS."""
    theta, offset = GEOMETRIES[geometry]
    dy, dx = 0.37, -0.61
    jac = _jacobian(COARSE_SCALE, theta)
    galaxy = GALAXIES["sersic4"]().withGSParams(GSPARAMS)
    target = _draw(
        galsim.Convolve(galaxy, _moffat_profile()),
        COARSE_N,
        jac,
        offset,
        draw_offset=(offset[0] + dx, offset[1] + dy),
    )
    obs = mp.Observation(
        target,
        weights=1.0,
        psf=_moffat_image(jac),
        wcs=_astropy_wcs(jac, COARSE_N, offset),
        channels=["a"],
    ).match(_fine_frame())
    model = _model_image("sersic4")[None]
    rendered = obs.render(model, shift=(dy, dx))[0]
    residual, flux = _compare(rendered, target)
    _report(record_property, f"shift-{geometry}", residual, flux)
    assert residual < PEAK_TOLERANCE
    assert flux < FLUX_TOLERANCE
    # and the unshifted rendering is far from it: the shift is really applied
    unshifted, _ = _compare(obs.render(model)[0], target)
    assert unshifted > 100 * PEAK_TOLERANCE


def _centroid(image):
    image = np.asarray(image)
    yy, xx = np.indices(image.shape, dtype=float)
    total = image.sum()
    return np.array([(yy * image).sum() / total, (xx * image).sum() / total])


@pytest.mark.parametrize("geometry", ["aligned", "rotated"])
def test_shift_moves_a_point_source_by_rows_and_columns(geometry):
    """Documented convention: ``shift=(dy, dx)`` moves sources by +dy rows, +dx columns."""
    theta, offset = GEOMETRIES[geometry]
    jac = _jacobian(COARSE_SCALE, theta)
    obs_wcs = _astropy_wcs(jac, COARSE_N, offset)
    frame = _fine_frame()
    # a point source at model pixel (150, 155): the model PSF image centred there
    source = (150, 155)
    model = np.zeros(frame.shape)
    model[0, source[0] - 20 : source[0] + 21, source[1] - 20 : source[1] + 21] = _narrow_psf_image()
    obs = mp.Observation(
        np.zeros((1, COARSE_N, COARSE_N)),
        weights=1.0,
        psf=_moffat_image(jac),
        wcs=obs_wcs,
        channels=["a"],
    ).match(frame)

    # without a shift the source sits where the WCS puts it
    sky = frame.pixel_to_sky(*source)
    expected = np.array(mp.Frame((1, COARSE_N, COARSE_N), wcs=obs_wcs).sky_to_pixel(sky))
    base = _centroid(obs.render(model)[0])
    np.testing.assert_allclose(base, expected, atol=1e-4)
    for shift in [(0.5, 0.0), (0.0, -0.7), (1.3, -1.1)]:
        moved = _centroid(obs.render(model, shift=shift)[0])
        np.testing.assert_allclose(moved - base, shift, atol=1e-4)
