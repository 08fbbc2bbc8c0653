"""``mobs-ppl fit`` on the shared COSMOS HST + HSC field: the summary every user reads.

The fit is cut short (10 MAP steps, a few NUTS draws): this checks the files and every
key of ``summary.json`` against the schema shipped with the package, not the science
(the tutorial and ``test_cosmos_nuts.py`` check that).
"""

import json
from importlib import resources

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.table import QTable

from mobs_ppl import cli, field

pytestmark = [pytest.mark.slow, pytest.mark.data]

CHANNELS = ["F814W", "g", "r", "i", "z", "y"]


@pytest.fixture(scope="module")
def cosmos_run(tmp_path_factory, shared_data_dir):
    """The packaged example field file, pointed at the shared data and shortened."""
    folder = tmp_path_factory.mktemp("cosmos")
    data = shared_data_dir / "cosmos_hst_hsc"
    text = resources.files("mobs_ppl").joinpath("data", "field_example.toml").read_text()
    for name in ("Cut_HST.fits", "Cut_HSC.fits", "PSF_HST.fits", "PSF_HSC.fits"):
        text = text.replace(f'"{name}"', json.dumps(str(data / name)))
    text = text.replace("max_iter = 2000", "max_iter = 10")
    text = text.replace("num_warmup = 300", "num_warmup = 10")
    text = text.replace("num_samples = 300", "num_samples = 10")
    text = text.replace("num_chains = 2", "num_chains = 1")
    assert "max_iter = 10" in text and "num_samples = 10" in text  # the example's form
    toml = folder / "cosmos.toml"
    toml.write_text(text)
    out = folder / "out"
    with pytest.warns(Warning):  # 10 steps do not reach the mode: fit_map says so
        code = cli.main(["fit", str(toml), "--out", str(out)])
    return code, out


def test_cosmos_summary_has_every_key_of_the_schema(cosmos_run):
    jsonschema = pytest.importorskip("jsonschema")
    code, out = cosmos_run
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    jsonschema.validate(summary, field.summary_schema())
    # the keys the issue lists, present (not only allowed) on a sampled run
    assert summary["n_sources"] >= 5
    assert set(summary["observations"]) == {"HST", "HSC"}
    hsc = summary["observations"]["HSC"]
    assert hsc["channels"] == CHANNELS[1:] and hsc["shape"] == [5, 50, 50]
    assert set(hsc["chi2_dof"]) == set(CHANNELS[1:])
    shift = summary["shift"]["HSC"]
    for key in ("model_px", "native_px", "arcsec", "sky_arcsec", "sd_arcsec"):
        assert len(shift[key]) == 2, key
    # 10 MAP steps: no Laplace error bar; the NUTS width, which held the morphologies
    # at the MAP, stands in and is labelled conditional
    assert shift["sd_arcsec_laplace"] is None
    assert shift["sd_method"] == "nuts_conditional" and all(v > 0 for v in shift["sd_arcsec"])
    assert summary["flux_sd_method"] == "nuts_conditional"
    assert summary["nuts"]["conditional"] is True
    # sky offset of a shift along pixel axes: same length (square pixels, no skew)
    np.testing.assert_allclose(
        np.hypot(*shift["sky_arcsec"]), np.hypot(*shift["arcsec"]), rtol=0.02
    )
    source = summary["sources"][0]
    assert set(source["flux"]) == set(CHANNELS) == set(source["flux_sd"])
    assert {"ra", "dec"} <= set(source)
    assert {"load_s", "frame_s", "fit_map_s", "sample_s", "write_s"} <= set(summary["timing_s"])
    assert {"max_r_hat", "min_ess_bulk", "divergences"} == set(summary["diagnostics"])
    assert {"mobs_ppl", "jax", "numpyro"} <= set(summary["versions"])


def test_cosmos_files(cosmos_run):
    _, out = cosmos_run
    table = QTable.read(out / "sources.ecsv")
    assert isinstance(table["sky"], SkyCoord)
    for band in CHANNELS:
        assert np.all(table[f"flux_err_{band}"] > 0)
    assert (out / "posterior.nc").is_file()
    assert {p.name for p in out.glob("*.png")} == {"scene_HST.png", "scene_HSC.png"}


def test_demo_report_without_truth(cosmos_run, capsys):
    """The demo on COSMOS prints the fitted values with their errors (no truth to compare)."""
    _, out = cosmos_run
    cli._report(json.loads((out / "summary.json").read_text()))
    printed = capsys.readouterr().out
    assert "shift of HSC" in printed and "conditional on the MAP morphologies" in printed
    assert "against the truth" not in printed
    assert printed.count("+-") >= 6  # fluxes with their sd
