"""Frames: model frames from observations, relative Jacobians, channels and model PSF.

Expected values are computed here from matrices written out by hand (CD matrices, a
gnomonic de-projection, rotation matrices), not with the package's own helpers.
"""

import copy

import astropy.units as u
import equinox as eqx
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS

import mobs_ppl as mp
from mobs_ppl import Frame, Observation, relative_jacobian

CRVAL = (150.1, 2.2)


# -- hand-made WCS ---------------------------------------------------------------------


def _cd_matrix(scale_arcsec, angle_deg=0.0, flip=False):
    """CD matrix (FITS order: rows are (RA, Dec) intermediate coordinates, columns (x, y)).

    ``P @ R(angle)`` times the scale in degrees, where ``P = diag(-1, 1)`` (east to the
    left, the usual parity) or the identity when ``flip`` (east to the right), and
    ``R`` is the rotation matrix ``[[cos, -sin], [sin, cos]]`` acting on ``(x, y)``.
    """
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    parity = np.diag([1.0 if flip else -1.0, 1.0])
    return scale_arcsec / 3600.0 * parity @ rot


def _wcs(cd, crpix, style="cd", crval=CRVAL):
    """TAN WCS with reference pixel ``crpix`` (1-based FITS, (x, y)) written in ``style``.

    ``"cd"``: CDi_j keywords; ``"pc"``: PCi_j with CDELTi; ``"cdelt"``: CDELTi alone,
    only for diagonal matrices.
    """
    cd = np.asarray(cd, float)
    h = fits.Header()
    h["NAXIS"] = 2
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CUNIT1"], h["CUNIT2"] = "deg", "deg"
    h["CRVAL1"], h["CRVAL2"] = crval
    h["CRPIX1"], h["CRPIX2"] = crpix
    h["RADESYS"] = "ICRS"
    if style == "cd":
        for i in range(2):
            for j in range(2):
                h[f"CD{i + 1}_{j + 1}"] = cd[i, j]
    elif style == "pc":
        scale = np.sqrt(abs(np.linalg.det(cd)))
        cdelt = np.array([-scale, scale])
        pc = cd / cdelt[:, None]
        h["CDELT1"], h["CDELT2"] = cdelt
        for i in range(2):
            for j in range(2):
                h[f"PC{i + 1}_{j + 1}"] = pc[i, j]
    elif style == "cdelt":
        assert cd[0, 1] == 0 and cd[1, 0] == 0, "CDELT alone cannot describe a rotation"
        h["CDELT1"], h["CDELT2"] = cd[0, 0], cd[1, 1]
    else:
        raise AssertionError(style)
    return WCS(h)


def _pixel_map(cd_from, crpix_from, cd_to, crpix_to):
    """Affine map between the 0-based (y, x) pixels of two TAN grids on one tangent point.

    Both grids project onto the same tangent plane, so pixel -> pixel is exactly affine:
    ``p_to = CD_to^-1 CD_from (p_from + 1 - crpix_from) + crpix_to - 1`` in (x, y).
    Returns ``f(y, x) -> (y, x)`` and the 2x2 matrix in (y, x) order.
    """
    m_xy = np.linalg.solve(cd_to, cd_from)
    swap = np.array([[0.0, 1.0], [1.0, 0.0]])
    m_yx = swap @ m_xy @ swap

    def f(y, x):
        p = np.stack([np.asarray(x, float), np.asarray(y, float)])
        q = m_xy @ (p + 1 - np.asarray(crpix_from, float)[:, None]) + np.asarray(crpix_to)[:, None]
        q = q - 1
        return q[1], q[0]

    return f, m_yx


def _deproject(cd, crpix, y, x, crval=CRVAL):
    """(RA, Dec) in degrees of 0-based pixel (y, x): CD matrix, then inverse gnomonic."""
    p = np.stack([np.asarray(x, float), np.asarray(y, float)])
    xi, eta = np.deg2rad(cd @ (p + 1 - np.asarray(crpix, float)[:, None]))
    ra0, dec0 = np.deg2rad(crval)
    denom = np.cos(dec0) - eta * np.sin(dec0)
    ra = ra0 + np.arctan2(xi, denom)
    dec = np.arctan2(np.sin(dec0) + eta * np.cos(dec0), np.hypot(xi, denom))
    return np.rad2deg(ra), np.rad2deg(dec)


def _corners(h, w):
    """The four outer pixel corners (y, x) of an h x w grid."""
    return np.array([-0.5, -0.5, h - 0.5, h - 0.5]), np.array([-0.5, w - 0.5, -0.5, w - 0.5])


def _obs(shape, wcs, channels, psf=None):
    return Observation(np.zeros(shape), weights=1.0, wcs=wcs, channels=channels, psf=psf)


# -- CD / PC+CDELT / CDELT give the same frame -------------------------------------------

