"""The ``Observation`` container: input validation, weights, immutability and ``match``."""

import dataclasses
import warnings

import jax
import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

import mobs_ppl as mp
from mobs_ppl import Frame, Observation, estimate_weights

SCALE_DEG = 0.2 / 3600.0


def _tan_wcs(crval=(150.0, 2.0), crpix=(8.0, 8.0), scale=SCALE_DEG):
    """North-up, east-left TAN WCS with square pixels of ``scale`` degrees."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = list(crval)
    w.wcs.crpix = list(crpix)
    w.wcs.cdelt = [-scale, scale]
    w.wcs.cunit = ["deg", "deg"]
    w.wcs.radesys = "ICRS"
    w.wcs.set()
    return w


def _psf(size=9, sigma=1.2):
    yy, xx = np.indices((size, size), dtype=float) - (size - 1) / 2.0
    image = np.exp(-(yy**2 + xx**2) / (2 * sigma**2))
    return image / image.sum()


def _data(shape=(2, 16, 16), seed=0):
    return np.random.default_rng(seed).normal(size=shape)


# -- shapes ------------------------------------------------------------------------------


def test_2d_data_becomes_a_single_channel_cube():
    obs = Observation(np.ones((6, 7)), weights=2.0)
    assert obs.data.shape == (1, 6, 7)
    assert obs.weights.shape == (1, 6, 7)
    assert obs.shape == (1, 6, 7)
    assert obs.frame.shape == (1, 6, 7)
    assert obs.channels == ("0",)


def test_4d_data_raises():
    with pytest.raises(ValueError, match=r"data must be \(height, width\) or \(channels"):
        Observation(np.ones((1, 2, 6, 7)), weights=1.0)


def test_data_weights_shape_mismatch_raises():
    with pytest.raises(ValueError, match=r"weights shape .* does not match data shape"):
        Observation(np.ones((2, 6, 7)), weights=np.ones((2, 6, 6)))
    with pytest.raises(ValueError, match=r"weights shape .* does not match data shape"):
        Observation(np.ones((3, 6, 7)), weights=np.ones((2, 6, 7)))


def test_per_channel_weights_of_wrong_length_raise():
    with pytest.raises(ValueError, match="weights has 2 values per channel; the data has 3"):
        Observation(np.ones((3, 6, 7)), weights=[1.0, 2.0])


# -- weights -----------------------------------------------------------------------------


def test_scalar_weight_broadcasts():
    obs = Observation(np.ones((3, 4, 5)), weights=0.25)
    assert obs.weights.shape == (3, 4, 5)
    np.testing.assert_array_equal(np.asarray(obs.weights), 0.25)


def test_per_channel_weights_broadcast():
    obs = Observation(np.ones((3, 4, 5)), weights=[1.0, 2.0, 4.0])
    w = np.asarray(obs.weights)
    assert w.shape == (3, 4, 5)
    for c, value in enumerate([1.0, 2.0, 4.0]):
        np.testing.assert_array_equal(w[c], value)


def test_single_weight_map_broadcasts_over_channels():
    wmap = np.arange(20, dtype=float).reshape(4, 5) + 1
    obs = Observation(np.ones((3, 4, 5)), weights=wmap)
    w = np.asarray(obs.weights)
    assert w.shape == (3, 4, 5)
    for c in range(3):
        np.testing.assert_array_equal(w[c], wmap)


def test_full_weight_cube_is_kept():
    wcube = np.random.default_rng(1).uniform(0.5, 2.0, size=(2, 4, 5))
    obs = Observation(np.ones((2, 4, 5)), weights=wcube)
    np.testing.assert_array_equal(np.asarray(obs.weights), wcube)


@pytest.mark.parametrize("bad", [-1.0, np.nan, np.inf])
def test_bad_weights_raise(bad):
    w = np.ones((2, 4, 5))
    w[1, 2, 3] = bad
    with pytest.raises(ValueError, match="weights must be finite and non-negative"):
        Observation(np.ones((2, 4, 5)), weights=w)


def test_negative_scalar_weight_raises():
    with pytest.raises(ValueError, match="non-negative"):
        Observation(np.ones((4, 5)), weights=-1.0)


def test_all_zero_weights_raise():
    with pytest.raises(ValueError, match="every pixel has zero weight"):
        Observation(np.ones((2, 4, 5)), weights=0.0)


def test_fully_masked_raises():
    with pytest.raises(ValueError, match="zero weight"):
        Observation(np.ones((2, 4, 5)), weights=1.0, mask=np.ones((4, 5), bool))


def test_mask_sets_weight_to_zero():
    mask = np.zeros((4, 5), bool)
    mask[1, 2] = True
    mask[3, 0] = True
    obs = Observation(np.ones((2, 4, 5)), weights=[1.0, 3.0], mask=mask)
    w = np.asarray(obs.weights)
    assert np.all(w[:, mask] == 0)
    np.testing.assert_array_equal(w[0, ~mask], 1.0)
    np.testing.assert_array_equal(w[1, ~mask], 3.0)


def test_per_channel_mask():
    mask = np.zeros((2, 4, 5), bool)
    mask[1, 0, 0] = True
    obs = Observation(np.ones((2, 4, 5)), weights=1.0, mask=mask)
    w = np.asarray(obs.weights)
    assert w[1, 0, 0] == 0 and w[0, 0, 0] == 1.0
    assert np.count_nonzero(w == 0) == 1


def test_mask_of_wrong_shape_raises():
    with pytest.raises(ValueError, match="mask shape"):
        Observation(np.ones((2, 4, 5)), weights=1.0, mask=np.zeros((4, 4), bool))


# -- non-finite data --------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_data_with_weight_raises(bad):
    data = np.ones((2, 4, 5))
    data[0, 1, 1] = bad
    with pytest.raises(ValueError, match=r"1 NaN/inf pixels with non-zero weight"):
        Observation(data, weights=1.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_data_with_zero_weight_is_accepted(bad):
    data = np.ones((2, 4, 5))
    data[0, 1, 1] = bad
    w = np.ones((2, 4, 5))
    w[0, 1, 1] = 0.0
    obs = Observation(data, weights=w)
    stored = np.asarray(obs.data)
    assert np.all(np.isfinite(stored))
    assert obs.weights[0, 1, 1] == 0
    # the other pixels are untouched
    np.testing.assert_array_equal(stored[np.isfinite(data)], data[np.isfinite(data)])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_data_in_masked_pixel_is_accepted(bad):
    data = np.ones((2, 4, 5))
    data[1, 3, 4] = bad
    mask = np.zeros((2, 4, 5), bool)
    mask[1, 3, 4] = True
    obs = Observation(data, weights=1.0, mask=mask)
    assert np.all(np.isfinite(np.asarray(obs.data)))
    assert obs.weights[1, 3, 4] == 0


# -- default weights ---------------------------------------------------------------------


def test_estimate_weights_recovers_gaussian_noise(rng):
    # 256 x 256 pixels: the MAD-based estimate scatters by ~1% (64 x 64 gives ~3.5%,
    # too close to the 5% tolerance); its clipping bias is below 1%
    data = rng.normal(0.0, 2.0, size=(3, 256, 256))
    w = estimate_weights(data)
    assert w.shape == (3,)
    np.testing.assert_allclose(w, 0.25, rtol=0.05)


def test_default_weights_are_estimated_per_channel(rng):
    sigmas = np.array([2.0, 0.5])
    data = rng.normal(size=(2, 256, 256)) * sigmas[:, None, None] + 10.0
    obs = Observation(data)
    w = np.asarray(obs.weights)
    assert w.shape == (2, 256, 256)
    for c in range(2):
        assert np.all(w[c] == w[c, 0, 0])
    np.testing.assert_allclose(w[:, 0, 0], 1 / sigmas**2, rtol=0.05)


def test_default_weights_ignore_bright_sources(rng):
    data = rng.normal(0.0, 2.0, size=(1, 256, 256))
    data[0, 100:140, 100:140] += 500.0  # a source covering 2.5% of the image
    w = estimate_weights(data)
    np.testing.assert_allclose(w, 0.25, rtol=0.05)


# the clipping loop empties the sample before the check fires (numpy warns "Mean of
# empty slice"); the ValueError is what matters here
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_estimate_weights_rejects_constant_channel():
    with pytest.raises(ValueError, match="zero spread"):
        estimate_weights(np.ones((1, 8, 8)))


# -- PSF and channels --------------------------------------------------------------------


def test_psf_with_wrong_channel_count_raises():
    psf = np.stack([_psf()] * 2)
    with pytest.raises(ValueError, match="2 channels but the data has 3"):
        Observation(np.ones((3, 8, 8)), weights=1.0, psf=psf)


def test_psf_is_stored_normalised_per_channel():
    psf = np.stack([_psf(sigma=1.0), _psf(sigma=2.0)])
    obs = Observation(np.ones((2, 8, 8)), weights=1.0, psf=psf)
    assert obs.psf.shape == (2, 9, 9)
    np.testing.assert_allclose(np.asarray(obs.psf), psf, atol=1e-15)


def test_unnormalised_psf_warns():
    with pytest.warns(mp.MobsPplWarning, match="divided by its sum"):
        obs = Observation(np.ones((8, 8)), weights=1.0, psf=3 * _psf())
    np.testing.assert_allclose(float(obs.psf.sum()), 1.0, atol=1e-12)


def test_channel_name_count_mismatch_raises():
    with pytest.raises(ValueError, match="2 channel names for 3 channels"):
        Observation(np.ones((3, 4, 5)), weights=1.0, channels=["g", "r"])


def test_duplicate_channel_names_raise():
    with pytest.raises(ValueError, match="unique"):
        Observation(np.ones((3, 4, 5)), weights=1.0, channels=["g", "r", "g"])


def test_channel_names_are_stored_as_strings():
    obs = Observation(np.ones((3, 4, 5)), weights=1.0, channels=["g", "r", "i"], name="HSC")
    assert obs.channels == ("g", "r", "i")
    assert obs.name == "HSC"
    single = Observation(np.ones((4, 5)), weights=1.0, channels="F814W")
    assert single.channels == ("F814W",)


# -- WCS ---------------------------------------------------------------------------------


def test_wcs_without_celestial_axes_raises():
    w = WCS(naxis=2)
    w.wcs.ctype = ["WAVE", "TIME"]
    with pytest.raises((TypeError, ValueError), match="no celestial axes"):
        Observation(np.ones((4, 5)), weights=1.0, wcs=w)
    with pytest.raises((TypeError, ValueError), match="celestial"):
        Observation(np.ones((4, 5)), weights=1.0, wcs=WCS(naxis=2))


@pytest.mark.parametrize("not_a_wcs", [{"CTYPE1": "RA---TAN"}, "RA---TAN", 1.0])
def test_non_wcs_object_raises_type_error(not_a_wcs):
    with pytest.raises(TypeError, match="astropy.wcs.WCS"):
        Observation(np.ones((4, 5)), weights=1.0, wcs=not_a_wcs)


def test_fits_header_is_not_accepted_as_wcs():
    header = _tan_wcs().to_header()
    with pytest.raises(TypeError, match="astropy.wcs.WCS, got Header"):
        Observation(np.ones((4, 5)), weights=1.0, wcs=header)


def test_three_axis_wcs_keeps_its_celestial_part():
    header = fits.Header()
    header["NAXIS"] = 3
    header["NAXIS1"], header["NAXIS2"], header["NAXIS3"] = 5, 4, 2
    cards = {
        "WCSAXES": 3,
        "CTYPE1": "RA---TAN",
        "CTYPE2": "DEC--TAN",
        "CTYPE3": "BAND",
        "CRVAL1": 150.1,
        "CRVAL2": 2.2,
        "CRVAL3": 0.0,
        "CRPIX1": 3.0,
        "CRPIX2": 2.0,
        "CRPIX3": 1.0,
        "CDELT1": -SCALE_DEG,
        "CDELT2": SCALE_DEG,
        "CDELT3": 1.0,
        "CUNIT1": "deg",
        "CUNIT2": "deg",
        "RADESYS": "ICRS",
    }
    for key, value in cards.items():
        header[key] = value
    w3 = WCS(header)
    assert w3.naxis == 3
    obs = Observation(np.ones((2, 4, 5)), weights=1.0, wcs=w3, channels=["g", "r"])
    assert obs.wcs.naxis == 2
    assert obs.wcs.has_celestial
    assert list(obs.wcs.wcs.ctype) == ["RA---TAN", "DEC--TAN"]
    # the celestial part describes the same sky: compare with the 3-axis WCS, 0-based
    xs, ys = np.array([0.0, 4.0, 2.5]), np.array([0.0, 3.0, 1.5])
    ra3, dec3, _ = w3.wcs_pix2world(xs, ys, np.zeros(3), 0)
    ra2, dec2 = obs.wcs.wcs_pix2world(xs, ys, 0)
    np.testing.assert_allclose(ra2, ra3, rtol=0, atol=1e-12)
    np.testing.assert_allclose(dec2, dec3, rtol=0, atol=1e-12)
    # the caller's WCS is not modified
    assert w3.naxis == 3


def test_observation_keeps_a_private_copy_of_the_wcs():
    w = _tan_wcs()
    obs = Observation(np.ones((4, 5)), weights=1.0, wcs=w)
    w.wcs.crval = [10.0, 10.0]
    w.wcs.set()
    np.testing.assert_allclose(obs.wcs.wcs.crval, [150.0, 2.0])


# -- immutability and pytree ------------------------------------------------------------


def test_observation_is_immutable():
    obs = Observation(np.ones((4, 5)), weights=1.0, name="HST")
    with pytest.raises(dataclasses.FrozenInstanceError):
        obs.name = "other"
    with pytest.raises(AttributeError):
        obs.data = np.zeros((1, 4, 5))
    with pytest.raises(AttributeError):
        obs.weights = np.zeros((1, 4, 5))
    assert obs.name == "HST"


def test_observation_is_a_pytree_holding_the_data():
    data = _data((2, 6, 7))
    obs = Observation(data, weights=[1.0, 2.0], psf=_psf())
    leaves = jax.tree_util.tree_leaves(obs)
    assert any(leaf is obs.data for leaf in leaves)
    assert any(leaf is obs.weights for leaf in leaves)
    assert any(
        getattr(leaf, "shape", None) == data.shape and np.array_equal(np.asarray(leaf), data)
        for leaf in leaves
    )
    # and it can be rebuilt from its leaves and passed through jax transformations
    doubled = jax.tree_util.tree_map(lambda x: 2 * x, obs)
    assert isinstance(doubled, Observation)
    np.testing.assert_allclose(np.asarray(doubled.data), 2 * data)
    total = jax.jit(lambda o: o.data.sum())(obs)
    np.testing.assert_allclose(float(total), data.sum())


# -- match -------------------------------------------------------------------------------


def _obs_with_wcs(channels=("g", "r"), crval=(150.0, 2.0), size=16):
    return Observation(
        _data((len(channels), size, size)),
        weights=1.0,
        psf=_psf(),
        wcs=_tan_wcs(crval=crval, crpix=((size + 1) / 2, (size + 1) / 2)),
        channels=list(channels),
        name="obs",
    )


def test_match_returns_a_new_bound_observation_and_leaves_the_original_unbound():
    obs = _obs_with_wcs()
    frame = Frame.from_observations([obs])
    bound = obs.match(frame)
    assert bound is not obs
    assert obs.renderer is None
    assert bound.renderer is not None
    assert bound.data is obs.data  # shared, not copied
    assert bound.frame.shape == obs.frame.shape
    with pytest.raises(ValueError, match="not bound to a model frame"):
        obs.render(np.zeros(frame.shape))
    out = bound.render(np.zeros(frame.shape))
    assert out.shape == obs.shape


def test_match_with_channels_absent_from_frame_raises():
    obs = _obs_with_wcs(channels=("g", "r"))
    other = _obs_with_wcs(channels=("F814W",))
    frame = Frame.from_observations([other])
    with pytest.raises(ValueError, match=r"channels \['g', 'r'\] .* not in the model frame"):
        obs.match(frame)


def test_match_with_some_channels_absent_from_frame_raises():
    obs = _obs_with_wcs(channels=("g", "r"))
    frame = Frame((1, 16, 16), wcs=obs.wcs, channels=["g"])
    with pytest.raises(ValueError, match=r"\['r'\]"):
        obs.match(frame)


def test_match_without_overlap_raises():
    obs = _obs_with_wcs(crval=(150.0, 2.0))
    far = _obs_with_wcs(crval=(150.0, 2.1))  # 0.1 deg away: 1800 pixels
    frame = Frame.from_observations([far])
    with pytest.raises(ValueError, match="overlap"):
        obs.match(frame)


def test_match_observation_without_wcs_to_frame_with_wcs_raises():
    obs = Observation(_data((2, 16, 16)), weights=1.0, channels=["g", "r"])
    frame = Frame.from_observations([_obs_with_wcs()])
    with pytest.raises(ValueError, match="observation has no WCS"):
        obs.match(frame)


def test_match_frame_without_wcs_to_observation_with_wcs_raises():
    obs = _obs_with_wcs()
    frame = Frame((2, 16, 16), channels=["g", "r"])
    with pytest.raises(ValueError, match="model frame has no WCS"):
        obs.match(frame)


def test_match_without_any_wcs_needs_the_same_grid():
    obs = Observation(_data((2, 16, 16)), weights=1.0, channels=["g", "r"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bound = obs.match(Frame((2, 16, 16), channels=["g", "r"]))
    assert bound.renderer is not None
    with pytest.raises(ValueError, match="same height and width"):
        obs.match(Frame((2, 12, 16), channels=["g", "r"]))
