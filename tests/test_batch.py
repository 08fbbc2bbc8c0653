"""``mobs-ppl batch``: a manifest of tiny simulated fields on a Dask LocalCluster.

The slow test is the issue's acceptance, in three runs of the command line that share
their fits (a fresh cluster compiles the fit once per worker, ~20-60 s on 2 busy cores):
8 fields, one with a truncated data file, interrupted once 3 summaries exist, resumed
(7 summaries, the error recorded, finished fields untouched), then resumed again with
the file repaired (8 summaries). The other tests need no fit.
"""

import datetime
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from mobs_ppl import batch, cli
from test_cli_fit import FIELD, _simulate

#: few Newton steps: a fit is a few seconds once compiled (convergence is not the point)
TINY_FIELD = FIELD.replace("max_iter = 100", "max_iter = 5")


def _fields(root: pathlib.Path, names, text: str = TINY_FIELD) -> pathlib.Path:
    """One simulated field per name in ``root/NAME/``, and ``root/manifest.toml``."""
    tables = []
    for name in names:
        folder = root / name
        folder.mkdir(parents=True)
        _simulate(folder)
        (folder / "field.toml").write_text(text)
        tables.append(f'[[field]]\nname = "{name}"\nconfig = "{name}/field.toml"\n')
    manifest = root / "manifest.toml"
    manifest.write_text("\n".join(tables))
    return manifest


def _corrupt(path: pathlib.Path) -> None:
    """Truncate a FITS file inside its first header block (2880 bytes)."""
    path.write_bytes(path.read_bytes()[:500])