GRIDS = {
    # name: (scale, angle, flip, styles that can write it)
    "north-up": (0.2, 0.0, False, ("cd", "pc", "cdelt")),
    "x-flipped": (0.2, 0.0, True, ("cd", "pc", "cdelt")),
    "rotated": (0.2, -17.0, False, ("cd", "pc")),
    "rotated-flipped": (0.2, 30.0, True, ("cd", "pc")),
}


@pytest.mark.parametrize("grid", list(GRIDS))
def test_header_styles_give_the_same_frame(grid):
    scale, angle, flip, styles = GRIDS[grid]
    cd = _cd_matrix(scale, angle, flip)
    crpix = (12.3, 7.9)
    shape = (1, 18, 25)  # not square, so a y/x swap would show
    reference = Frame((1, 40, 40), wcs=_wcs(_cd_matrix(0.5, 10.0), (20.5, 20.5)))
    frames = {s: Frame.from_observations([_obs(shape, _wcs(cd, crpix, s), ["a"])]) for s in styles}
    yc, xc = _corners(*shape[1:])
    first = frames[styles[0]]
    assert first.shape == shape
    ra, dec = _deproject(cd, crpix, yc, xc)
    expected_corners = SkyCoord(ra * u.deg, dec * u.deg, frame="icrs")
    for style, frame in frames.items():
        assert frame.shape == first.shape, style
        corners = frame.pixel_to_sky(yc, xc)
        assert np.all(corners.separation(first.pixel_to_sky(yc, xc)).deg < 1e-9), style
        # ... and the corners are where the CD matrix says they are
        assert np.all(corners.separation(expected_corners).deg < 1e-9), style
        np.testing.assert_allclose(
            relative_jacobian(frame, reference),
            relative_jacobian(first, reference),
            rtol=0,
            atol=1e-9,
        )
        np.testing.assert_allclose(relative_jacobian(frame, first), np.eye(2), rtol=0, atol=1e-9)
        np.testing.assert_allclose(frame.pixel_scale.to_value(u.arcsec), scale, rtol=1e-9)


# fine 0.03"/px and coarse 0.168"/px grids on one tangent point; the coarse grid's
# reference pixel is off by a fraction of a pixel, and it is larger on the sky than the
# fine one, so the union frame extends the fine grid on every side
FINE_SHAPE, FINE_CRPIX = (1, 120, 100), (50.5, 60.5)
COARSE_SHAPE, COARSE_CRPIX = (2, 24, 20), (10.37, 12.81)


@pytest.mark.parametrize(
    ("fine_style", "coarse_style", "coarse_angle", "coarse_flip"),
    [
        ("cd", "cdelt", 0.0, False),
        ("cdelt", "pc", 0.0, False),
        ("pc", "cd", 25.0, False),
        ("cdelt", "cd", -40.0, True),
    ],
)
def test_union_frame_of_two_scales_follows_the_affine_relation(
    fine_style, coarse_style, coarse_angle, coarse_flip
):
    cd_fine = _cd_matrix(0.03)
    cd_coarse = _cd_matrix(0.168, coarse_angle, coarse_flip)
    fine = _obs(FINE_SHAPE, _wcs(cd_fine, FINE_CRPIX, fine_style), ["F814W"])
    coarse = _obs(COARSE_SHAPE, _wcs(cd_coarse, COARSE_CRPIX, coarse_style), ["g", "r"])
    frame = Frame.from_observations([fine, coarse], coverage="union")

    # expected frame, from the hand-built affine map of the coarse grid into fine pixels
    to_fine, m_yx = _pixel_map(cd_coarse, COARSE_CRPIX, cd_fine, FINE_CRPIX)
    cy, cx = to_fine(*_corners(*COARSE_SHAPE[1:]))
    fy, fx = _corners(*FINE_SHAPE[1:])
    lo_y, hi_y = min(cy.min(), fy.min()), max(cy.max(), fy.max())
    lo_x, hi_x = min(cx.min(), fx.min()), max(cx.max(), fx.max())
    # keep away from ties: no box edge on a pixel edge of the fine grid
    for edge in (lo_y, hi_y, lo_x, hi_x):
        assert abs((edge + 0.5) - np.round(edge + 0.5)) > 1e-3
    # frame pixels: every fine-grid pixel that overlaps the union box
    y0, y1 = int(np.floor(lo_y + 0.5)), int(np.ceil(hi_y - 0.5))
    x0, x1 = int(np.floor(lo_x + 0.5)), int(np.ceil(hi_x - 0.5))
    assert y0 < 0 and x0 < 0 and y1 > FINE_SHAPE[1] - 1 and x1 > FINE_SHAPE[2] - 1
    assert frame.shape == (3, y1 - y0 + 1, x1 - x0 + 1)
    assert frame.channels == ("F814W", "g", "r")
    np.testing.assert_allclose(frame.pixel_scale.to_value(u.arcsec), 0.03, rtol=1e-9)

    # sky positions (de-projected by hand) land where the affine relation puts them
    py = np.array([0.0, 23.0, 7.3, 11.5, -0.5])
    px = np.array([0.0, 19.0, 11.6, 3.25, 19.5])
    ra, dec = _deproject(cd_coarse, COARSE_CRPIX, py, px)
    coords = SkyCoord(ra * u.deg, dec * u.deg, frame="icrs")
    ey, ex = to_fine(py, px)
    gy, gx = frame.sky_to_pixel(coords)
    np.testing.assert_allclose(gy, ey - y0, rtol=0, atol=1e-6)
    np.testing.assert_allclose(gx, ex - x0, rtol=0, atol=1e-6)
    # the same through the observations' own WCS
    oy, ox = coarse.frame.sky_to_pixel(coords)
    np.testing.assert_allclose(oy, py, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ox, px, rtol=0, atol=1e-6)
    # the fine pixel (0, 0) is frame pixel (-y0, -x0): same grid, integer offset
    ry, rx = frame.sky_to_pixel(fine.frame.pixel_to_sky(0.0, 0.0))
    np.testing.assert_allclose([ry, rx], [-y0, -x0], rtol=0, atol=1e-6)

    # relative Jacobian: the linear part of the affine map
    np.testing.assert_allclose(relative_jacobian(coarse.frame, frame), m_yx, rtol=0, atol=1e-9)
    np.testing.assert_allclose(
        relative_jacobian(frame, coarse.frame), np.linalg.inv(m_yx), rtol=0, atol=1e-9
    )

    # the intersection is the fine grid clipped to the coarse footprint
    inter = Frame.from_observations([fine, coarse], coverage="intersection")
    iy0 = int(np.floor(max(cy.min(), fy.min()) + 0.5))
    iy1 = int(np.ceil(min(cy.max(), fy.max()) - 0.5))
    ix0 = int(np.floor(max(cx.min(), fx.min()) + 0.5))
    ix1 = int(np.ceil(min(cx.max(), fx.max()) - 0.5))
    assert inter.shape == (3, iy1 - iy0 + 1, ix1 - ix0 + 1)
    gy, gx = inter.sky_to_pixel(coords)
    np.testing.assert_allclose(gy, ey - iy0, rtol=0, atol=1e-6)
    np.testing.assert_allclose(gx, ex - ix0, rtol=0, atol=1e-6)


