"""``mobs-ppl fit FIELD.toml --out DIR`` on a tiny simulated two-instrument field."""

import json
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import QTable
from astropy.wcs import WCS

from mobs_ppl import cli, field

CENTRE = (150.1, 2.2)  # deg
#: two galaxies, HST pixel (y, x), HST flux, g and r fluxes
GALAXIES = [((14.0, 13.5), 10.0, 8.0, 12.0), ((25.5, 26.0), 6.0, 10.0, 7.0)]
#: where sources appear in the HSC image minus where its WCS puts them, HSC pixels
TRUE_SHIFT = np.array([0.3, -0.2])
#: galaxy width (Gaussian sigma), HST pixels: compact, so that morphology boxes stay small
GALAXY_SIGMA = 1.0


def _wcs(scale_arcsec: float, n: int) -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = CENTRE
    wcs.wcs.crpix = [(n + 1) / 2, (n + 1) / 2]
    wcs.wcs.cdelt = [-scale_arcsec / 3600, scale_arcsec / 3600]
    return wcs


def _gaussians(n: int, centres, fluxes, sigma: float) -> np.ndarray:
    yy, xx = np.indices((n, n), dtype=float)
    image = np.zeros((n, n))
    for (y, x), f in zip(centres, fluxes, strict=True):
        r2 = (yy - y) ** 2 + (xx - x) ** 2
        image += f * np.exp(-r2 / (2 * sigma**2)) / (2 * np.pi * sigma**2)
    return image


def _psf(sigma: float, size: int) -> np.ndarray:
    return _gaussians(size, [((size - 1) / 2, (size - 1) / 2)], [1.0], sigma)


def _simulate(folder: pathlib.Path) -> list[SkyCoord]:
    """HST-like 40x40 at 0.06"/px (F814W) and HSC-like 10x10 at 0.24"/px (g, r)."""
    rng = np.random.default_rng(1)
    hst_wcs, hsc_wcs = _wcs(0.06, 40), _wcs(0.24, 10)
    psf_sigma, galaxy_sigma = 1.2, GALAXY_SIGMA  # own pixels; galaxy: HST pixels
    sky = [hst_wcs.pixel_to_world(x, y) for (y, x), *_ in GALAXIES]
    hst = _gaussians(
        40,
        [c for c, *_ in GALAXIES],
        [f for _, f, _, _ in GALAXIES],
        np.hypot(galaxy_sigma, psf_sigma),
    )
    hst += rng.normal(0, 0.02, hst.shape)
    hsc_centres = []
    for c in sky:
        x, y = hsc_wcs.world_to_pixel(c)
        hsc_centres.append((float(y) + TRUE_SHIFT[0], float(x) + TRUE_SHIFT[1]))
    width = np.hypot(galaxy_sigma / 4, psf_sigma)
    hsc = np.stack(
        [_gaussians(10, hsc_centres, [g[band] for g in GALAXIES], width) for band in (2, 3)]
    )
    hsc += rng.normal(0, 0.03, hsc.shape)
    fits.PrimaryHDU(hst, header=hst_wcs.to_header()).writeto(folder / "hst.fits")
    # data in an extension: "the first HDU with data"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(hsc, header=hsc_wcs.to_header())]).writeto(
        folder / "hsc.fits"
    )
    fits.PrimaryHDU(_psf(psf_sigma, 101)).writeto(folder / "psf_hst.fits")  # cropped to 79
    fits.PrimaryHDU(np.stack([_psf(psf_sigma, 15)] * 2)).writeto(folder / "psf_hsc.fits")
    fits.PrimaryHDU(np.full((2, 10, 10), 1 / 0.03**2)).writeto(folder / "weights_hsc.fits")
    return sky


