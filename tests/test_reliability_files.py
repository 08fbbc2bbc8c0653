"""Files on disk: atomic writes, whole results folders, checked loaders, checked data.

* A failed write (here: the file-size limit of the process is hit half-way) leaves the
  previous file as it was, and no temporary file behind.
* A results folder is replaced as a whole by the next run, carries a ``run.json``
  marker, survives an interrupted run intact, and a folder with other content is
  refused unless overwriting is asked for.
* ``load_scene``, ``load_fit`` and ``load_posterior`` refuse missing, truncated, foreign,
  oversized and out-of-support files with errors that name the file and the entry.
* The COSMOS files are hash-checked wherever they come from (opt-out for a user's own
  files), and a truncated FITS file is named as such.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
from astropy.utils.exceptions import AstropyUserWarning

import mobs_ppl as mp
from mobs_ppl import atomic, cli, datasets
from mobs_ppl.psf import gaussian_psf


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _small_scene(spectrum=(2.0,)) -> mp.Scene:
    frame = mp.Frame((1, 16, 16), psf=gaussian_psf(0.9))
    return mp.Scene(frame, [mp.PointSource((7.6, 8.2), list(spectrum), box_size=7)])


def _idata(n_draws: int, value: float = 1.0):
    import arviz as az

    rng = np.random.default_rng(0)
    return az.from_dict(posterior={"spectrum": value + rng.random((2, n_draws))})


# -- atomic writes ---------------------------------------------------------------------

_OVERWRITE_UNDER_A_SIZE_LIMIT = textwrap.dedent(
    """
    import json, os, pathlib, resource, signal, sys

    import numpy as np

    import arviz as az
    import matplotlib.figure

    import mobs_ppl as mp
    from mobs_ppl import atomic

    folder = pathlib.Path(sys.argv[1])
    rng = np.random.default_rng(1)
    # each new file is far larger than the 16 kB limit set below
    big_scene = mp.Scene(
        mp.Frame((1, 100, 100)),
        [mp.Source((50.0, 50.0), [1.0], np.full((90, 90), 0.25), prior="uniform")],
    )
    idata = az.from_dict(posterior={"spectrum": 1.0 + rng.random((2, 20000))})
    fig = matplotlib.figure.Figure(figsize=(8, 8))
    fig.add_subplot().imshow(rng.random((400, 400)))
    writers = {
        "scene.npz": lambda p: mp.save_scene(p, big_scene),
        "posterior.nc": lambda p: mp.save_posterior(p, idata),
        "summary.json": lambda p: atomic.write_text(p, "x" * 100000),
        "plot.png": lambda p: atomic.save_figure(fig, p, dpi=100),
    }
    # writes past 16 kB now fail with EFBIG (an OSError) instead of killing the process
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))
    raised, kept = {}, []
    for name, write in writers.items():
        try:
            write(folder / name)
        except Exception as err:
            raised[name] = type(err).__name__
            # h5py may crash freeing the objects of a failed write: keep them alive
            # and leave with os._exit below
            kept.append(err)
    try:  # control: a plain overwrite in place is damaged by the same limit
        (folder / "control.bin").write_bytes(b"y" * 100000)
    except OSError as err:
        raised["control.bin"] = type(err).__name__
    print(json.dumps(raised), flush=True)
    os._exit(0)
    """
)


def test_a_failed_overwrite_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    import matplotlib.figure

    folder = tmp_path / "results"
    folder.mkdir()
    mp.save_scene(folder / "scene.npz", _small_scene((2.5,)))
    mp.save_posterior(folder / "posterior.nc", _idata(10, value=3.0))
    (folder / "summary.json").write_text('{"good": true}\n')
    fig = matplotlib.figure.Figure(figsize=(1, 1))
    fig.savefig(folder / "plot.png", format="png", dpi=20)
    (folder / "control.bin").write_bytes(b"x" * 1000)
    before = {p.name: _sha(p) for p in folder.iterdir()}

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "JAX_PLATFORMS": "cpu",
        "MPLBACKEND": "Agg",
    }
    done = subprocess.run(
        [sys.executable, "-c", _OVERWRITE_UNDER_A_SIZE_LIMIT, str(folder)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    raised = json.loads(done.stdout.strip().splitlines()[-1])
    # every write failed, and the limit damages a plain in-place write (the control)
    assert set(raised) == {"scene.npz", "posterior.nc", "summary.json", "plot.png", "control.bin"}
    assert raised["scene.npz"] == "OSError" and raised["summary.json"] == "OSError"
    assert _sha(folder / "control.bin") != before["control.bin"]
    after = {p.name: _sha(p) for p in folder.iterdir()}
    assert after.keys() == before.keys()  # no temporary file left behind
    for name in ("scene.npz", "posterior.nc", "summary.json", "plot.png"):
        assert after[name] == before[name], name
    scene = mp.load_scene(folder / "scene.npz")
    np.testing.assert_array_equal(np.asarray(scene.sources[0].spectrum), [2.5])
    posterior = mp.load_posterior(folder / "posterior.nc")
    assert posterior.posterior["spectrum"].shape == (2, 10)
    assert json.loads((folder / "summary.json").read_text()) == {"good": True}


def test_atomic_path_removes_its_temporary_file_on_interrupt(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic.atomic_path(target) as tmp:
        tmp.write_text("half of the new")
        raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_atomic_files_get_the_permissions_of_an_ordinary_new_file(tmp_path):
    (tmp_path / "plain.txt").write_text("x")  # the reference: open() under the umask
    atomic.write_text(tmp_path / "atomic.txt", "x")
    mode = os.stat(tmp_path / "plain.txt").st_mode
    assert os.stat(tmp_path / "atomic.txt").st_mode == mode


# -- results folders --------------------------------------------------------------------


def _marker(folder):
    return json.loads((folder / "run.json").read_text())


def test_a_results_folder_records_its_run_and_is_replaced_as_a_whole(tmp_path):
    out = tmp_path / "results"
    with atomic.staged_folder(out) as staged:
        assert staged.target == out and staged.path != out
        (staged.path / "old_only.txt").write_text("1")
        (staged.path / "shared.txt").write_text("first")
    first = _marker(out)
    assert first["format"] == "mobs_ppl.results"
    assert first["mobs_ppl_version"] == mp.__version__
    assert len(first["run_id"]) == 32 and first["created"].endswith("+00:00")
    assert first["files"] == ["old_only.txt", "shared.txt"]
    with atomic.staged_folder(out) as staged:
        (staged.path / "shared.txt").write_text("second")
    assert sorted(p.name for p in out.iterdir()) == ["run.json", "shared.txt"]
    assert (out / "shared.txt").read_text() == "second"
    assert _marker(out)["run_id"] != first["run_id"]
    assert [p.name for p in tmp_path.iterdir()] == ["results"]  # no staging left


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, RuntimeError])
def test_an_interrupted_run_leaves_the_old_folder_intact(tmp_path, interruption):
    out = tmp_path / "results"
    with atomic.staged_folder(out) as staged:
        (staged.path / "scene.npz").write_text("old results")
    before = {p.name: _sha(p) for p in out.iterdir()}
    with pytest.raises(interruption), atomic.staged_folder(out) as staged:
        (staged.path / "scene.npz").write_text("half of the new")
        raise interruption("stop")
    assert {p.name: _sha(p) for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["results"]


def test_a_discarded_run_leaves_the_old_folder_intact(tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"format": "mobs_ppl.results"}))
    with atomic.staged_folder(out) as staged:
        (staged.path / "summary.json").write_text("{}")
        staged.discard()
    assert [p.name for p in out.iterdir()] == ["run.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["results"]


def test_a_folder_with_other_content_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    refused = pytest.raises(FileExistsError, match="not a mobs_ppl results folder")
    with refused as info, atomic.staged_folder(out):
        raise AssertionError("must be refused before the block runs")
    assert "overwrite=True" in str(info.value) and "--overwrite" in str(info.value)
    assert (out / "thesis.tex").read_text() == "precious"
    # a marker that is not ours does not count
    (out / "run.json").write_text('{"format": "something else"}')
    with pytest.raises(FileExistsError, match="run.json"):
        atomic.check_replaceable(out)
    with atomic.staged_folder(out, overwrite=True) as staged:
        (staged.path / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt", "run.json"]


def test_an_empty_folder_is_accepted_and_a_file_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with atomic.staged_folder(tmp_path / "empty") as staged:
        (staged.path / "a.txt").write_text("a")
    assert (tmp_path / "empty" / "a.txt").is_file()
    (tmp_path / "afile").write_text("data")
    with pytest.raises(FileExistsError, match="a file without"):
        atomic.check_replaceable(tmp_path / "afile")


def test_nested_staging_writes_into_the_enclosing_folder(tmp_path):
    out = tmp_path / "results"
    with atomic.staged_folder(out) as outer:
        with atomic.staged_folder(outer.path) as inner:
            assert inner.path == outer.path and inner.target == out
            (inner.path / "fit.npz").write_text("fit")
        (outer.path / "summary.json").write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == ["fit.npz", "run.json", "summary.json"]
    assert _marker(out)["files"] == ["fit.npz", "summary.json"]


def test_joint_fit_refuses_a_foreign_folder_before_any_work(tmp_path):
    from mobs_ppl.workflow import joint_fit

    (tmp_path / "notes.txt").write_text("mine")
    # the observations are not even looked at: the refusal comes first
    with pytest.raises(FileExistsError, match="not a mobs_ppl results folder"):
        joint_fit(object(), object(), out_dir=tmp_path)


def test_demo_refuses_a_foreign_out_folder(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    code = cli.main(["demo", "--out", str(tmp_path), "--field", "simulated"])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("mobs-ppl: error:") and "--overwrite" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.fixture
def fake_run(monkeypatch):
    """Replace the demo's work by ``behaviour(out_dir)``; returns the setter."""

    def install(behaviour):
        monkeypatch.setattr(cli, "_run_demo", lambda args, out_dir: behaviour(out_dir))

    return install