# -- relative Jacobian of synthetic pairs -------------------------------------------------

C30, S30 = np.sqrt(3) / 2, 0.5

JACOBIAN_CASES = {
    # name: ((scale, angle, flip) of a, (scale, angle, flip) of b, J by hand in (y, x))
    "scale": ((0.168, 0.0, False), (0.03, 0.0, False), 5.6 * np.eye(2)),
    "scale-inverse": ((0.03, 0.0, False), (0.168, 0.0, False), np.eye(2) / 5.6),
    # b's axes are rotated by 30 deg: a's +y (north) is (cos 30, sin 30) in b's (y, x)
    "rotation-30": ((0.1, 0.0, False), (0.1, 30.0, False), np.array([[C30, -S30], [S30, C30]])),
    # b has east to the right: x changes sign, y does not
    "flip": ((0.1, 0.0, False), (0.1, 0.0, True), np.diag([1.0, -1.0])),
    # all three: x_b = r (-cos x + sin y), y_b = r (sin x + cos y), r = 0.03 / 0.168
    "scale-rotation-flip": (
        (0.03, 0.0, False),
        (0.168, 30.0, True),
        (0.03 / 0.168) * np.array([[C30, S30], [S30, -C30]]),
    ),
}


@pytest.mark.parametrize("case", list(JACOBIAN_CASES))
@pytest.mark.parametrize("style", ["cd", "pc"])
def test_relative_jacobian_matches_hand_built_matrix(case, style):
    (sa, aa, fa), (sb, ab, fb), expected = JACOBIAN_CASES[case]
    frame_a = Frame((1, 30, 40), wcs=_wcs(_cd_matrix(sa, aa, fa), (20.0, 16.0), style))
    frame_b = Frame((2, 50, 44), wcs=_wcs(_cd_matrix(sb, ab, fb), (21.7, 24.2), style))
    jab = relative_jacobian(frame_a, frame_b)
    jba = relative_jacobian(frame_b, frame_a)
    assert jab.shape == (2, 2)
    # 1e-9 relative to the matrix's size. Round-off floor: at RA 150 deg a coordinate in
    # degrees carries ~3e-14 deg = 3e-9 pixels of 0.03", and J is a difference over two
    # pixels, so a J into 0.03" pixels is good to ~1.5e-9 absolute (2.5e-10 of 5.6)
    np.testing.assert_allclose(jab, expected, rtol=0, atol=1e-9 * max(1.0, np.abs(expected).max()))
    np.testing.assert_allclose(jab @ jba, np.eye(2), rtol=0, atol=3e-9)
    np.testing.assert_allclose(jba @ jab, np.eye(2), rtol=0, atol=3e-9)