FIELD = """\
[frame]
coverage = "union"

[[observation]]
name = "HST"
data = "hst.fits"
psf = "psf_hst.fits"
weights = "estimate"
channels = ["F814W"]

[[observation]]
name = "HSC"
data = "hsc.fits"
psf = "psf_hsc.fits"
weights = "weights_hsc.fits"
channels = ["g", "r"]
resample = true
shift_prior_arcsec = 0.1

[sources]
detect_on = "HST"

[fit]
max_iter = 100
"""

SAMPLE = """
[sample]
sites = ["spectrum", "shift"]
num_warmup = 20
num_samples = 20
num_chains = 1
"""


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("field")
    sky = _simulate(folder)
    return folder, sky


def _toml(folder: pathlib.Path, text: str, name: str = "field.toml") -> pathlib.Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture(scope="module")
def map_run(simulated):
    """MAP and Laplace errors, no sampling (about a minute: JAX compiles both)."""
    folder, sky = simulated
    out = folder / "out_map"
    code = cli.main(["fit", str(_toml(folder, FIELD, "map.toml")), "--out", str(out)])
    return code, out, sky


def _valid_summary(out: pathlib.Path) -> dict:
    jsonschema = pytest.importorskip("jsonschema")
    summary = json.loads((out / "summary.json").read_text())
    jsonschema.validate(summary, field.summary_schema())
    return summary


def test_fit_writes_a_valid_summary(map_run):
    code, out, _ = map_run
    assert code == 0
    summary = _valid_summary(out)
    assert summary["n_sources"] == 2
    assert summary["observations"]["HST"]["shape"] == [1, 40, 40]
    assert summary["observations"]["HSC"]["shape"] == [2, 10, 10]
    assert set(summary["observations"]["HSC"]["chi2_dof"]) == {"g", "r"}
    assert set(summary["shift"]) == {"HSC"}  # HST is the reference
    assert "diagnostics" not in summary and not (out / "posterior.nc").exists()
    assert {"load_s", "fit_map_s", "laplace_s", "write_s"} <= set(summary["timing_s"])
    assert set(summary["versions"]) == {"mobs_ppl", "jax", "numpyro", "python"}
    assert {p.name for p in out.glob("*.png")} == {"scene_HST.png", "scene_HSC.png"}
    assert (out / "run.json").is_file() and (out / "scene.npz").is_file()


def test_fit_recovers_the_simulated_field(map_run):
    _, out, sky = map_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["map"]["converged"]
    # chi2 per pixel near one: the model explains the data down to the noise
    for obs in summary["observations"].values():
        for value in obs["chi2_dof"].values():
            assert 0.7 < value < 1.3
    shift = summary["shift"]["HSC"]
    assert shift["sd_method"] == "laplace"
    sd_native = np.array(shift["sd_arcsec"]) / 0.24  # HSC axes along the model's
    assert np.all(sd_native > 0)
    assert np.all(np.abs(np.array(shift["native_px"]) - TRUE_SHIFT) < 4 * sd_native)
    # the HSC pixel axes run along -RA and +Dec: sky offset = (-dx, dy) * 0.24"
    expected_sky = np.array([-shift["native_px"][1], shift["native_px"][0]]) * 0.24
    np.testing.assert_allclose(shift["sky_arcsec"], expected_sky, rtol=1e-3)
    sources = summary["sources"]
    fitted = SkyCoord([s["ra"] for s in sources], [s["dec"] for s in sources], unit="deg")
    _, separation, _ = fitted.match_to_catalog_sky(SkyCoord(sky))
    assert np.all(separation.arcsec < 0.06)  # one HST pixel


def test_sources_table_reads_back(map_run):
    _, out, _ = map_run
    table = QTable.read(out / "sources.ecsv")
    assert len(table) == 2
    assert isinstance(table["sky"], SkyCoord)
    for band in ("F814W", "g", "r"):
        assert np.all(np.isfinite(table[f"flux_{band}"]))
        assert np.all(table[f"flux_err_{band}"] > 0)
    assert {"box_ymin", "box_xmin", "box_ymax", "box_xmax"} <= set(table.colnames)