def _cli(*argv, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mobs_ppl.cli", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _summaries(out: pathlib.Path) -> set[str]:
    return {p.parent.name for p in out.glob("*/summary.json")}


def _run_ids(out: pathlib.Path, names) -> dict[str, tuple[str, int]]:
    """Per field: the run id in its marker and the summary's modification time (ns)."""
    return {
        n: (
            json.loads((out / n / "run.json").read_text())["run_id"],
            (out / n / "summary.json").stat().st_mtime_ns,
        )
        for n in names
    }


# -- the acceptance: 8 fields, 2 workers, a corrupt file, an interruption ----------------


@pytest.mark.slow
def test_batch_survives_a_bad_field_and_an_interruption(tmp_path):
    names = [f"field{k}" for k in range(8)]
    manifest = _fields(tmp_path, names)
    bad = "field3"
    _corrupt(tmp_path / bad / "hst.fits")
    out = tmp_path / "out"
    argv = ["batch", str(manifest), "--out", str(out), "--workers", "2"]

    # 1. interrupted (Ctrl-C to the command) once at least 3 fields are finished
    process = subprocess.Popen(
        [sys.executable, "-m", "mobs_ppl.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: killed as a whole if it hangs
    )
    try:
        deadline = time.monotonic() + 400
        while len(_summaries(out)) < 3 and process.poll() is None:
            assert time.monotonic() < deadline, "no 3 summaries in 400 s"
            time.sleep(0.05)
        finished = _summaries(out)
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == cli.INTERRUPTED, output
    assert 3 <= len(finished) < 7, f"the batch was not interrupted half way: {finished}"
    first = _run_ids(out, _summaries(out))
    interrupted = json.loads((out / "batch.json").read_text())
    statuses = {f["name"]: f["status"] for f in interrupted["fields"]}
    # batch.json agrees with the disk (a fit running when Ctrl-C came may still finish
    # while the cluster closes)
    assert finished <= set(first)
    assert {n for n, s in statuses.items() if s == "done"} == set(first)
    assert "not run" in statuses.values()

    # 2. resumed: the finished fields are skipped, the others fitted; the bad one fails
    resumed = _cli(*argv)
    assert resumed.returncode == 1, resumed.stdout + resumed.stderr
    assert "1 of 8 fields failed" in resumed.stderr
    assert _summaries(out) == set(names) - {bad}
    assert _run_ids(out, first) == first  # not redone: same run ids, files untouched
    report = json.loads((out / "batch.json").read_text())
    status = {f["name"]: f["status"] for f in report["fields"]}
    assert {n for n, s in status.items() if s == "skipped"} == set(first)
    assert {n for n, s in status.items() if s == "failed"} == {bad}
    assert report["counts"] == {
        "done": 7 - len(first),
        "skipped": len(first),
        "failed": 1,
        "not run": 0,
    }
    assert report["fields_per_minute"] > 0
    assert [p.name for p in (out / bad).iterdir()] == ["error.json"]
    error = json.loads((out / bad / "error.json").read_text())
    assert "hst.fits" in error["message"] and error["type"]
    assert "Traceback" in error["traceback"]
    datetime.datetime.fromisoformat(error["time"])
    for line in resumed.stdout.splitlines()[-12:]:  # the table: field, status, wall s
        if line.startswith(bad + " "):
            assert line.split()[1] == "failed"

    # 3. the file repaired: only that field is fitted, its error.json replaced
    for p in (tmp_path / bad).glob("*.fits"):
        p.unlink()
    _simulate(tmp_path / bad)
    before = _run_ids(out, set(names) - {bad})
    repaired = _cli(*argv)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert _summaries(out) == set(names)  # 8 summaries
    assert not (out / bad / "error.json").exists()
    assert _run_ids(out, before) == before
    counts = json.loads((out / "batch.json").read_text())["counts"]
    assert counts == {"done": 1, "skipped": 7, "failed": 0, "not run": 0}


# -- failures and restarts without a fit --------------------------------------------------


def test_failed_fields_are_recorded_and_the_exit_status_says_so(tmp_path, capsys):
    """Both fields' data are corrupt: the workers fail at reading (no compilation)."""
    manifest = _fields(tmp_path, ["a", "b"])
    for name in ("a", "b"):
        _corrupt(tmp_path / name / "hsc.fits")
    out = tmp_path / "out"
    code = cli.main(["batch", str(manifest), "--out", str(out), "--workers", "2"])
    captured = capsys.readouterr()
    assert code == 1
    assert "2 of 2 fields failed" in captured.err
    for name in ("a", "b"):
        error = json.loads((out / name / "error.json").read_text())
        assert "hsc.fits" in error["message"]
        assert not (out / name / "summary.json").exists()
    report = json.loads((out / "batch.json").read_text())
    assert report["counts"]["failed"] == 2 and report["fields_per_minute"] is None


def test_finished_fields_are_skipped_without_a_cluster(tmp_path, monkeypatch):
    manifest = _fields(tmp_path, ["a", "b"])
    out = tmp_path / "out"
    for name in ("a", "b"):
        (out / name).mkdir(parents=True)
        (out / name / "summary.json").write_text("{}")

    def no_cluster(*args):
        raise AssertionError("a cluster was started for finished fields")

    monkeypatch.setattr(batch, "_cluster", no_cluster)
    result = batch.run_batch(manifest, out, progress=False)
    assert [f.status for f in result.fields] == ["skipped", "skipped"]
    assert result.count("skipped") == 2 and result.fields_per_minute is None
    assert "2 skipped" in result.table()
    assert json.loads((out / "batch.json").read_text())["counts"]["skipped"] == 2


def test_only_an_error_file_lets_a_field_be_refitted(tmp_path):
    folder = tmp_path / "f"
    assert not batch._holds_only_error(folder)  # absent
    folder.mkdir()
    (folder / "error.json").write_text("{}")
    assert batch._holds_only_error(folder)
    (folder / "notes.txt").write_text("mine")
    assert not batch._holds_only_error(folder)  # other content: fit_field refuses it


# -- the manifest -------------------------------------------------------------------------


def _manifest(tmp_path, text: str) -> pathlib.Path:
    (tmp_path / "field.toml").write_text(TINY_FIELD)
    path = tmp_path / "manifest.toml"
    path.write_text(text)
    return path


def test_manifest_paths_are_relative_to_it(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "f.toml").write_text(TINY_FIELD)
    path = _manifest(tmp_path, '[[field]]\nname = "x.1-a_b"\nconfig = "sub/f.toml"\n')
    assert batch.load_manifest(path) == (
        batch.FieldEntry("x.1-a_b", (tmp_path / "sub" / "f.toml").resolve()),
    )


@pytest.mark.parametrize(
    ("text", "kind", "message"),
    [
        ("[[field]\n", ValueError, "manifest.toml: not valid TOML"),
        ("", ValueError, "the manifest needs the key 'field'"),
        ("field = []\n", ValueError, r"at least one \[\[field\]\] is needed"),
        ("field = 3\n", TypeError, r"field in the manifest must be an array of tables"),
        ("[[fields]]\n", ValueError, "unknown key 'fields' in the manifest; valid keys: field"),
        (
            '[[field]]\nname = "a"\nconfig = "field.toml"\nconfg = 1\n',
            ValueError,
            r"unknown key 'confg' in \[\[field\]\] #1 \('a'\); valid keys: name, config",
        ),
        ('[[field]]\nname = "a"\n', ValueError, r"#1 \('a'\) needs the key 'config'"),
        ('[[field]]\nconfig = "field.toml"\n', ValueError, "needs the key 'name'"),
        (
            '[[field]]\nname = "a b"\nconfig = "field.toml"\n',
            ValueError,
            "must be letters, digits",
        ),
        (
            '[[field]]\nname = "batch.json"\nconfig = "field.toml"\n',
            ValueError,
            "cannot be 'batch.json'",
        ),
        ('[[field]]\nname = 1\nconfig = "field.toml"\n', TypeError, "name in .* must be a string"),
        (
            '[[field]]\nname = "a"\nconfig = "nope.toml"\n',
            FileNotFoundError,
            r"config in \[\[field\]\] #1 \('a'\): no such file .*nope.toml",
        ),
        (
            '[[field]]\nname = "a"\nconfig = "field.toml"\n'
            '[[field]]\nname = "A"\nconfig = "field.toml"\n',
            ValueError,
            "field names must be unique .*'a' and 'A'",
        ),
    ],
)
def test_bad_manifest_is_named(tmp_path, text, kind, message):
    with pytest.raises(kind, match=message):
        batch.load_manifest(_manifest(tmp_path, text))


def test_missing_manifest(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="no such manifest .*absent.toml"):
        batch.load_manifest(tmp_path / "absent.toml")
    # the command line: one error line, exit status 1, nothing written
    out = tmp_path / "out"
    assert cli.main(["batch", str(tmp_path / "absent.toml"), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such manifest" in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("kwargs", "kind", "message"),
    [
        ({"scheduler": "tcp://127.0.0.1:1", "workers": 2}, ValueError, "workers applies to"),
        ({"workers": 0}, ValueError, "workers must be at least 1"),
        ({"workers": 1.5}, TypeError, "workers"),
        ({"scheduler": ""}, TypeError, "scheduler must be 'local' or a scheduler address"),
        ({"scheduler": None}, TypeError, "scheduler must be 'local' or a scheduler address"),
        (
            {"scheduler": "tcp://127.0.0.1:1", "cores_per_worker": 1},
            ValueError,
            "cores_per_worker applies to",
        ),
        ({"cores_per_worker": 0}, ValueError, "cores_per_worker must be at least 1"),
        (
            {"workers": len(batch._usable_cores()) + 1, "cores_per_worker": 1},
            ValueError,
            "cores; this process may use",
        ),
    ],
)
def test_bad_arguments_are_named(tmp_path, kwargs, kind, message):
    path = _manifest(tmp_path, '[[field]]\nname = "a"\nconfig = "field.toml"\n')
    with pytest.raises(kind, match=message):
        batch.run_batch(path, tmp_path / "out", progress=False, **kwargs)
    assert not (tmp_path / "out").exists()  # refused before anything is written


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux CPU affinity")
def test_pinned_workers_run_on_cores_of_their_own():
    """Each local worker, bound to one core, reports (from the OS) a core of its own."""
    cores = batch._usable_cores()
    n = min(2, len(cores))
    client, closers = batch._cluster("local", n, n, cores_per_worker=1)
    try:
        seen = client.run(lambda: sorted(os.sched_getaffinity(0)))
        # and a thread the worker starts later inherits the binding
        later = client.run(_affinity_of_a_new_thread)
    finally:
        for closer in closers:
            closer.close()
    assert len(seen) == n
    assert all(len(c) == 1 for c in seen.values()), seen
    assert len({c[0] for c in seen.values()}) == n, seen  # no two share a core
    assert later == seen


def _affinity_of_a_new_thread():
    import threading

    found = []
    thread = threading.Thread(target=lambda: found.append(sorted(os.sched_getaffinity(0))))
    thread.start()
    thread.join()
    return found[0]


@pytest.mark.parametrize("option", ["--workers", "--cores-per-worker"])
def test_counts_must_be_positive_on_the_command_line(tmp_path, capsys, option):
    with pytest.raises(SystemExit):
        cli.main(["batch", "m.toml", "--out", str(tmp_path), option, "0"])
    assert f"{option}: must be at least 1" in capsys.readouterr().err


def test_cores_per_worker_reaches_run_batch(tmp_path, capsys):
    """The command line passes --cores-per-worker on (checked before any cluster starts)."""
    manifest = _manifest(tmp_path, '[[field]]\nname = "a"\nconfig = "field.toml"\n')
    too_many = str(len(batch._usable_cores()) + 1)
    argv = ["batch", str(manifest), "--out", str(tmp_path / "out"), "--workers", too_many]
    assert cli.main([*argv, "--cores-per-worker", "1"]) == 1
    assert "cores; this process may use" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