def test_relative_jacobian_takes_offsets_in_y_x_order():
    # b is a's grid rotated by 90 deg: a's +y (north) is b's +x, a's +x is b's -y, so a
    # swapped (x, y) order would show up as a sign or a transpose
    frame_a = Frame((1, 20, 20), wcs=_wcs(_cd_matrix(0.1), (10.5, 10.5)))
    frame_b = Frame((1, 20, 20), wcs=_wcs(_cd_matrix(0.1, 90.0), (10.5, 10.5)))
    jac = relative_jacobian(frame_a, frame_b)
    np.testing.assert_allclose(jac @ np.array([1.0, 0.0]), [0.0, 1.0], atol=1e-9)
    np.testing.assert_allclose(jac @ np.array([0.0, 1.0]), [-1.0, 0.0], atol=1e-9)
    # cross-check with pixel_to_sky / sky_to_pixel of a one-pixel step
    ya, xa = 9.5, 9.5
    y0, x0 = frame_b.sky_to_pixel(frame_a.pixel_to_sky(ya, xa))
    y1, x1 = frame_b.sky_to_pixel(frame_a.pixel_to_sky(ya + 1, xa))
    np.testing.assert_allclose([y1 - y0, x1 - x0], jac[:, 0], atol=1e-9)


def test_relative_jacobian_needs_a_wcs():
    with_wcs = Frame((1, 10, 10), wcs=_wcs(_cd_matrix(0.1), (5.5, 5.5)))
    without = Frame((1, 10, 10))
    with pytest.raises(ValueError, match="no WCS"):
        relative_jacobian(with_wcs, without)
    with pytest.raises(ValueError, match="no WCS"):
        relative_jacobian(without, with_wcs)


# -- channels, coverage and errors -------------------------------------------------------


def test_map_channels_by_name():
    wcs = _wcs(_cd_matrix(0.1), (5.5, 5.5))
    a = Frame((3, 10, 10), wcs=wcs, channels=["g", "r", "i"])
    b = Frame((3, 10, 10), wcs=wcs, channels=["r", "z", "g"])
    assert a.map_channels(b) == {0: 2, 1: 0}
    assert b.map_channels(a) == {0: 1, 2: 0}
    c = Frame((1, 10, 10), channels=["F814W"])
    assert a.map_channels(c) == {}
    assert a.map_channels(a) == {0: 0, 1: 1, 2: 2}


def test_frame_channel_validation():
    assert Frame((2, 5, 5)).channels == ("0", "1")
    assert Frame((5, 5)).shape == (1, 5, 5)
    with pytest.raises(ValueError, match="unique"):
        Frame((2, 5, 5), channels=["g", "g"])
    with pytest.raises(ValueError, match="channel names"):
        Frame((2, 5, 5), channels=["g"])
    with pytest.raises(ValueError, match="shape"):
        Frame((2, 0, 5))


def test_repeated_channel_names_across_observations_raise():
    wcs = _wcs(_cd_matrix(0.1), (8.5, 8.5))
    a = _obs((2, 16, 16), wcs, ["g", "r"])
    b = _obs((2, 16, 16), _wcs(_cd_matrix(0.2), (4.5, 4.5)), ["r", "i"])
    with pytest.raises(ValueError, match="channel names repeat"):
        Frame.from_observations([a, b])


@pytest.mark.parametrize("coverage", ["Union", "both", None, "bbox"])
def test_unknown_coverage_raises(coverage):
    obs = _obs((1, 8, 8), _wcs(_cd_matrix(0.1), (4.5, 4.5)), ["g"])
    with pytest.raises(ValueError, match="coverage"):
        Frame.from_observations([obs], coverage=coverage)


def test_non_overlapping_intersection_raises():
    a = _obs((1, 16, 16), _wcs(_cd_matrix(0.1), (8.5, 8.5)), ["g"])
    # reference pixel 40 pixels (4") off: the grids are disjoint on the sky
    b = _obs((1, 16, 16), _wcs(_cd_matrix(0.1), (48.5, 8.5)), ["r"])
    with pytest.raises(ValueError, match="overlap"):
        Frame.from_observations([a, b], coverage="intersection")
    # the union is fine: both grids and the gap between them
    union = Frame.from_observations([a, b], coverage="union")
    assert union.shape == (2, 16, 56)


def test_observation_without_wcs_raises():
    a = _obs((1, 16, 16), _wcs(_cd_matrix(0.1), (8.5, 8.5)), ["g"])
    b = Observation(np.zeros((1, 16, 16)), weights=1.0, channels=["r"], name="nowcs")
    with pytest.raises(ValueError, match="WCS") as info:
        Frame.from_observations([a, b])
    assert "nowcs" in str(info.value)


def test_no_observations_raise():
    with pytest.raises(ValueError, match="at least one"):
        Frame.from_observations([])


def test_explicit_model_psf_is_used():
    obs = _obs((1, 16, 16), _wcs(_cd_matrix(0.1), (8.5, 8.5)), ["g"])
    psf = np.zeros((5, 5))
    psf[2, 2] = 1.0
    frame = Frame.from_observations([obs], psf=psf)
    np.testing.assert_array_equal(np.asarray(frame.psf)[0], psf)


