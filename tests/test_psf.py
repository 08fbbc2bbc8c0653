"""PSF validation (``check_psf``) and the pixel-integrated Gaussian model PSF."""

import warnings

import numpy as np
import pytest

import mobs_ppl as mp
from mobs_ppl.psf import check_psf, gaussian_psf


def _sampled_gaussian(size, sigma=1.3, centre=None):
    """A Gaussian sampled at pixel centres, normalised to one (independent of the package)."""
    h, w = size if isinstance(size, tuple) else (size, size)
    cy, cx = centre if centre is not None else ((h - 1) / 2.0, (w - 1) / 2.0)
    yy, xx = np.indices((h, w), dtype=float)
    image = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    return image / image.sum()


# -- normalisation ---------------------------------------------------------------------


def test_unnormalised_psf_warns_and_is_renormalised():
    psf = 2.5 * _sampled_gaussian(15)
    with pytest.warns(mp.MobsPplWarning, match="sums to 2.5"):
        out = check_psf(psf, 1)
    assert out.shape == (1, 15, 15)
    np.testing.assert_allclose(out.sum(), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(out[0], psf / 2.5, rtol=0, atol=1e-15)


def test_each_channel_is_renormalised_separately():
    base = _sampled_gaussian(11)
    psf = np.stack([base, 0.5 * base, 3.0 * base])
    with pytest.warns(mp.MobsPplWarning) as record:
        out = check_psf(psf, 3)
    # channel 0 is fine; channels 1 and 2 each warn once
    messages = [str(r.message) for r in record]
    assert len(messages) == 2
    assert any("channel 1" in m for m in messages)
    assert any("channel 2" in m for m in messages)
    np.testing.assert_allclose(out.sum(axis=(1, 2)), 1.0, rtol=0, atol=1e-12)
    for image in out:
        np.testing.assert_allclose(image, base, rtol=0, atol=1e-15)


def test_small_normalisation_error_is_kept_without_warning():
    psf = (1 + 5e-4) * _sampled_gaussian(15)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = check_psf(psf, 1)
    np.testing.assert_array_equal(out[0], psf)


# -- centring --------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [(1, 0), (0, -2), (3, 1), (-1, -1)])
def test_psf_off_centre_by_whole_pixels_warns_and_is_rolled(offset):
    size = 21
    c = (size - 1) // 2
    centred = _sampled_gaussian(size, sigma=1.1)
    shifted = np.roll(centred, offset, axis=(0, 1))
    assert np.unravel_index(np.argmax(shifted), shifted.shape) == (c + offset[0], c + offset[1])
    with pytest.warns(mp.MobsPplWarning, match="rolled"):
        out = check_psf(shifted, 1)
    assert np.unravel_index(np.argmax(out[0]), out[0].shape) == (c, c)
    # rolling moves pixels, it does not resample them
    np.testing.assert_array_equal(out[0], centred)


def test_even_sized_psf_off_centre_is_rolled_to_within_half_a_pixel():
    # 8 x 8: the centre is (3.5, 3.5); a peak at (6, 6) is 2.5 pixels off
    psf = _sampled_gaussian(8, sigma=0.8, centre=(6.0, 6.0))
    with pytest.warns(mp.MobsPplWarning, match="rolled"):
        out = check_psf(psf, 1)
    peak = np.array(np.unravel_index(np.argmax(out[0]), out[0].shape), float)
    assert np.all(np.abs(peak - 3.5) <= 0.5)
    np.testing.assert_allclose(out.sum(), 1.0, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("size", "centre"),
    [
        (15, (7.0, 7.0)),  # exactly centred
        (15, (7.4, 6.6)),  # sub-pixel offset: the peak stays on the centre pixel
        (8, (3.5, 3.5)),  # even size, centred between pixels
        (8, (4.0, 3.0)),  # even size, peak half a pixel from the centre
        ((8, 9), (3.0, 4.0)),  # even height, odd width
    ],
)
def test_psf_within_half_a_pixel_is_left_alone(size, centre):
    psf = _sampled_gaussian(size, sigma=1.0, centre=centre)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = check_psf(psf, 1)
    np.testing.assert_array_equal(out[0], psf)


def test_single_psf_is_kept_for_all_channels():
    psf = _sampled_gaussian(9)
    out = check_psf(psf, 4)
    assert out.shape == (1, 9, 9)
    assert out.dtype == np.float64


# -- invalid PSFs ----------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_psf_raises(bad):
    psf = _sampled_gaussian(9)
    psf[0, 3] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        check_psf(psf, 1)


@pytest.mark.parametrize("scale", [0.0, -1.0])
def test_zero_or_negative_sum_raises(scale):
    psf = scale * _sampled_gaussian(9)
    with pytest.raises(ValueError, match="sums to"):
        check_psf(psf, 1)


def test_zero_sum_with_mixed_signs_raises():
    psf = np.zeros((5, 5))
    psf[2, 2] = 1.0
    psf[0, 0] = -1.0
    with pytest.raises(ValueError, match="must sum to one"):
        check_psf(psf, 1)


def test_wrong_dimensions_and_channel_count_raise():
    with pytest.raises(ValueError, match=r"\(h, w\) or \(channels, h, w\)"):
        check_psf(np.ones((1, 1, 5, 5)) / 25, 1)
    with pytest.raises(ValueError, match="2 channels but the data has 3"):
        check_psf(np.stack([_sampled_gaussian(7)] * 2), 3)


# -- Gaussian model PSF ------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [0.7, 1.0, 1.7, 3.0])
def test_gaussian_psf_sum_and_second_moment(sigma):
    image = gaussian_psf(sigma)
    h, w = image.shape
    assert h == w and h % 2 == 1
    np.testing.assert_allclose(image.sum(), 1.0, rtol=0, atol=1e-12)
    c = (h - 1) / 2.0
    yy, xx = np.indices(image.shape, dtype=float)
    # centred: first moments at the array centre, peak on the centre pixel
    np.testing.assert_allclose(np.sum(image * yy), c, atol=1e-12)
    np.testing.assert_allclose(np.sum(image * xx), c, atol=1e-12)
    assert np.unravel_index(np.argmax(image), image.shape) == (h // 2, w // 2)
    # integrating over a pixel adds the variance of a unit box, 1/12, to each axis
    var_y = np.sum(image * (yy - c) ** 2)
    var_x = np.sum(image * (xx - c) ** 2)
    np.testing.assert_allclose(var_y, sigma**2 + 1 / 12, rtol=0, atol=1e-3)
    np.testing.assert_allclose(var_x, sigma**2 + 1 / 12, rtol=0, atol=1e-3)


def test_gaussian_psf_explicit_size_and_even_size_rejected():
    image = gaussian_psf(1.2, size=11)
    assert image.shape == (11, 11)
    np.testing.assert_allclose(image.sum(), 1.0, atol=1e-12)
    with pytest.raises(ValueError, match="odd"):
        gaussian_psf(1.2, size=10)


def test_gaussian_psf_passes_check_psf_unchanged():
    image = gaussian_psf(1.4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = check_psf(image, 1)
    np.testing.assert_array_equal(out[0], image)