def _write_summary(out_dir):
    atomic.write_text(out_dir / "summary.json", "{}\n")
    return 0


def test_demo_replaces_its_previous_results_folder(tmp_path, fake_run, capsys):
    out = tmp_path / "results"
    with atomic.staged_folder(out) as staged:
        (staged.path / "stale.png").write_text("old")
    fake_run(_write_summary)
    assert cli.main(["demo", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["run.json", "summary.json"]
    assert f"wrote {out / 'summary.json'}" in capsys.readouterr().out


def test_demo_overwrite_flag_replaces_a_foreign_folder(tmp_path, fake_run):
    (tmp_path / "notes.txt").write_text("mine")
    fake_run(_write_summary)
    assert cli.main(["demo", "--out", str(tmp_path), "--overwrite"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json", "summary.json"]


@pytest.mark.parametrize("outcome", ["interrupt", "failure code"])
def test_an_interrupted_or_failed_demo_leaves_the_old_results(tmp_path, fake_run, outcome):
    out = tmp_path / "results"
    with atomic.staged_folder(out) as staged:
        (staged.path / "summary.json").write_text('{"old": 1}')
    before = {p.name: _sha(p) for p in out.iterdir()}

    def run(out_dir):
        (out_dir / "summary.json").write_text('{"new": 1}')
        if outcome == "interrupt":
            raise KeyboardInterrupt
        return 1

    fake_run(run)
    args = cli._parser().parse_args(["demo", "--out", str(out)])
    if outcome == "interrupt":
        with pytest.raises(KeyboardInterrupt):
            cli._demo(args)
    else:
        assert cli._demo(args) == 1
    assert {p.name: _sha(p) for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["results"]


# -- loaders ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model():
    """A 16 x 16 observation of one point source: a model with spectrum and centre sites."""
    scene = _small_scene()
    observation = mp.Observation(
        np.zeros((1, 16, 16)), weights=1.0, psf=gaussian_psf(1.0), channels=["0"], name="obs"
    ).match(scene.frame)
    return mp.SceneModel(scene, [observation])


def _fit_file(model, path) -> dict:
    fit = mp.MAPResult(
        model=model,
        params=model.init_values(),
        losses=np.array([3.0, 2.0]),
        best_iteration=1,
        converged=False,
    )
    mp.save_fit(path, fit)
    with np.load(path) as archive:
        return {k: archive[k] for k in archive.files}


def _scene_file(path, scene=None) -> dict:
    mp.save_scene(path, scene or _small_scene())
    with np.load(path) as archive:
        return {k: archive[k] for k in archive.files}


@pytest.mark.parametrize("kind", ["scene", "fit", "posterior"])
def test_a_missing_file_is_named(tmp_path, tiny_model, kind):
    path = tmp_path / "nothing_here"
    load = {
        "scene": mp.load_scene,
        "fit": lambda p: mp.load_fit(p, tiny_model),
        "posterior": mp.load_posterior,
    }[kind]
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        load(path)


@pytest.mark.parametrize("damage", ["truncated", "text", "empty"])
def test_a_damaged_npz_is_not_a_valid_file(tmp_path, tiny_model, damage):
    good = tmp_path / "good.npz"
    content = _scene_file(good)
    bad = tmp_path / "bad.npz"
    raw = good.read_bytes()
    bad.write_bytes(
        {"truncated": raw[: len(raw) // 2], "text": b"format = scene\n", "empty": b""}[damage]
    )
    with pytest.raises(ValueError, match=r"bad\.npz.*is not a valid mobs_ppl\.scene file"):
        mp.load_scene(bad)
    np.savez(bad, **{k: v for k, v in _fit_file(tiny_model, tmp_path / "f.npz").items()})
    raw = bad.read_bytes()
    bad.write_bytes(raw[: len(raw) - 100])
    with pytest.raises(ValueError, match="not a complete .npz archive"):
        mp.load_fit(bad, tiny_model)
    assert content["format"] == "mobs_ppl.scene"


def test_a_corrupted_member_is_refused(tmp_path):
    good = tmp_path / "good.npz"
    _scene_file(good)
    raw = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as archive:
        info = archive.getinfo("frame_psf.npy")
    # flip a byte in the middle of the stored PSF array: the CRC no longer matches
    offset = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.file_size // 2
    raw[offset] ^= 0xFF
    (tmp_path / "bad.npz").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"bad\.npz.*not a complete .npz archive.*CRC"):
        mp.load_scene(tmp_path / "bad.npz")


def test_foreign_npz_files_are_refused(tmp_path):
    np.savez(tmp_path / "foreign.npz", data=np.zeros(3))
    with pytest.raises(ValueError, match=r"foreign\.npz.*format key: None.*save_scene"):
        mp.load_scene(tmp_path / "foreign.npz")
    content = _scene_file(tmp_path / "scene.npz")
    np.savez(tmp_path / "v99.npz", **{**content, "version": np.asarray(99)})
    with pytest.raises(ValueError, match=r"v99\.npz.*version 99.*reads versions \(1, 2\)"):
        mp.load_scene(tmp_path / "v99.npz")
    np.savez(tmp_path / "vlist.npz", **{**content, "version": np.asarray([2, 2])})
    with pytest.raises(ValueError, match=r"entry 'version' must be a single int"):
        mp.load_scene(tmp_path / "vlist.npz")
    np.savez(tmp_path / "noversion.npz", **{k: v for k, v in content.items() if k != "version"})
    with pytest.raises(ValueError, match="version None"):
        mp.load_scene(tmp_path / "noversion.npz")
    with zipfile.ZipFile(tmp_path / "notnpy.npz", "w") as archive:
        archive.writestr("format.txt", "mobs_ppl.scene")
    with pytest.raises(ValueError, match=r"entry 'format.txt' is not a NumPy array"):
        mp.load_scene(tmp_path / "notnpy.npz")


def test_a_small_file_that_would_expand_hugely_is_refused_before_expanding(tmp_path, monkeypatch):
    path = tmp_path / "bomb.npz"
    archive = zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1)
    with archive, archive.open("frame_psf.npy", "w", force_zip64=True) as f:
        header = {"descr": "<f8", "fortran_order": False, "shape": (200 * 2**17,)}
        np.lib.format.write_array_header_1_0(f, header)
        chunk = bytes(2**20)
        for _ in range(200):  # 200 MB of zeros, under 1 MB on disk
            f.write(chunk)
    assert path.stat().st_size < 2**20

    def no_reading(*args, **kwargs):
        raise AssertionError("an entry was read before the sizes were checked")

    monkeypatch.setattr(np.lib.format, "read_array", no_reading)
    with pytest.raises(ValueError, match=r"bomb\.npz.*would expand to 209715\d\d\d bytes"):
        mp.load_scene(path)


def test_an_entry_whose_header_claims_a_huge_shape_is_refused(tmp_path, monkeypatch):
    content = _scene_file(tmp_path / "scene.npz")
    path = tmp_path / "liar.npz"
    np.savez(path, **content)
    with zipfile.ZipFile(path, "a") as zf, zf.open("frame_psf_big.npy", "w") as f:
        header = {"descr": "<f8", "fortran_order": False, "shape": (10**9,)}
        np.lib.format.write_array_header_1_0(f, header)
        f.write(np.zeros(10).tobytes())
    with pytest.raises(ValueError, match=r"entry 'frame_psf_big' declares shape \(1000000000,\)"):
        mp.load_scene(path)


def test_python_objects_are_refused(tmp_path):
    content = _scene_file(tmp_path / "scene.npz")
    np.savez(tmp_path / "pickle.npz", **content, extra=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="entry 'extra' holds Python objects"):
        mp.load_scene(tmp_path / "pickle.npz")


@pytest.mark.parametrize(
    ("entry", "value", "message"),
    [
        ("source_0_spectrum", np.array([-1.0]), r"source 0 .*spectrum must be strictly positive"),
        ("source_0_center", np.array([np.nan, 3.0]), r"entry 'source_0_center' holds NaN"),
        ("frame_psf", np.full((1, 5, 5), np.inf), r"entry 'frame_psf' holds NaN or infinite"),
        ("frame_shape", np.array([1.0, 16.0, 16.0]), r"'frame_shape' must be a 1-d array of int"),
        ("frame_shape", np.array([1, 0, 16]), r"frame entries are not valid: shape"),
        ("n_sources", np.asarray(-1), r"'n_sources' is negative"),
        ("groups", np.array([0, 1]), r"does not make a valid scene: groups"),
    ],
)
def test_scene_values_are_checked(tmp_path, entry, value, message):
    content = _scene_file(tmp_path / "scene.npz")
    np.savez(tmp_path / "bad.npz", **{**content, entry: value})
    with pytest.raises(ValueError, match=r"bad\.npz.*" + message):
        mp.load_scene(tmp_path / "bad.npz")


def test_morphologies_must_lie_in_the_unit_interval(tmp_path):
    frame = mp.Frame((1, 20, 20))
    scene = mp.Scene(frame, [mp.Source((10.0, 10.0), [1.0], np.full((5, 5), 0.5))])
    content = _scene_file(tmp_path / "scene.npz", scene)
    np.savez(tmp_path / "bad.npz", **{**content, "source_0_morphology": np.full((5, 5), 1.5)})
    with pytest.raises(ValueError, match=r"bad\.npz.*source 0 .*inside \(0, 1\)"):
        mp.load_scene(tmp_path / "bad.npz")
    np.savez(tmp_path / "env.npz", **{**content, "source_0_envelope": np.full(6, np.inf)})
    with pytest.raises(ValueError, match=r"env\.npz.*entry 'source_0_envelope' holds NaN"):
        mp.load_scene(tmp_path / "env.npz")


def test_a_scene_file_still_loads_exactly(tmp_path):
    scene = _small_scene((2.5,))
    _scene_file(tmp_path / "scene.npz", scene)
    loaded = mp.load_scene(tmp_path / "scene.npz")
    np.testing.assert_array_equal(np.asarray(loaded.render()), np.asarray(scene.render()))


@pytest.mark.parametrize(
    ("entry", "value", "message"),
    [
        ("param_spectrum", np.array([[-2.0]]), r"'param_spectrum' has values outside .*support"),
        ("param_spectrum", np.array([[np.nan]]), r"'param_spectrum' holds NaN"),
        ("param_center_0", np.array([np.inf, 1.0]), r"'param_center_0' holds NaN"),
        ("param_center_0", np.array(["a", "b"]), r"'param_center_0' must hold floats"),
        ("converged", np.asarray("yes"), r"'converged' must be a single bool"),
        ("best_iteration", np.asarray(1.5), r"'best_iteration' must be a single int"),
        ("losses", np.zeros((2, 2)), r"'losses' must be a 1-d array of numbers"),
        ("param_names", np.asarray("spectrum"), r"'param_names' must be a 1-d array of str"),
    ],
)
def test_fit_values_are_checked_against_the_model(tmp_path, tiny_model, entry, value, message):
    content = _fit_file(tiny_model, tmp_path / "fit.npz")
    np.savez(tmp_path / "bad.npz", **{**content, entry: value})
    with pytest.raises(ValueError, match=r"bad\.npz.*" + message):
        mp.load_fit(tmp_path / "bad.npz", tiny_model)


def test_a_fit_file_still_loads_exactly(tmp_path, tiny_model):
    content = _fit_file(tiny_model, tmp_path / "fit.npz")
    fit = mp.load_fit(tmp_path / "fit.npz", tiny_model)
    for name, value in tiny_model.init_values().items():
        np.testing.assert_array_equal(np.asarray(fit.params[name]), np.asarray(value))
    np.testing.assert_array_equal(fit.losses, [3.0, 2.0])
    assert fit.best_iteration == 1 and fit.converged is False
    assert str(content["format"]) == "mobs_ppl.fit"


def test_posterior_files_are_checked(tmp_path):
    good = tmp_path / "good.nc"
    mp.save_posterior(good, _idata(10))
    assert mp.load_posterior(good).posterior["spectrum"].shape == (2, 10)
    (tmp_path / "text.nc").write_text("not netcdf\n")
    with pytest.raises(ValueError, match=r"text\.nc.*not a valid mobs_ppl posterior.*netCDF"):
        mp.load_posterior(tmp_path / "text.nc")
    raw = good.read_bytes()
    (tmp_path / "cut.nc").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"cut\.nc.*ArviZ cannot read it"):
        mp.load_posterior(tmp_path / "cut.nc")
    mp.save_posterior(tmp_path / "nan.nc", _idata(10, value=np.nan))
    with pytest.raises(ValueError, match=r"nan\.nc.*'spectrum' holds NaN"):
        mp.load_posterior(tmp_path / "nan.nc")
    import arviz as az

    mp.save_posterior(tmp_path / "prior.nc", az.from_dict(prior={"a": np.ones((1, 5))}))
    with pytest.raises(ValueError, match=r"prior\.nc.*no posterior group"):
        mp.load_posterior(tmp_path / "prior.nc")


# -- data files ------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """No data environment variables, an empty user cache, and no download."""

    def refuse(cache):
        raise AssertionError("tests must not download")

    monkeypatch.delenv(datasets.DATA_DIR_ENV, raising=False)
    monkeypatch.delenv(datasets.VERIFY_ENV, raising=False)
    monkeypatch.setattr(datasets, "_cache_dir", lambda: tmp_path / "cache")
    monkeypatch.setattr(datasets, "_fetch", refuse)
    return tmp_path / "cache"


def _copy_cosmos(shared_data_dir, folder):
    folder.mkdir(parents=True)
    for name in datasets.COSMOS_FILES:
        shutil.copy(shared_data_dir / "cosmos_hst_hsc" / name, folder / name)
        os.chmod(folder / name, 0o644)
    return folder


@pytest.mark.data
def test_the_shared_data_pass_the_hash_check(shared_data_dir, no_network):
    folder = shared_data_dir / "cosmos_hst_hsc"
    for name, digest in datasets.COSMOS_FILES.items():
        assert _sha(folder / name) == digest, name  # the registry matches the files
    files = datasets.cosmos_files(shared_data_dir, download=False, verify=True)
    assert files == {name: folder / name for name in datasets.COSMOS_FILES}


@pytest.mark.data
def test_an_altered_file_is_refused_with_both_hashes(
    shared_data_dir, no_network, tmp_path, monkeypatch
):
    folder = _copy_cosmos(shared_data_dir, tmp_path / "mine" / "cosmos_hst_hsc")
    raw = bytearray((folder / "Cut_HSC.fits").read_bytes())
    raw[-100] ^= 0x01  # one bit of one pixel
    (folder / "Cut_HSC.fits").write_bytes(bytes(raw))
    found = hashlib.sha256(bytes(raw)).hexdigest()
    expected = datasets.COSMOS_FILES["Cut_HSC.fits"]
    with pytest.raises(datasets.DataFileError, match="Cut_HSC.fits") as info:
        datasets.load_cosmos(tmp_path / "mine", download=False)
    message = str(info.value)
    assert found in message and expected in message and "verify=False" in message
    assert isinstance(info.value, ValueError) and isinstance(info.value, OSError)
    # the opt-outs: the argument, and the environment variable (the argument wins)
    hst, hsc = datasets.load_cosmos(tmp_path / "mine", download=False, verify=False)
    assert hsc.shape == (5, 50, 50)
    monkeypatch.setenv(datasets.VERIFY_ENV, "0")
    assert datasets.load_cosmos(tmp_path / "mine", download=False)[1].shape == (5, 50, 50)
    with pytest.raises(datasets.DataFileError, match="SHA-256"):
        datasets.load_cosmos(tmp_path / "mine", download=False, verify=True)


@pytest.mark.data
def test_an_altered_cached_file_is_refused(shared_data_dir, no_network):
    _copy_cosmos(shared_data_dir, no_network)
    with open(no_network / "PSF_HST.fits", "ab") as f:
        f.write(b"\0")
    with pytest.raises(datasets.DataFileError, match=r"PSF_HST\.fits.*user cache"):
        datasets.cosmos_files(download=False)


@pytest.mark.data
def test_a_truncated_fits_file_is_named(shared_data_dir, no_network, tmp_path):
    folder = _copy_cosmos(shared_data_dir, tmp_path / "cosmos_hst_hsc")
    raw = (folder / "Cut_HST.fits").read_bytes()
    (folder / "Cut_HST.fits").write_bytes(raw[:100000])
    with pytest.raises(datasets.DataFileError, match="SHA-256"):
        datasets.load_cosmos(folder, download=False)
    with (
        pytest.raises(datasets.DataFileError, match=r"Cut_HST\.fits.*truncated") as info,
        pytest.warns(AstropyUserWarning, match="truncated"),  # astropy's own note
    ):
        datasets.load_cosmos(folder, download=False, verify=False)
    assert "reshape" not in str(info.value)
    (folder / "Cut_HST.fits").write_text("SIMPLE but not FITS\n")
    with pytest.raises(datasets.DataFileError, match=r"Cut_HST\.fits.*not a readable FITS"):
        datasets.load_cosmos(folder, download=False, verify=False)


@pytest.mark.data
def test_demo_names_an_altered_data_file(shared_data_dir, no_network, tmp_path, capsys):
    folder = _copy_cosmos(shared_data_dir, tmp_path / "data" / "cosmos_hst_hsc")
    with open(folder / "Cut_HST.fits", "ab") as f:
        f.write(b"\0")
    out = tmp_path / "out"
    code = cli.main(["demo", "--out", str(out), "--data-dir", str(tmp_path / "data")])
    assert code == 1
    err = capsys.readouterr().err
    assert "Cut_HST.fits" in err and "SHA-256" in err and "Traceback" not in err
    assert not out.exists()