# -- default model PSF -------------------------------------------------------------------


def _moffat(size, alpha, beta=2.5, q=1.0):
    """Elliptical Moffat profile sampled at pixel centres, normalised, centred."""
    yy, xx = np.indices((size, size), dtype=float) - (size - 1) / 2.0
    image = (1 + (yy**2 / q**2 + xx**2) / alpha**2) ** -beta
    return image / image.sum()


def _check_model_psf_centred(psf):
    h, w = psf.shape
    np.testing.assert_allclose(psf.sum(), 1.0, rtol=0, atol=1e-9)
    yy, xx = np.indices(psf.shape, dtype=float)
    np.testing.assert_allclose(np.sum(psf * yy), (h - 1) / 2, atol=1e-9)
    np.testing.assert_allclose(np.sum(psf * xx), (w - 1) / 2, atol=1e-9)
    assert np.unravel_index(np.argmax(psf), psf.shape) == ((h - 1) // 2, (w - 1) // 2)


def _amplitude(image, n):
    """|DFT| of an image zero-padded to n x n (frequencies m / n, numpy order)."""
    return np.abs(np.fft.fft2(image, s=(n, n)))


def _model_psf_sigma(psf):
    """Gaussian width of a pixel-integrated Gaussian image, from its second moment."""
    c = (psf.shape[0] - 1) / 2
    var = np.sum(psf * (np.arange(psf.shape[0]) - c)[:, None] ** 2)
    return np.sqrt(var - 1 / 12)


def _dominates(model_psf, observations, n=96):
    """Whether |FT model| >= |FT obs PSF| within each observation's band (numpy FFTs).

    Observations are on the model grid (ratio 1) or on a grid exactly twice coarser on
    the same tangent point (ratio 2): model frequency k is frequency 2k there, seen up to
    |2k| <= 1/2 on both axes; with both padded to n, model index m <-> index 2m.
    """
    model = _amplitude(model_psf, n)
    m = np.rint(np.fft.fftfreq(n) * n).astype(int)
    ok = True
    for obs, ratio in observations:
        band = np.abs(ratio * m / n) <= 0.5
        rows = np.flatnonzero(band)
        index = (ratio * m[band]) % n
        for image in np.asarray(obs.psf):
            p = _amplitude(image, n)[np.ix_(index, index)]
            ok &= bool(np.all(p <= model[np.ix_(rows, rows)] * (1 + 2e-3) + 1e-6))
    return ok


def _two_scale_observations(fine_psf):
    # fine grid 0.05"/px, coarse grid 0.1"/px: exactly twice the fine pixel, on the same
    # tangent point, with an elliptical and a wide Moffat PSF
    fine = _obs((1, 40, 40), _wcs(_cd_matrix(0.05), (20.5, 20.5)), ["F"], psf=fine_psf)
    coarse_psf = np.stack([_moffat(21, alpha=1.5, q=0.7), _moffat(21, alpha=2.5, beta=2.0)])
    coarse = _obs((2, 20, 20), _wcs(_cd_matrix(0.1), (10.5, 10.5)), ["g", "r"], psf=coarse_psf)
    return fine, coarse


def test_default_model_psf_dominates_every_observation_in_its_band():
    fine, coarse = _two_scale_observations(_moffat(25, alpha=2.5, beta=3.0))
    frame = Frame.from_observations([fine, coarse])
    psf = np.asarray(frame.psf)
    assert psf.shape[0] == 1
    psf = psf[0]
    _check_model_psf_centred(psf)
    observations = [(fine, 1), (coarse, 2)]
    # checked on a 96-point frequency grid, unrelated to the package's own
    assert _dominates(psf, observations)
    # ... and it is the widest such Gaussian, to the 0.05 px step of the search
    sigma = _model_psf_sigma(psf)
    assert sigma > mp.frame.MIN_MODEL_PSF_SIGMA + 0.05
    assert not _dominates(mp.psf.gaussian_psf(sigma + 0.1), observations)


def test_default_model_psf_has_a_floor_of_0_7_pixels():
    # a fine PSF sharper than a 0.7 px Gaussian: the model PSF stays at the floor (and can
    # then not dominate that PSF at high frequencies)
    fine, coarse = _two_scale_observations(_moffat(25, alpha=1.6, beta=3.0))
    psf = np.asarray(Frame.from_observations([fine, coarse]).psf)[0]
    _check_model_psf_centred(psf)
    np.testing.assert_allclose(_model_psf_sigma(psf), mp.frame.MIN_MODEL_PSF_SIGMA, atol=1e-3)
    assert not _dominates(psf, [(fine, 1)])
    assert _dominates(psf, [(coarse, 2)])


# -- the COSMOS HST + HSC pair -----------------------------------------------------------

HST_SCALE, HSC_SCALE = 0.03, 0.168
# background noise quoted with the data (data units)
HST_NOISE = 4.9
HSC_NOISE = np.array([1.10, 0.70, 0.37, 0.34, 0.55])


@pytest.fixture(scope="module")
def cosmos(shared_data_dir):
    root = shared_data_dir / "cosmos_hst_hsc"
    with fits.open(root / "Cut_HST.fits") as hdul:
        hst_data, hst_header = np.asarray(hdul[0].data, float), hdul[0].header.copy()
    with fits.open(root / "Cut_HSC.fits") as hdul:
        hsc_data, hsc_header = np.asarray(hdul[0].data, float), hdul[0].header.copy()
    with fits.open(root / "PSF_HST.fits") as hdul:
        hst_psf = np.asarray(hdul[0].data, float)
    with fits.open(root / "PSF_HSC.fits") as hdul:
        hsc_psf = np.asarray(hdul[0].data, float)
    hsc_psf = hsc_psf / hsc_psf.sum(axis=(1, 2), keepdims=True)
    # the HSC header says NAXIS = 3 (band axis), so astropy builds a 3-axis WCS from it:
    # the observation must keep its celestial part
    hst_wcs, hsc_wcs = WCS(hst_header), WCS(hsc_header)
    assert hsc_wcs.naxis == 3
    # the HST PSF peaks at (90, 90), one pixel off the array centre (89, 89)
    with pytest.warns(mp.MobsPplWarning, match="rolled"):
        hst = Observation(
            hst_data,
            weights=HST_NOISE**-2,
            psf=hst_psf,
            wcs=hst_wcs,
            channels=["F814W"],
            name="HST",
        )
    hsc = Observation(
        hsc_data,
        weights=HSC_NOISE**-2,
        psf=hsc_psf,
        wcs=hsc_wcs,
        channels=list("grizy"),
        name="HSC",
    )
    return {
        "hst": hst,
        "hsc": hsc,
        "hst_psf": hst_psf,
        "hsc_psf": hsc_psf,
        "hst_wcs": hst_wcs.celestial,
        "hsc_wcs": hsc_wcs.celestial,
        "union": Frame.from_observations([hst, hsc], coverage="union"),
        "intersection": Frame.from_observations([hst, hsc], coverage="intersection"),
    }


def _corner_coords(wcs, shape):
    yc, xc = _corners(*shape)
    return wcs.pixel_to_world(xc, yc)


def _in_box(wcs, coords, shape, tol):
    x, y = wcs.world_to_pixel(coords)
    h, w = shape
    return (y >= -0.5 - tol) & (y <= h - 0.5 + tol) & (x >= -0.5 - tol) & (x <= w - 0.5 + tol)


@pytest.mark.data
def test_cosmos_observations(cosmos):
    hst, hsc = cosmos["hst"], cosmos["hsc"]
    assert hst.shape == (1, 250, 250)
    assert hsc.shape == (5, 50, 50)
    assert hsc.wcs.naxis == 2
    # the HST PSF was rolled by one pixel onto the array centre
    psf = np.asarray(hst.psf)[0]
    assert np.unravel_index(np.argmax(psf), psf.shape) == (89, 89)
    np.testing.assert_array_equal(psf, np.roll(cosmos["hst_psf"], (-1, -1), axis=(0, 1)))
    np.testing.assert_allclose(np.asarray(hsc.psf), cosmos["hsc_psf"], atol=1e-15)
    np.testing.assert_allclose(hst.frame.pixel_scale.to_value(u.arcsec), HST_SCALE, atol=1e-6)
    np.testing.assert_allclose(hsc.frame.pixel_scale.to_value(u.arcsec), HSC_SCALE, atol=1e-6)


@pytest.mark.data
def test_cosmos_union_frame(cosmos):
    frame = cosmos["union"]
    assert frame.channels == ("F814W", "g", "r", "i", "z", "y")
    assert frame.n_channels == 6
    np.testing.assert_allclose(frame.pixel_scale.to_value(u.arcsec), HST_SCALE, rtol=0, atol=1e-6)
    h, w = frame.shape[1:]
    all_corners = []
    for key, shape in (("hst_wcs", (250, 250)), ("hsc_wcs", (50, 50))):
        corners = _corner_coords(cosmos[key], shape)
        assert np.all(_in_box(frame.wcs, corners, (h, w), tol=1e-6)), key
        all_corners.append(frame.wcs.world_to_pixel(corners))
    # no larger than needed: the footprints reach into the outer row / column on each side
    xs = np.concatenate([c[0] for c in all_corners])
    ys = np.concatenate([c[1] for c in all_corners])
    assert ys.min() < 0.5 and xs.min() < 0.5
    assert ys.max() > h - 1.5 and xs.max() > w - 1.5
    # HST's own grid, extended: HST pixel centres fall on whole frame pixels
    hy, hx = np.array([0.0, 249.0, 17.0]), np.array([0.0, 249.0, 131.0])
    fx, fy = frame.wcs.world_to_pixel(cosmos["hst_wcs"].pixel_to_world(hx, hy))
    np.testing.assert_allclose(fy - hy, np.round(fy[0] - hy[0]), atol=1e-6)
    np.testing.assert_allclose(fx - hx, np.round(fx[0] - hx[0]), atol=1e-6)


@pytest.mark.data
def test_cosmos_intersection_frame(cosmos):
    frame = cosmos["intersection"]
    assert frame.channels == ("F814W", "g", "r", "i", "z", "y")
    h, w = frame.shape[1:]
    # the centres of the frame's outermost pixels lie inside both footprints, and its
    # outer edge at most one model pixel beyond them
    yc, xc = _corners(h, w)
    edge = frame.wcs.pixel_to_world(xc, yc)
    centres = frame.wcs.pixel_to_world(
        np.array([0, w - 1, 0, w - 1]), np.array([0, 0, h - 1, h - 1])
    )
    for key, shape, model_px in (
        ("hst_wcs", (250, 250), 1.0),
        ("hsc_wcs", (50, 50), HST_SCALE / HSC_SCALE),
    ):
        assert np.all(_in_box(cosmos[key], centres, shape, tol=0.0)), key
        assert np.all(_in_box(cosmos[key], edge, shape, tol=model_px + 1e-6)), key
    # HST lies entirely inside the HSC footprint, so the intersection is the HST grid
    hst_corners = _corner_coords(cosmos["hst_wcs"], (250, 250))
    if np.all(_in_box(cosmos["hsc_wcs"], hst_corners, (50, 50), tol=0.0)):
        assert frame.shape == (6, 250, 250)
        fx, fy = frame.wcs.world_to_pixel(cosmos["hst_wcs"].pixel_to_world(0.0, 0.0))
        np.testing.assert_allclose([fy, fx], [0.0, 0.0], atol=1e-6)


def _local_sky_matrix(wcs, y, x):
    """d(north, east)/d(y, x) in arcsec per pixel at pixel (y, x), from astropy offsets."""
    centre = wcs.pixel_to_world(x, y).icrs
    columns = []
    for dy, dx in ((1.0, 0.0), (0.0, 1.0)):
        plus = wcs.pixel_to_world(x + dx, y + dy).icrs
        minus = wcs.pixel_to_world(x - dx, y - dy).icrs
        east_p, north_p = centre.spherical_offsets_to(plus)
        east_m, north_m = centre.spherical_offsets_to(minus)
        columns.append(
            [
                (north_p - north_m).to_value(u.arcsec) / 2,
                (east_p - east_m).to_value(u.arcsec) / 2,
            ]
        )
    return np.array(columns).T


@pytest.mark.data
def test_cosmos_relative_jacobian(cosmos):
    hst, hsc = cosmos["hst"], cosmos["hsc"]
    wa, wb = cosmos["hst_wcs"], cosmos["hsc_wcs"]
    jac = relative_jacobian(hst.frame, hsc.frame)
    ratio = HST_SCALE / HSC_SCALE

    # the same sky point in both grids: the HST frame centre (where J is evaluated)
    ya = xa = (250 - 1) / 2.0
    point = wa.pixel_to_world(xa, ya).icrs  # HST is FK5, HSC ICRS: compare in ICRS
    xb, yb = wb.world_to_pixel(point)
    xb, yb = float(xb), float(yb)

    # rotation: position angle (east of north) of each grid's +y axis at that point; a
    # +y pixel line is a great circle in TAN, so the bearing of a one-pixel step is exact
    pa_a = point.position_angle(wa.pixel_to_world(xa, ya + 1).icrs).rad
    pa_b = wb.pixel_to_world(xb, yb).icrs.position_angle(wb.pixel_to_world(xb, yb + 1).icrs).rad
    expected_angle = pa_b - pa_a
    # the image of a's +y step in b's pixels is (cos, sin)(angle) in (y, x)
    angle = np.arctan2(jac[1, 0], jac[0, 0])
    assert abs(angle - expected_angle) < 1e-7
    assert 5e-5 < abs(angle) < 1.5e-4  # ~8.7e-5 rad: different tangent points

    # scale: singular values 0.03 / 0.168. Not to 1e-6: both cut-outs lie ~0.2 deg from
    # their tangent points, where the gnomonic scale differs from CDELT by up to
    # theta^2 ~ 1e-5 (radially) and not equally in both grids
    sv = np.linalg.svd(jac, compute_uv=False)
    np.testing.assert_allclose(sv, ratio, rtol=2e-5)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    np.testing.assert_allclose(jac, ratio * rot, rtol=0, atol=4e-6)

    # exact local value, built from astropy's spherical offsets of one-pixel steps in
    # each WCS: J = M_b^-1 M_a with M = d(north, east)/d(y, x)
    expected = np.linalg.solve(_local_sky_matrix(wb, yb, xb), _local_sky_matrix(wa, ya, xa))
    np.testing.assert_allclose(jac, expected, rtol=0, atol=1e-8)

    # and back
    back = relative_jacobian(hsc.frame, hst.frame)
    np.testing.assert_allclose(jac @ back, np.eye(2), rtol=0, atol=1e-7)
    # the union frame shares the HST grid, so HST -> frame is the identity
    np.testing.assert_allclose(relative_jacobian(hst.frame, cosmos["union"]), np.eye(2), atol=1e-8)


@pytest.mark.data
def test_cosmos_model_psf(cosmos):
    psf = np.asarray(cosmos["union"].psf)[0]
    _check_model_psf_centred(psf)
    # HST: the model frame has HST's pixels, so compare spectra on one grid
    n = 256
    model = _amplitude(psf, n)
    p_hst = _amplitude(np.asarray(cosmos["hst"].psf)[0], n)
    assert np.all(p_hst <= model * (1 + 2e-3) + 1e-6)
    # HSC: one HSC pixel is 5.6 = 28 / 5 model pixels; with the model spectrum on a
    # 196-point grid and HSC's on a 35-point grid, model index m is HSC index m. (The
    # grids are also rotated by ~1e-4 rad, too little to matter at this tolerance.)
    n_model, n_hsc = 196, 35
    model = _amplitude(psf, n_model)
    m = np.rint(np.fft.fftfreq(n_model) * n_model).astype(int)
    band = np.abs(m / n_hsc) <= 0.5
    rows = np.flatnonzero(band)
    for image in np.asarray(cosmos["hsc"].psf):
        p = _amplitude(image, n_hsc)[np.ix_(m[band] % n_hsc, m[band] % n_hsc)]
        assert np.all(p <= model[np.ix_(rows, rows)] * (1 + 2e-3) + 1e-6)


@pytest.mark.data
def test_cosmos_linear_jacobian_is_the_scale_ratio(shared_data_dir):
    """The linear parts of the two WCS relate by 0.03 / 0.168 exactly (to 1e-6)."""
    from astropy.io import fits
    from astropy.wcs import WCS

    folder = shared_data_dir / "cosmos_hst_hsc"
    hst = Frame((1, 250, 250), wcs=WCS(fits.getheader(folder / "Cut_HST.fits")))
    hsc = Frame((5, 50, 50), wcs=WCS(fits.getheader(folder / "Cut_HSC.fits")).celestial)
    linear = relative_jacobian(hst, hsc, method="linear")
    np.testing.assert_allclose(linear, 0.03 / 0.168 * np.eye(2), rtol=0, atol=1e-6)
    local = relative_jacobian(hst, hsc)
    # the exact local map differs by the tangent planes' relative rotation (~1e-4 rad)
    assert np.abs(local - linear).max() < 3e-5
    with pytest.raises(ValueError, match="method"):
        relative_jacobian(hst, hsc, method="affine")


def test_linear_jacobian_matches_local_for_a_shared_tangent_point():
    from astropy.wcs import WCS

    def wcs(scale, theta):
        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.crval = [150.0, 2.0]
        c, s = np.cos(np.deg2rad(theta)), np.sin(np.deg2rad(theta))
        w.wcs.cd = np.diag([-1.0, 1.0]) @ (scale * np.array([[c, -s], [s, c]])) / 3600
        w.wcs.crpix = [20.5, 20.5]
        return w

    a = Frame((1, 40, 40), wcs=wcs(0.03, 0.0))
    b = Frame((1, 10, 10), wcs=wcs(0.168, 30.0))
    np.testing.assert_allclose(
        relative_jacobian(a, b, method="linear"), relative_jacobian(a, b), rtol=0, atol=1e-8
    )


# -- frames as static parts of compiled functions --------------------------------------


def _observation(crpix):
    wcs = _wcs(_cd_matrix(0.2), crpix)
    data = np.zeros((1, 9, 9))
    return Observation(data, np.ones_like(data), wcs=wcs, psf=np.pad([[1.0]], 4))


def test_equal_frames_reuse_a_compiled_function():
    # JAX keys its compiled functions on the static fields of their arguments: a frame's
    # WCS must compare by value, or a model rebuilt from the same data recompiles
    traces = []

    @eqx.filter_jit
    def total(observation):
        traces.append(1)
        return observation.data.sum()

    first, same = _observation((5.0, 5.0)), _observation((5.0, 5.0))
    moved = _observation((5.5, 5.0))
    assert first.frame.wcs is not same.frame.wcs
    total(first)
    total(same)
    assert len(traces) == 1
    total(moved)  # another grid on the sky: a different static field, a new trace
    assert len(traces) == 2
    assert first.frame.wcs_key == same.frame.wcs_key != moved.frame.wcs_key
    assert hash(first.frame.wcs_key) == hash(same.frame.wcs_key)


def test_wcs_with_lookup_distortions_is_equal_only_to_itself():
    from astropy.wcs import DistortionLookupTable

    wcs = _wcs(_cd_matrix(0.2), (5.0, 5.0))
    wcs.cpdis1 = DistortionLookupTable(np.zeros((3, 3), np.float32), (1, 1), (1, 1), (1, 1))
    a, b = mp.sky.WCSKey(wcs), mp.sky.WCSKey(copy.deepcopy(wcs))
    assert a == mp.sky.WCSKey(wcs) and a != b
