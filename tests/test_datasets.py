import shutil
import warnings

import numpy as np
import pytest
from astropy.stats import mad_std, sigma_clip

import mobs_ppl as mp
from mobs_ppl import datasets


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """No environment variable, an empty user cache, and any download attempt fails."""

    def refuse(cache):
        raise AssertionError("tests must not download")

    monkeypatch.delenv(datasets.DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(datasets, "_cache_dir", lambda: tmp_path / "cache")
    monkeypatch.setattr(datasets, "_fetch", refuse)
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def cosmos(shared_data_dir):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hst, hsc = datasets.load_cosmos(shared_data_dir, download=False)
    return hst, hsc, caught


@pytest.mark.data
def test_shapes_channels_names(cosmos):
    hst, hsc, _ = cosmos
    assert isinstance(hst, mp.Observation) and isinstance(hsc, mp.Observation)
    assert hst.name == "HST" and hsc.name == "HSC"
    assert hst.channels == ("F814W",)
    assert hsc.channels == ("g", "r", "i", "z", "y")
    assert hst.shape == (1, 250, 250)
    assert hsc.shape == (5, 50, 50)
    assert hst.psf.shape == (1, 179, 179)
    assert hsc.psf.shape == (5, 31, 31)
    assert hst.data.dtype == np.float64 and hsc.data.dtype == np.float64
    assert hst.renderer is None and hsc.renderer is None


@pytest.mark.data
def test_wcs_is_celestial_with_the_documented_pixel_scales(cosmos):
    hst, hsc, _ = cosmos
    assert hst.wcs.naxis == 2 and hsc.wcs.naxis == 2
    assert hst.frame.pixel_scale.to_value("arcsec") == pytest.approx(0.03, rel=1e-4)
    assert hsc.frame.pixel_scale.to_value("arcsec") == pytest.approx(0.168, rel=1e-4)


@pytest.mark.data
def test_psfs_are_normalised_and_centred_without_warnings(cosmos):
    hst, hsc, caught = cosmos
    assert [str(w.message) for w in caught] == []
    for obs in (hst, hsc):
        psf = np.asarray(obs.psf)
        np.testing.assert_allclose(psf.sum(axis=(1, 2)), 1.0, rtol=1e-12)
        h, w = psf.shape[1:]
        for image in psf:
            peak = np.unravel_index(np.argmax(image), image.shape)
            assert peak == ((h - 1) // 2, (w - 1) // 2)


@pytest.mark.data
def test_hst_psf_is_rolled_not_resampled(cosmos, shared_data_dir):
    from astropy.io import fits

    hst, _, _ = cosmos
    raw = fits.getdata(shared_data_dir / "cosmos_hst_hsc" / "PSF_HST.fits").astype(float)
    np.testing.assert_allclose(np.asarray(hst.psf[0]), np.roll(raw / raw.sum(), (-1, -1), (0, 1)))


@pytest.mark.data
def test_weights_match_an_independent_robust_estimate(cosmos):
    hst, hsc, _ = cosmos
    for obs in (hst, hsc):
        weights = np.asarray(obs.weights)
        for c, image in enumerate(np.asarray(obs.data)):
            assert np.all(weights[c] == weights[c, 0, 0])  # one value per band
            kept = sigma_clip(image, sigma=3, maxiters=None, stdfunc="mad_std").compressed()
            expected = 1.0 / mad_std(kept) ** 2
            assert weights[c, 0, 0] == pytest.approx(expected, rel=0.1), (obs.name, c)


@pytest.mark.data
def test_the_folder_itself_is_accepted(shared_data_dir):
    hst, hsc = datasets.load_cosmos(shared_data_dir / "cosmos_hst_hsc", download=False)
    assert hst.shape == (1, 250, 250) and hsc.shape == (5, 50, 50)


@pytest.mark.data
def test_environment_variable(monkeypatch, shared_data_dir, no_network):
    monkeypatch.setenv(datasets.DATA_DIR_ENV, str(shared_data_dir))
    hst, hsc = datasets.load_cosmos(download=False)
    assert hst.name == "HST" and hsc.channels == ("g", "r", "i", "z", "y")


@pytest.mark.data
def test_argument_wins_over_environment_variable(monkeypatch, tmp_path, shared_data_dir):
    monkeypatch.setenv(datasets.DATA_DIR_ENV, str(tmp_path / "nowhere"))
    files = datasets.cosmos_files(shared_data_dir, download=False)
    assert files["Cut_HST.fits"].parent == shared_data_dir / "cosmos_hst_hsc"


@pytest.mark.data
def test_missing_file_is_named(tmp_path, shared_data_dir):
    folder = tmp_path / "cosmos_hst_hsc"
    folder.mkdir()
    for name in ("Cut_HSC.fits", "Cut_HST.fits", "PSF_HSC.fits"):
        shutil.copy(shared_data_dir / "cosmos_hst_hsc" / name, folder / name)
    with pytest.raises(FileNotFoundError, match="PSF_HST.fits"):
        datasets.load_cosmos(tmp_path)


def test_empty_directory_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="Cut_HSC.fits"):
        datasets.load_cosmos(tmp_path)


def test_nonexistent_directory_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        datasets.load_cosmos(tmp_path / "nowhere")


def test_bad_environment_variable_raises(monkeypatch, tmp_path, no_network):
    monkeypatch.setenv(datasets.DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=datasets.DATA_DIR_ENV):
        datasets.load_cosmos()


def test_nothing_found_without_download_raises(no_network):
    with pytest.raises(FileNotFoundError, match="MOBS_PPL_DATA_DIR") as info:
        datasets.load_cosmos(download=False)
    assert "download" in str(info.value)


def test_download_failure_says_how_to_provide_the_data(monkeypatch, no_network):
    def offline(cache):
        raise ConnectionError("network unreachable")

    monkeypatch.setattr(datasets, "_fetch", offline)
    with pytest.raises(OSError, match="could not download") as info:
        datasets.load_cosmos()
    assert "MOBS_PPL_DATA_DIR" in str(info.value)


@pytest.mark.data
def test_cached_files_are_used_without_download(no_network, shared_data_dir):
    no_network.mkdir()
    for name in datasets.COSMOS_FILES:
        shutil.copy(shared_data_dir / "cosmos_hst_hsc" / name, no_network / name)
    hst, hsc = datasets.load_cosmos(download=False)
    assert hst.shape == (1, 250, 250)


def test_registry_lists_the_four_files_with_sha256():
    assert sorted(datasets.COSMOS_FILES) == [
        "Cut_HSC.fits",
        "Cut_HST.fits",
        "PSF_HSC.fits",
        "PSF_HST.fits",
    ]
    assert all(len(h) == 64 for h in datasets.COSMOS_FILES.values())