@pytest.mark.slow
def test_fit_with_sampling(simulated):
    folder, _ = simulated
    out = folder / "out_sampled"
    assert (
        cli.main(["fit", str(_toml(folder, FIELD + SAMPLE, "sampled.toml")), "--out", str(out)])
        == 0
    )
    summary = _valid_summary(out)
    # NUTS held the morphologies at the MAP: its widths are conditional, so the default
    # error bars stay the marginal Laplace ones (the MAP is at the mode)
    assert summary["nuts"] == {"sites": ["spectrum", "shift"], "conditional": True}
    shift = summary["shift"]["HSC"]
    assert shift["sd_method"] == "laplace" and shift["sd_arcsec"] == shift["sd_arcsec_laplace"]
    assert all(v > 0 for v in shift["sd_arcsec_nuts"])
    assert summary["flux_sd_method"] == "laplace"
    assert summary["diagnostics"]["divergences"] >= 0
    assert "sample_s" in summary["timing_s"]
    assert (out / "posterior.nc").is_file()


@pytest.mark.slow
def test_fit_from_a_catalogue(simulated):
    folder, sky = simulated
    catalog = folder / "cat.csv"
    catalog.write_text("ra,dec\n" + "".join(f"{c.ra.deg},{c.dec.deg}\n" for c in sky))
    text = FIELD.replace('detect_on = "HST"', 'catalog = "cat.csv"')
    out = folder / "out_catalog"
    assert cli.main(["fit", str(_toml(folder, text, "catalog.toml")), "--out", str(out)]) == 0
    assert _valid_summary(out)["n_sources"] == 2


def test_example_field_file_parses(tmp_path):
    example = pathlib.Path(field.__file__).parent / "data" / "field_example.toml"
    (tmp_path / "field.toml").write_text(example.read_text())
    for name in ("Cut_HST.fits", "PSF_HST.fits", "Cut_HSC.fits", "PSF_HSC.fits"):
        (tmp_path / name).touch()  # the file names the COSMOS files; parsing checks they exist
    config = field.load_field(tmp_path / "field.toml")
    assert [o.name for o in config.observations] == ["HST", "HSC"]
    assert config.observations[1].channels == ("g", "r", "i", "z", "y")
    assert config.observations[1].resample and config.references == ("HST",)
    assert config.observations[1].shift_prior_arcsec == 0.1
    assert config.sources.detect_on == ("HST",) and config.max_iter == 2000
    assert config.sample == field.SampleConfig(("spectrum", "shift"), 300, 300, 2)


# -- errors -------------------------------------------------------------------------------


def _error(folder, text, capsys) -> str:
    path = _toml(folder, text, "bad.toml")
    assert cli.main(["fit", str(path), "--out", str(folder / "never")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1  # one line
    assert not (folder / "never").exists()
    return err


def test_bad_toml_syntax(simulated, capsys):
    err = _error(simulated[0], FIELD.replace('coverage = "union"', "coverage = union"), capsys)
    assert "bad.toml: not valid TOML" in err


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('coverage = "union"', 'coverage = "union"\npadding = 3', r"'padding' in \[frame\]"),
        ("resample = true", "resample = true\nresampel = 1", r"'resampel' in .*'HSC'"),
        ('detect_on = "HST"', 'detect_on = "HST"\ndetect = 1', r"'detect' in \[sources\]"),
        ("max_iter = 100", "max_iter = 100\nmaxiter = 5", r"'maxiter' in \[fit\]"),
        ("[frame]", "[framw]", r"'framw' in the field file"),
    ],
)
def test_unknown_key_is_named_with_the_valid_ones(simulated, capsys, old, new, message):
    import re

    err = _error(simulated[0], FIELD.replace(old, new), capsys)
    assert re.search("unknown key " + message, err)
    assert "valid keys:" in err


