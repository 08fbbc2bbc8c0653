"""The single-instrument HSC blend loader (``mp.datasets.load_hsc_blend``).

Every expectation is read from the raw ``.npz`` file with NumPy alone, not from the loader.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import mobs_ppl as mp
from mobs_ppl import datasets

#: LSST/HSC mask bits of the planes the loader treats as unusable by default: BAD, SAT,
#: INTRP, CR, EDGE (bits 0-4), SUSPECT (7), NO_DATA (8).
BAD_BITS = 0b1_1001_1111


@pytest.fixture(scope="module")
def raw(shared_data_dir):
    with np.load(shared_data_dir / "hsc_blends" / "hsc_cosmos_35.npz") as npz:
        return {key: npz[key] for key in npz.files}


@pytest.fixture(scope="module")
def blend(shared_data_dir):
    return datasets.load_hsc_blend(shared_data_dir)


@pytest.mark.data
def test_shapes_channels_and_pixel_scale(blend):
    obs, catalog = blend
    assert isinstance(obs, mp.Observation)
    assert obs.name == "HSC" and obs.channels == ("g", "r", "i", "z", "y")
    assert obs.shape == (5, 58, 48) and obs.psf.shape == (5, 43, 43)
    assert obs.frame.pixel_scale.to_value("arcsec") == pytest.approx(0.168, rel=1e-6)
    assert len(catalog) == 7


@pytest.mark.data
def test_data_as_in_the_file(blend, raw):
    obs, _ = blend
    np.testing.assert_array_equal(np.asarray(obs.data), raw["images"].astype(float))
    np.testing.assert_allclose(
        np.asarray(obs.psf), raw["psfs"] / raw["psfs"].sum(axis=(1, 2), keepdims=True)
    )


@pytest.mark.data
def test_weights_are_inverse_variance_and_masked_pixels_zero(blend, raw):
    obs, _ = blend
    weights = np.asarray(obs.weights)
    bad = (raw["mask"] & BAD_BITS) != 0
    assert bad.any() and not bad.all()  # cosmic-ray tracks: a few percent per band
    assert np.all(weights[bad] == 0)
    np.testing.assert_allclose(weights[~bad], 1.0 / raw["variance"][~bad].astype(float))


@pytest.mark.data
def test_no_mask_planes_keeps_every_pixel(shared_data_dir, raw):
    obs, _ = datasets.load_hsc_blend(shared_data_dir, mask_planes=())
    np.testing.assert_allclose(np.asarray(obs.weights), 1.0 / raw["variance"].astype(float))


@pytest.mark.data
def test_catalogue_round_trips_to_the_file_pixels(blend, raw):
    obs, catalog = blend
    y, x = obs.frame.sky_to_pixel(catalog)
    np.testing.assert_allclose(y, raw["catalog"]["y"], atol=1e-8)
    np.testing.assert_allclose(x, raw["catalog"]["x"], atol=1e-8)
    # north up, east left: one pixel up is 0.168" north, one pixel right 0.168" east-to-west
    up = obs.frame.pixel_to_sky(np.array([1.0]), np.array([0.0]))
    origin = obs.frame.pixel_to_sky(np.array([0.0]), np.array([0.0]))
    dra, ddec = origin.spherical_offsets_to(up)
    assert ddec.to_value("arcsec")[0] == pytest.approx(0.168, rel=1e-3)
    assert abs(dra.to_value("arcsec")[0]) < 1e-6


@pytest.mark.data
def test_folder_and_file_paths_are_accepted(shared_data_dir):
    folder = shared_data_dir / "hsc_blends"
    for where in (folder, folder / "hsc_cosmos_35.npz"):
        obs, _ = datasets.load_hsc_blend(where)
        assert obs.shape == (5, 58, 48)


@pytest.mark.data
def test_environment_variable(monkeypatch, shared_data_dir):
    monkeypatch.setenv(datasets.DATA_DIR_ENV, str(shared_data_dir))
    obs, _ = datasets.load_hsc_blend()
    assert obs.shape == (5, 58, 48)


@pytest.mark.data
def test_altered_file_fails_the_hash_check(tmp_path, shared_data_dir):
    copy = tmp_path / "hsc_cosmos_35.npz"
    shutil.copy(shared_data_dir / "hsc_blends" / "hsc_cosmos_35.npz", copy)
    with open(copy, "ab") as f:
        f.write(b"\0")
    with pytest.raises(datasets.DataFileError, match="SHA-256"):
        datasets.load_hsc_blend(copy)


def test_missing_file_says_where_it_looked(monkeypatch, tmp_path):
    monkeypatch.delenv(datasets.DATA_DIR_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match="MOBS_PPL_DATA_DIR"):
        datasets.load_hsc_blend()
    with pytest.raises(FileNotFoundError, match="hsc_cosmos_35.npz"):
        datasets.load_hsc_blend(tmp_path)


@pytest.mark.data
def test_unknown_mask_plane_raises(shared_data_dir):
    with pytest.raises(KeyError, match="DETECTED"):
        datasets.load_hsc_blend(shared_data_dir, mask_planes=("DETECTED",))
