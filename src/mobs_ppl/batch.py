"""Many fields on a Dask cluster: what ``mobs-ppl batch`` runs.

A *manifest* (TOML) lists the fields, each a field file of :mod:`mobs_ppl.field`::

    [[field]]
    name = "cosmos_1"            # letters, digits, _ . - (it names the results folder)
    config = "cosmos_1/field.toml"   # relative to the manifest

:func:`load_manifest` reads and checks it; :func:`run_batch` fits every field with
:func:`mobs_ppl.field.fit_field`, one Dask task per field, on a ``LocalCluster`` of
single-threaded worker processes or on an existing scheduler given by its address.

Results, per field ``NAME`` in ``OUT``:

* ``OUT/NAME/``: the results folder of :func:`~mobs_ppl.field.fit_field`, written as a
  whole when that field's fit ends (:func:`mobs_ppl.atomic.staged_folder`): a reader
  never sees half of it. A folder holding ``summary.json`` is finished: a later run
  skips it (delete the folder to fit the field again).
* ``OUT/NAME/error.json`` when the field failed (``type``, ``message``, ``traceback``,
  ``time``, ``log``): the other fields go on. A folder holding nothing but
  ``error.json`` is replaced as a whole by the next successful fit of that field, so no
  stale error survives it.
* ``OUT/batch.json``: the status of every field (``done``, ``skipped``, ``failed``, or
  ``not run`` after an interruption), rewritten as each field finishes, and the
  throughput (fields per minute).

The worker task switches JAX to 64 bits and matplotlib to its file-only ``Agg``
backend: the choices of an entry point, made here for the processes that run fits. On
a shared cluster they apply to the worker processes that run these tasks.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pathlib
import sys
import time
import traceback
from collections.abc import Callable

from .field import _NAME, _Table, read_toml

__all__ = ["BatchResult", "FieldEntry", "FieldOutcome", "load_manifest", "run_batch"]

_TOP_KEYS = ("field",)
_FIELD_KEYS = ("name", "config")
#: Written into ``OUT``: no field may be called so.
_BATCH_FILE = "batch.json"
_ERROR_FILE = "error.json"
_SUMMARY_FILE = "summary.json"
_STATUSES = ("done", "skipped", "failed", "not run")


@dataclasses.dataclass(frozen=True)
class FieldEntry:
    """One ``[[field]]`` of a manifest: its name and its field file (absolute path)."""

    name: str
    config: pathlib.Path


@dataclasses.dataclass(frozen=True)
class FieldOutcome:
    """What became of one field in a batch run.

    Attributes
    ----------
    name : str
        The field's name (its results folder is ``OUT/name``).
    status : str
        ``"done"`` (fitted now), ``"skipped"`` (finished earlier), ``"failed"`` (see
        ``error``, also in ``OUT/name/error.json``) or ``"not run"`` (interrupted).
    wall_s : float
        Seconds the fit took on its worker (0 when skipped or not run).
    error : str or None
        ``"Type: message"`` of a failure.
    """

    name: str
    status: str
    wall_s: float = 0.0
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class BatchResult:
    """The outcome of :func:`run_batch`.

    Attributes
    ----------
    fields : tuple of FieldOutcome
        One per manifest entry, in the manifest's order.
    wall_s : float
        Seconds from the first submitted fit to the last finished one (cluster start-up
        excluded; 0 when nothing ran).
    start_s : float
        Seconds to start (or connect to) the cluster.
    """

    fields: tuple[FieldOutcome, ...]
    wall_s: float = 0.0
    start_s: float = 0.0

    def count(self, status: str) -> int:
        """How many fields have ``status`` (``done``, ``skipped``, ``failed``, ``not run``)."""
        if status not in _STATUSES:
            raise ValueError(f"status must be one of {', '.join(_STATUSES)}; got {status!r}")
        return sum(f.status == status for f in self.fields)

    @property
    def fields_per_minute(self) -> float | None:
        """Fields fitted (``done``) per minute of :attr:`wall_s`; None when none ran."""
        done = self.count("done")
        return 60.0 * done / self.wall_s if done and self.wall_s > 0 else None

    def table(self) -> str:
        """A plain-text table: field, status, wall seconds; then the counts."""
        width = max([5, *(len(f.name) for f in self.fields)])
        lines = [f"{'field':<{width}}  {'status':<8}  {'wall s':>8}"]
        for f in self.fields:
            wall = f"{f.wall_s:8.1f}" if f.status in ("done", "failed") else f"{'-':>8}"
            lines.append(f"{f.name:<{width}}  {f.status:<8}  {wall}")
        counts = ", ".join(f"{self.count(s)} {s}" for s in _STATUSES if self.count(s))
        rate = self.fields_per_minute
        speed = f"; {rate:.2f} fields per minute" if rate is not None else ""
        lines.append(f"{counts} in {self.wall_s:.1f} s{speed}")
        return "\n".join(lines)


# -- the manifest -------------------------------------------------------------------------


def load_manifest(path) -> tuple[FieldEntry, ...]:
    """Read and check a batch manifest (TOML).

    Parameters
    ----------
    path : str or path-like
        The manifest: ``[[field]]`` tables with ``name`` (letters, digits, ``_ . -``;
        unique, also ignoring case) and ``config`` (a field file, relative to the
        manifest's folder). The field files themselves are checked when the batch runs,
        each on its own (a bad one fails that field only).

    Returns
    -------
    tuple of FieldEntry
        In the manifest's order.

    Raises
    ------
    FileNotFoundError
        If the manifest or a field file it names does not exist.
    ValueError
        On a TOML syntax error, an unknown or missing key, a bad or repeated name, or
        no ``[[field]]``. Messages name the manifest and the entry.
    TypeError
        If a value has the wrong type.
    """
    file, raw = read_toml(os.fspath(path), "manifest")
    top = _Table(raw, "the manifest", file, _TOP_KEYS, required=("field",))
    tables = top.get("field", list, what="an array of tables [[field]]")
    if not tables:
        top.fail("at least one [[field]] is needed")
    entries = tuple(_entry(values, k, file) for k, values in enumerate(tables, start=1))
    seen: dict[str, str] = {}
    for entry in entries:
        folded = entry.name.casefold()  # folders differing in case collide on some disks
        if folded in seen:
            top.fail(
                f"field names must be unique (ignoring case: they name folders); "
                f"{seen[folded]!r} and {entry.name!r}"
            )
        seen[folded] = entry.name
    return entries


def _entry(values, k: int, file: pathlib.Path) -> FieldEntry:
    where = f"[[field]] #{k}"
    if isinstance(values, dict) and isinstance(values.get("name"), str):
        where += f" ({values['name']!r})"
    table = _Table(values, where, file, _FIELD_KEYS, required=_FIELD_KEYS)
    name = table.get("name", str, what="a string")
    if not _NAME.match(name):
        table.fail(
            f"name in {where} must be letters, digits, '_', '.' or '-' (it names the "
            f"results folder); got {name!r}"
        )
    if name.casefold() == _BATCH_FILE:
        table.fail(f"name in {where} cannot be {_BATCH_FILE!r} (the batch's own file)")
    return FieldEntry(name=name, config=table.file_path("config"))


# -- the worker task ----------------------------------------------------------------------


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _holds_only_error(folder: pathlib.Path) -> bool:
    """Whether ``folder`` is what a failed run left: ``error.json`` and nothing else."""
    try:
        return [p.name for p in folder.iterdir()] == [_ERROR_FILE]
    except OSError:
        return False


def _failure(err: BaseException, log_lines: list[str]) -> dict:
    return {
        "type": type(err).__name__,
        "message": str(err),
        "traceback": "".join(traceback.format_exception(err)),
        "time": _now(),
        "log": log_lines,
    }


def _fit_one(config_path: str, folder: str) -> dict:
    """Fit one field into ``folder`` (the Dask task); never raises on a failed fit.

    Returns ``{"status": "done" | "failed", "wall_s", "error"?}``; the caller writes
    ``error.json``. A folder holding only an earlier ``error.json`` is replaced.
    """
    start = time.perf_counter()
    log_lines: list[str] = []
    try:
        import jax
        import matplotlib

        # the entry point's choices, for the process that runs the fit (as the CLI's)
        jax.config.update("jax_enable_x64", True)
        matplotlib.use("Agg")

        from .field import fit_field, load_field

        target = pathlib.Path(folder)
        config = load_field(config_path)
        fit_field(config, target, overwrite=_holds_only_error(target), log=log_lines.append)
    except Exception as err:  # a failed field is recorded; the others go on
        return {
            "status": "failed",
            "wall_s": time.perf_counter() - start,
            "error": _failure(err, log_lines),
        }
    return {"status": "done", "wall_s": time.perf_counter() - start}


# -- the run ------------------------------------------------------------------------------


def _write_error(folder: pathlib.Path, error: dict) -> None:
    from .atomic import write_text

    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / _ERROR_FILE, json.dumps(error, indent=2) + "\n")


def _write_report(
    out_dir: pathlib.Path, manifest, entries, scheduler, workers, result, cores_per_worker=None
) -> None:
    from .atomic import write_text

    configs = {e.name: str(e.config) for e in entries}
    report = {
        "format": "mobs_ppl.batch",
        "version": 1,
        "time": _now(),
        "manifest": str(pathlib.Path(os.fspath(manifest)).resolve()),
        "scheduler": scheduler,
        "workers": workers,
        "cores_per_worker": cores_per_worker,
        "counts": {s: result.count(s) for s in _STATUSES},
        "wall_s": result.wall_s,
        "start_s": result.start_s,
        "fields_per_minute": result.fields_per_minute,
        "fields": [
            {
                "name": f.name,
                "config": configs[f.name],
                "status": f.status,
                "wall_s": f.wall_s,
                "error": f.error,
            }
            for f in result.fields
        ],
    }
    write_text(out_dir / _BATCH_FILE, json.dumps(report, indent=2) + "\n")


def _usable_cores() -> list[int]:
    """The CPU cores this process may run on (all of them where affinity is unknown)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def _local_workers(workers: int | None, n_tasks: int, cores_per_worker: int | None) -> int:
    """Worker processes of the local cluster (see :func:`run_batch`)."""
    if workers is not None:
        return workers
    per = cores_per_worker or 1
    return max(1, min(len(_usable_cores()) // per, n_tasks))


def _local_only(name: str, scheduler: str) -> None:
    """Raise for a setting of the local cluster given with a scheduler address."""
    if scheduler != "local":
        raise ValueError(
            f"{name} applies to scheduler='local' only: the workers of a running "
            f"scheduler ({scheduler!r}) are its own"
        )


def _check_pinning(workers: int | None, cores_per_worker: int) -> None:
    """Raise where ``cores_per_worker`` cannot give every worker cores of its own."""
    if not hasattr(os, "sched_setaffinity"):
        raise ValueError(
            "cores_per_worker needs CPU affinity (os.sched_setaffinity), which this "
            f"platform ({sys.platform}) lacks: leave it out"
        )
    cores = _usable_cores()
    # without an explicit count, the workers are as many as the cores allow
    n = workers if workers is not None else 1
    if n * cores_per_worker > len(cores):
        raise ValueError(
            f"{n} workers x cores_per_worker={cores_per_worker} need "
            f"{n * cores_per_worker} cores; this process may use {len(cores)}: ask for "
            "fewer workers or fewer cores per worker"
        )


def _cluster(
    scheduler: str, workers: int | None, n_tasks: int, cores_per_worker: int | None = None
):
    """``(client, closers)``: a Dask client on a new LocalCluster or an existing scheduler."""
    from dask.distributed import Client, LocalCluster

    if scheduler != "local":
        client = Client(scheduler)
        return client, [client]
    n = _local_workers(workers, n_tasks, cores_per_worker)
    # one thread per process: a fit uses the cores of its process; no dashboard (the
    # port may be taken; connect to your own scheduler by address to watch one)
    cluster = LocalCluster(
        n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None
    )
    client = Client(cluster)
    if cores_per_worker is not None:
        from ._core_pinning import PinCores

        client.register_plugin(PinCores(cores_per_worker, _usable_cores()))
    return client, [client, cluster]


def run_batch(
    manifest,
    out_dir,
    scheduler: str = "local",
    workers: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    cores_per_worker: int | None = None,
) -> BatchResult:
    """Fit every field of a manifest, one Dask task per field.

    Parameters
    ----------
    manifest : str or path-like
        The manifest file (see :func:`load_manifest`).
    out_dir : str or path-like
        Results: ``out_dir/NAME/`` per field, ``out_dir/batch.json`` (module docstring).
        Created if needed.
    scheduler : str
        ``"local"``: a new ``LocalCluster`` of single-threaded worker processes, closed
        at the end. Otherwise the address of a running Dask scheduler (e.g.
        ``"tcp://10.0.0.1:8786"``), whose workers must import ``mobs_ppl`` and see the
        field files and ``out_dir`` at the same paths (a shared file system).
    workers : int, optional
        Worker processes of the local cluster (default: the number of CPUs, divided by
        ``cores_per_worker`` where given, at most one per field to fit). Only with
        ``scheduler="local"``.
    progress : bool
        Show a progress bar on stderr (fields finished).
    log : callable, optional
        Receives one line per finished field.
    cores_per_worker : int, optional
        Bind each local worker process to this many cores of its own (Linux CPU
        affinity), so that the workers' JAX thread pools do not compete for the same
        cores: ``workers * cores_per_worker`` may not exceed the cores this process may
        use. Default: unbound (each worker's JAX uses every core). Only with
        ``scheduler="local"``.

    Returns
    -------
    BatchResult
        Per field: ``done``, ``skipped`` (``out_dir/NAME/summary.json`` existed) or
        ``failed`` (recorded in ``out_dir/NAME/error.json``).

    Raises
    ------
    FileNotFoundError, ValueError, TypeError
        From :func:`load_manifest`, and for a bad ``scheduler`` or ``workers``, before
        any cluster starts.
    OSError
        If the scheduler cannot be reached.

    Notes
    -----
    Fields are independent: each finished field's folder is complete on disk as soon
    as its fit ends, so an interrupted batch (Ctrl-C, a killed job) is resumed by
    running it again: finished fields are skipped, the others fitted. A killed fit may
    leave a hidden ``.NAME.*.staging`` folder in ``out_dir``; it is never read and may
    be deleted. A field whose worker process dies (e.g. out of memory) is failed.
    """
    from ._checks import check_int

    if not isinstance(scheduler, str) or not scheduler.strip():
        raise TypeError(
            f"scheduler must be 'local' or a scheduler address (string); got {scheduler!r}"
        )
    if workers is not None:
        _local_only("workers", scheduler)
        workers = check_int("workers", workers, minimum=1)
    if cores_per_worker is not None:
        _local_only("cores_per_worker", scheduler)
        cores_per_worker = check_int("cores_per_worker", cores_per_worker, minimum=1)
        _check_pinning(workers, cores_per_worker)
    entries = load_manifest(manifest)
    out = pathlib.Path(os.fspath(out_dir))
    out.mkdir(parents=True, exist_ok=True)
    emit = log if log is not None else (lambda line: None)

    outcomes = {e.name: FieldOutcome(e.name, "not run") for e in entries}
    todo = []
    for e in entries:
        if (out / e.name / _SUMMARY_FILE).is_file():
            outcomes[e.name] = FieldOutcome(e.name, "skipped")
        else:
            todo.append(e)
    if len(todo) < len(entries):
        emit(f"{len(entries) - len(todo)} finished fields skipped (summary.json exists)")

    timing = {"wall_s": 0.0, "start_s": 0.0}

    def report():
        return BatchResult(tuple(outcomes[e.name] for e in entries), **timing)

    def save():
        _write_report(out, manifest, entries, scheduler, workers, report(), cores_per_worker)

    try:
        if todo:
            _run_tasks(
                todo,
                out,
                scheduler,
                workers,
                progress,
                emit,
                outcomes,
                timing,
                save,
                cores_per_worker,
            )
    finally:  # also after Ctrl-C: unfinished fields are "not run"
        for e in todo:  # finished on disk, but its result never reached us (interrupted)
            if outcomes[e.name].status == "not run" and (out / e.name / _SUMMARY_FILE).is_file():
                outcomes[e.name] = FieldOutcome(e.name, "done")
        save()
    return report()


def _interruptible(iterator):
    """Yield from ``iterator``; a Ctrl-C (SIGINT) always ends the loop, even if swallowed.

    Python raises ``KeyboardInterrupt`` wherever the main thread is when the signal
    arrives; raised inside a finaliser or a callback whose errors are ignored, it is
    lost, and the batch would run on. A handler therefore also records the signal, and
    the loop raises ``KeyboardInterrupt`` itself at the next finished field. The
    previous handler is restored at the end (outside the main thread, where no handler
    can be installed, the iterator is passed through).
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield from iterator
        return
    received = []

    def on_interrupt(signum, frame):
        received.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        for item in iterator:
            if received:
                raise KeyboardInterrupt
            yield item
            if received:
                raise KeyboardInterrupt
    finally:  # None: a handler not set from Python, left as the default
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)


def _run_tasks(
    todo, out, scheduler, workers, progress, emit, outcomes, timing, save, cores_per_worker=None
):
    """Submit the fits, record each as it finishes (``outcomes`` and ``timing`` updated)."""
    import secrets

    from dask.distributed import as_completed
    from tqdm.auto import tqdm

    start = time.perf_counter()
    client, closers = _cluster(scheduler, workers, len(todo), cores_per_worker)
    try:
        timing["start_s"] = time.perf_counter() - start
        begin = time.perf_counter()
        token = secrets.token_hex(4)
        futures = {}
        for e in todo:
            future = client.submit(
                _fit_one,
                str(e.config),
                str((out / e.name).absolute()),
                key=f"mobs-ppl-fit-{e.name}-{token}",
                pure=False,
            )
            futures[future] = e
        bar = tqdm(
            total=len(todo), desc="fields", unit="field", file=sys.stderr, disable=not progress
        )
        try:
            for future in _interruptible(as_completed(futures)):
                entry = futures[future]
                try:
                    done = future.result()
                except Exception as err:  # the worker died, or the task was lost
                    done = {"status": "failed", "wall_s": 0.0, "error": _failure(err, [])}
                if done["status"] == "failed":
                    error = done["error"]
                    _write_error(out / entry.name, error)
                    message = f"{error['type']}: {' '.join(error['message'].split())}"
                    outcomes[entry.name] = FieldOutcome(
                        entry.name, "failed", done["wall_s"], message
                    )
                    where = out / entry.name / _ERROR_FILE
                    line = f"{entry.name}: failed ({message}); see {where}"
                else:
                    outcomes[entry.name] = FieldOutcome(entry.name, "done", done["wall_s"])
                    line = f"{entry.name}: done in {done['wall_s']:.1f} s"
                timing["wall_s"] = time.perf_counter() - begin
                emit(line)
                save()  # batch.json as each field finishes
                bar.update(1)
        finally:
            bar.close()
    finally:
        for closer in closers:
            closer.close()