def test_unknown_key_in_sample_lists_valid_keys():
    with pytest.raises(ValueError, match=r"unknown key 'warmup' in \[sample\]; valid keys: sites"):
        field._Table({"warmup": 1}, "[sample]", pathlib.Path("f.toml"), field._SAMPLE_KEYS)


def test_missing_file_is_named(simulated):
    folder, _ = simulated
    path = _toml(folder, FIELD.replace('psf = "psf_hsc.fits"', 'psf = "nope.fits"'), "bad.toml")
    message = r"psf in \[\[observation\]\] #2 \('HSC'\): no such file .*nope\.fits"
    with pytest.raises(FileNotFoundError, match=message):
        field.load_field(path)


def test_missing_field_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such field file .*absent.toml"):
        field.load_field(tmp_path / "absent.toml")


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("max_iter = 100", 'max_iter = "100"', r"max_iter in \[fit\] must be an integer; got str"),
        ("max_iter = 100", "max_iter = true", r"max_iter in \[fit\] must be an integer; got bool"),
        ("resample = true", "resample = 1", r"resample in .*'HSC'\) must be true or false"),
        ('channels = ["g", "r"]', 'channels = "gr"', r"channels in .*'HSC'\) must be a list"),
        ("shift_prior_arcsec = 0.1", 'shift_prior_arcsec = "0.1"', "must be a number"),
    ],
)
def test_wrong_type_is_named(simulated, old, new, message):
    path = _toml(simulated[0], FIELD.replace(old, new), "bad.toml")
    with pytest.raises(TypeError, match=message):
        field.load_field(path)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('coverage = "union"', 'coverage = "all"', "coverage in \\[frame\\] must be one of"),
        ("max_iter = 100", "max_iter = 0", r"max_iter in \[fit\] must be at least 1; got 0"),
        ("shift_prior_arcsec = 0.1", "shift_prior_arcsec = -1", "must be positive; got -1"),
        ('name = "HSC"', 'name = "HST"', "observation names must be unique"),
        ('name = "HSC"', 'name = "H S C"', "it names files"),
        ('detect_on = "HST"', 'detect_on = "JWST"', "detect_on in \\[sources\\] names no obs"),
        ("resample = true", 'resample = true\nnoise = "measured"', "cannot be set with resample"),
        ('data = "hst.fits"\n', "", r"\[\[observation\]\] #1 \('HST'\) needs the key 'data'"),
    ],
)
def test_bad_value_is_named(simulated, old, new, message):
    path = _toml(simulated[0], FIELD.replace(old, new, 1), "bad.toml")
    with pytest.raises(ValueError, match=message):
        field.load_field(path)


def test_catalog_and_detect_on_together(simulated):
    text = FIELD.replace('detect_on = "HST"', 'detect_on = "HST"\ncatalog = "cat.csv"')
    with pytest.raises(ValueError, match="both detect_on and catalog: give one"):
        field.load_field(_toml(simulated[0], text, "bad.toml"))


def test_a_shift_on_every_observation(simulated):
    text = FIELD.replace('channels = ["F814W"]', 'channels = ["F814W"]\nshift_prior_arcsec = 0.1')
    with pytest.raises(ValueError, match="every \\[\\[observation\\]\\] has a shift_prior_arcsec"):
        field.load_field(_toml(simulated[0], text, "bad.toml"))


def test_channel_count_must_match_the_data(simulated):
    config = field.load_field(
        _toml(simulated[0], FIELD.replace('["g", "r"]', '["g", "r", "i"]'), "bad.toml")
    )
    with pytest.raises(ValueError, match="channels lists 3 names but .*hsc.fits has 2 channels"):
        field.load_observations(config)


def test_weights_of_another_shape_name_the_observation(simulated, tmp_path):
    fits.PrimaryHDU(np.ones((2, 8, 8))).writeto(tmp_path / "w.fits")
    text = FIELD.replace('"weights_hsc.fits"', f'"{tmp_path / "w.fits"}"')
    config = field.load_field(_toml(simulated[0], text, "bad.toml"))
    with pytest.raises(ValueError, match=r"observation 'HSC' \(.*hsc.fits\): .*weights"):
        field.load_observations(config)


