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
def test_demo_runs_and_writes_a_summary(tmp_path, capsys, shared_data_dir):
    out = tmp_path / "results"
    code = cli.main(
        ["demo", "--out", str(out), "--data-dir", str(shared_data_dir), "--repeat", "2", "--no-fit"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    shape = tuple(summary["frame"]["shape"])
    assert shape[0] == 6
    assert str(shape) in printed
    assert summary["frame"]["channels"] == ["F814W", "g", "r", "i", "z", "y"]
    assert set(summary["observations"]) == {"HST", "HSC"}
    assert set(summary["chi2"]) == {"F814W", "g", "r", "i", "z", "y"}
    for band in summary["chi2"].values():
        assert band["chi2_per_dof"] > 0
    for obs in summary["observations"].values():
        assert obs["match_s"] > 0 and obs["steady_render_s"] > 0
    assert "chi2 per degree of freedom" in printed


@pytest.mark.slow
@pytest.mark.data
def test_demo_fit_writes_results(tmp_path, capsys, shared_data_dir):
    out = tmp_path / "results"
    args = ["demo", "--out", str(out), "--data-dir", str(shared_data_dir), "--repeat", "1"]
    # 10 steps: the flow end to end, cut short (the full demo reaches the mode in ~150
    # steps; docs/inference.md): it must say the fit is unconverged and give no error bar
    with pytest.warns(mp.MobsPplWarning, match="decrement"):
        code = cli.main([*args, "--max-iter", "10", "--samples", "0"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    fit = summary["fit"]
    assert fit["sources"] >= 5
    assert set(fit["chi2_per_dof"]) == {"F814W", "g", "r", "i", "z", "y"}
    assert len(fit["shift_native_px"]) == 2
    assert not fit["map_converged"] and fit["map_iterations"] == 10
    assert np.all(np.isnan(fit["shift_native_sd_px"]))
    for name in ("scene.npz", "fit.npz", "scene_coarse_native.png"):
        assert (out / name).is_file(), name
    printed = capsys.readouterr().out
    assert "shift of HSC" in printed and "no error bar" in printed
    assert "detected jointly" in printed


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


def test_demo_without_data_or_network_runs_on_a_simulated_field(tmp_path, capsys, no_data):
    out = tmp_path / "out"
    code = cli.main(["demo", "--out", str(out), "--repeat", "1", "--no-fit"])
    assert code == 0
    captured = capsys.readouterr()
    assert "could not download" in captured.err and "simulated" in captured.err
    assert "data: simulated field (seed 0)" in captured.out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"] == "simulated field (seed 0)"
    assert len(summary["truth"]["shift_native_px"]) == 2
    assert summary["frame"]["channels"] == ["F814W", "g", "r", "i", "z", "y"]
    # the rendering stage's crude cube (HST pixels scaled per band) cannot fit HSC, but
    # every band's chi2 is finite and positive
    assert all(0 < band["chi2_per_dof"] < np.inf for band in summary["chi2"].values())
    assert not (out / "summary.json.partial").exists()


def test_bad_data_dir(tmp_path, capsys):
    code = cli.main(["demo", "--out", str(tmp_path / "out"), "--data-dir", str(tmp_path)])
    assert code != 0
    assert "Cut_HSC.fits" in capsys.readouterr().err
