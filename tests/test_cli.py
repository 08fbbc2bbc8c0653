import json

import numpy as np
import pytest

import mobs_ppl
import mobs_ppl as mp
from mobs_ppl import cli, datasets


@pytest.fixture
def no_data(monkeypatch, tmp_path):
    """No environment variable and an empty user cache; downloads are refused."""

    def offline(cache):
        raise ConnectionError("network unreachable (test)")

    monkeypatch.delenv(datasets.DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(datasets, "_cache_dir", lambda: tmp_path / "cache")
    monkeypatch.setattr(datasets, "_fetch", offline)


@pytest.mark.data
def test_demo_loads_cosmos_when_found(shared_data_dir, capsys):
    """``--field auto`` with the data present fits COSMOS (the fit itself: test_cli_cosmos)."""
    args = cli._parser().parse_args(["demo", "--out", "x", "--data-dir", str(shared_data_dir)])
    hst, hsc, description, truth = cli._load_field(args)
    assert truth is None and "cosmos_hst_hsc" in description
    assert hst.channels == ("F814W",) and hsc.channels == ("g", "r", "i", "z", "y")
    assert capsys.readouterr().err == ""  # no fallback message


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert mobs_ppl.__version__ in capsys.readouterr().out


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code != 0


def test_missing_data_without_download(tmp_path, capsys, no_data):
    code = cli.main(["demo", "--out", str(tmp_path / "out"), "--no-download", "--field", "cosmos"])
    assert code != 0
    err = capsys.readouterr().err
    assert err.startswith("mobs-ppl: error:")
    assert "MOBS_PPL_DATA_DIR" in err and "--data-dir" in err and "--field simulated" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "summary.json").exists()


def test_failed_download_gives_a_readable_message(tmp_path, capsys, no_data):
    code = cli.main(["demo", "--out", str(tmp_path / "out"), "--field", "cosmos"])
    assert code != 0
    err = capsys.readouterr().err
    assert "could not download" in err and "MOBS_PPL_DATA_DIR" in err
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def simulated_demo(tmp_path_factory):
    """The demo with no data and no network, reduced (``--quick``): 2 galaxies, MAP,
    Laplace and NUTS 4 x (30 + 30); about 2 minutes of one core."""
    tmp_path = tmp_path_factory.mktemp("demo")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.delenv(datasets.DATA_DIR_ENV, raising=False)
        monkeypatch.setattr(datasets, "_cache_dir", lambda: tmp_path / "cache")
        monkeypatch.setattr(datasets, "_fetch", _offline)
        out = tmp_path / "out"
        with _captured() as captured:
            code = cli.main(["demo", "--out", str(out), "--quick"])
    return code, out, captured


def _offline(cache):
    raise ConnectionError("network unreachable (test)")


class _captured:
    """Capture stdout and stderr of a module-scoped run (capsys is per test)."""

    def __enter__(self):
        import contextlib
        import io

        self.out, self.err = io.StringIO(), io.StringIO()
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(contextlib.redirect_stdout(self.out))
        self._stack.enter_context(contextlib.redirect_stderr(self.err))
        return self

    def __exit__(self, *exc):
        self._stack.close()


def test_demo_without_data_or_network_fits_a_simulated_field(simulated_demo):
    jsonschema = pytest.importorskip("jsonschema")
    code, out, captured = simulated_demo
    assert code == 0
    printed = captured.out.getvalue()
    assert "data: simulated field (seed 0, quick)" in printed
    summary = json.loads((out / "summary.json").read_text())
    jsonschema.validate(summary, mp.field.summary_schema())  # the summary of `fit`
    assert summary["data"] == "simulated field (seed 0, quick)"
    assert summary["frame"]["channels"] == ["F814W", "g", "r", "i", "z", "y"]
    assert summary["map"]["converged"]
    for name in ("sources.ecsv", "scene.npz", "fit.npz", "posterior.nc", "scene_HSC.png"):
        assert (out / name).is_file(), name
    assert not (out / "model_cube").exists() and "chi2 per degree" not in printed


def test_demo_falls_back_to_the_simulated_field(no_data, capsys):
    """``--field auto`` without data or network: says so, then takes the simulated field."""
    args = cli._parser().parse_args(["demo", "--out", "x"])
    hst, hsc, description, truth = cli._load_field(args)
    err = capsys.readouterr().err
    assert "could not download" in err and "simulated" in err
    assert description == "simulated field (seed 0)" and len(truth["shift_native_px"]) == 2
    assert hst.shape == (1, 80, 80) and hsc.shape == (5, 18, 18)  # cli.DEMO_FIELD


def test_quick_refuses_cosmos():
    args = cli._parser().parse_args(["demo", "--out", "x", "--quick", "--field", "cosmos"])
    with pytest.raises(ValueError, match="--quick runs on the simulated field"):
        cli._load_field(args)


def test_demo_recovers_the_injected_shift(simulated_demo):
    """Within 3 posterior sd of the truth the simulator drew, and printed."""
    _, out, captured = simulated_demo
    summary = json.loads((out / "summary.json").read_text())
    true = np.asarray(summary["truth"]["shift_native_px"])  # the simulator's own draw
    shift = summary["shift"]["HSC"]
    sd = np.asarray(shift["sd_native_px"])
    assert shift["sd_method"] == "laplace"  # marginal; NUTS held the morphologies
    assert np.all(sd > 0)
    assert np.all(np.abs(np.asarray(shift["native_px"]) - true) < 3 * sd)
    printed = captured.out.getvalue()
    assert "shift of HSC" in printed and "true shift" in printed
    assert "fluxes against the truth" in printed
    # 4 x (30 + 30) draws cannot mix: the demo says so rather than hiding it
    assert "NUTS (morphologies held at the MAP), fluxes and shift: max r_hat" in printed
    assert "NOT mixed" in printed


def test_demo_matches_every_true_galaxy(simulated_demo):
    """Each simulated galaxy has a fitted source within 0.1 arcsec, with its fluxes."""
    _, out, _ = simulated_demo
    summary = json.loads((out / "summary.json").read_text())
    galaxies = summary["truth_comparison"]["galaxies"]
    assert len(galaxies) == len(summary["truth"]["fluxes"])
    for galaxy in galaxies:
        assert galaxy["separation_arcsec"] < 0.1
        for band in ("F814W", "g", "r", "i", "z", "y"):
            entry = galaxy["flux"][band]
            assert entry["sd"] > 0 and np.isfinite(entry["z"])


def test_bad_data_dir(tmp_path, capsys):
    code = cli.main(["demo", "--out", str(tmp_path / "out"), "--data-dir", str(tmp_path)])
    assert code != 0
    assert "Cut_HSC.fits" in capsys.readouterr().err