def test_psf_larger_than_needed_is_cropped(simulated):
    config = field.load_field(_toml(simulated[0], FIELD, "field.toml"))
    hst, hsc = field.load_observations(config)
    assert hst.psf.shape == (1, 79, 79)  # 101 x 101 cut to 2 * 40 - 1
    assert hsc.psf.shape == (2, 15, 15)  # small enough: kept
    np.testing.assert_allclose(np.asarray(hst.psf).sum(), 1.0)
    assert hsc.shape == (2, 10, 10)  # read from the first HDU with data


def test_fit_help_does_not_import_jax():
    # the package's __init__ imports JAX; load the cli and field modules without it to
    # check that they (and parsing `fit --help`) import none
    code = (
        "import importlib.util, sys, types\n"
        "spec = importlib.util.find_spec('mobs_ppl')\n"
        "pkg = types.ModuleType('mobs_ppl')\n"
        "pkg.__path__ = list(spec.submodule_search_locations)\n"
        "pkg.__version__ = '0'\n"
        "sys.modules['mobs_ppl'] = pkg\n"
        "from mobs_ppl import cli, field\n"
        "try:\n"
        "    cli.main(['fit', '--help'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "assert 'jax' not in sys.modules, 'jax imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "FIELD" in result.stdout and "--out" in result.stdout


def test_catalogue_needs_ra_and_dec(tmp_path):
    path = tmp_path / "cat.csv"
    path.write_text("ra,declination\n150.1,2.2\n")
    with pytest.raises(ValueError, match=r"cat.csv: the catalogue needs columns ra and dec"):
        field._catalog(path)
    path.write_text("ra,dec\n150.1,2.2\n150.2,2.3\n")
    coords = field._catalog(path)
    np.testing.assert_allclose(coords.dec.deg, [2.2, 2.3])


def test_joint_detection_settings(simulated):
    folder, _ = simulated
    text = FIELD.replace(
        'detect_on = "HST"', 'detect_on = ["HST", "HSC"]\nimage_type = ["space", "ground"]'
    )
    config = field.load_field(_toml(folder, text, "joint.toml"))
    assert config.sources.detect_on == ("HST", "HSC")
    assert config.sources.image_types == ("space", "ground")
    one = FIELD.replace('detect_on = "HST"', 'detect_on = ["HST", "HSC"]')
    assert field.load_field(_toml(folder, one, "joint1.toml")).sources.image_types == (
        "space",
        "space",
    )


@pytest.mark.parametrize(
    ("sources", "message"),
    [
        ('detect_on = ["HST", "JWST"]', "names no observation: 'JWST'"),
        ('detect_on = ["HST", "HST"]', "repeated entries"),
        ("detect_on = []", "non-empty list"),
        ('detect_on = ["HST", "HSC"]\nimage_type = ["space"] ', None),
        ('detect_on = ["HST", "HSC"]\nimage_type = ["space", "radio"]', "one per detect_on"),
        ('detect_on = "HST"\nimage_type = ["space", "ground"]', "one per detect_on"),
    ],
)
def test_joint_detection_errors(simulated, sources, message):
    folder, _ = simulated
    path = _toml(folder, FIELD.replace('detect_on = "HST"', sources), "bad_sources.toml")
    if message is None:  # one image_type serves every observation
        assert field.load_field(path).sources.image_types == ("space", "space")
        return
    with pytest.raises(ValueError, match=message):
        field.load_field(path)


def test_observations_given_in_memory_must_match_the_field(simulated):
    folder, _ = simulated
    config = field.load_field(_toml(folder, FIELD, "memory.toml"))
    hst, hsc = field.load_observations(config)
    with pytest.raises(ValueError, match=r"do not match the field's observations \['HST', 'HSC'\]"):
        field.run_field(config, [hsc, hst])


@pytest.mark.slow
def test_fit_two_epochs_with_a_calibration(simulated):
    """A second HSC epoch of the same bands, 4% brighter: shared channels and a scale.

    The second epoch is the first one's noiseless images times 1.04 plus new noise
    (drawn again by this test's own simulator, not by the package).
    """
    folder, _ = simulated
    rng = np.random.default_rng(7)
    hsc_wcs = _wcs(0.24, 10)
    sky = [_wcs(0.06, 40).pixel_to_world(x, y) for (y, x), *_ in GALAXIES]
    centres = []
    for c in sky:
        x, y = hsc_wcs.world_to_pixel(c)
        centres.append((float(y) + TRUE_SHIFT[0], float(x) + TRUE_SHIFT[1]))
    width = np.hypot(GALAXY_SIGMA / 4, 1.2)
    epoch2 = 1.04 * np.stack(
        [_gaussians(10, centres, [g[band] for g in GALAXIES], width) for band in (2, 3)]
    )
    noise = rng.normal(0, 0.03, epoch2.shape)
    epoch2 += noise
    fits.PrimaryHDU(epoch2, header=hsc_wcs.to_header()).writeto(folder / "hsc2.fits")
    text = FIELD.replace('coverage = "union"', 'coverage = "union"\nchannels = "shared"')
    text += textwrap.dedent(
        """
        [[observation]]
        name = "HSC2"
        data = "hsc2.fits"
        psf = "psf_hsc.fits"
        weights = "weights_hsc.fits"
        channels = ["g", "r"]
        resample = true
        shift_prior_arcsec = 0.1
        calibration_prior = 0.05
        """
    )
    # (an [[observation]] after [fit] still appends to the observation array: TOML)
    out = folder / "out_epochs"
    code = cli.main(["fit", str(_toml(folder, text, "epochs.toml")), "--out", str(out)])
    assert code == 0
    summary = _valid_summary(out)
    assert summary["frame"]["channels"] == ["F814W", "g", "r"]  # g, r seen twice, one channel
    epoch2 = summary["observations"]["HSC2"]
    assert epoch2["calibration_sd_method"] == "laplace"
    for band in ("g", "r"):
        value, sd = epoch2["calibration"][band], epoch2["calibration_sd"][band]
        assert 0 < sd < 0.05 and abs(value - 1.04) < 3 * sd
    # chi2 of the scene as the brighter epoch sees it (calibration applied) against the
    # realised noise of this test's own draw (0.80 and 0.76 of its sd squared): the fit
    # absorbs a little of the noise, so chi2 is at most a few hundredths below it
    realised = (noise**2).mean(axis=(1, 2)) / 0.03**2
    for band, expected in zip(("g", "r"), realised, strict=True):
        assert expected - 0.12 < epoch2["chi2_dof"][band] < expected + 0.05
    assert "calibration" not in summary["observations"]["HSC"]  # the photometric reference


def test_channel_map_in_the_field_file(simulated):
    folder, _ = simulated
    shared = FIELD.replace(
        'coverage = "union"', 'coverage = "union"\nchannels = "shared"\nchannel_map = {g2 = "g"}'
    )
    config = field.load_field(_toml(folder, shared, "channel_map.toml"))
    assert config.channels == "shared" and config.channel_map == (("g2", "g"),)
    separate = FIELD.replace('coverage = "union"', 'coverage = "union"\nchannel_map = {g2 = "g"}')
    with pytest.raises(ValueError, match='needs channels = "shared"'):
        field.load_field(_toml(folder, separate, "map_separate.toml"))
    bad = shared.replace('{g2 = "g"}', "{g2 = 1}")
    with pytest.raises(ValueError, match="must map names to names; 'g2'"):
        field.load_field(_toml(folder, bad, "map_bad.toml"))
