"""Writing files and results folders so that a reader never sees half of them.

* :func:`atomic_path` -- the one way this package writes a file: the content goes to a
  temporary file in the same folder, which then replaces the target in one
  ``os.replace`` (atomic on POSIX and Windows within one file system). On any failure,
  ``KeyboardInterrupt`` included, the temporary file is removed and the previous file,
  if any, is left as it was. :func:`write_text` is the case of a text file.
* :func:`staged_folder` -- the same for a whole results folder: every file goes into a
  fresh temporary sibling folder, a ``run.json`` marker is written last, and the folder
  then takes the place of the target. An interrupted run leaves the old folder intact.
  An existing target is replaced only if it is empty or a results folder of this
  package (it holds the marker); other content is refused unless ``overwrite=True``.

The marker ``run.json`` holds ``format = "mobs_ppl.results"``, the package version, the
time (UTC, ISO 8601), a random run id and the list of files the run wrote.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import pathlib
import secrets
import shutil
from collections.abc import Iterator

__all__ = [
    "MARKER",
    "RESULTS_FORMAT",
    "StagedFolder",
    "atomic_path",
    "check_replaceable",
    "save_figure",
    "staged_folder",
    "write_text",
]

#: Name of the marker file of a results folder (written last).
MARKER = "run.json"
#: Value of the marker's ``format`` key.
RESULTS_FORMAT = "mobs_ppl.results"
#: Present in a staging folder while it is being filled; holds the final path.
_STAGING_SENTINEL = ".mobs_ppl_staging"


def _token() -> str:
    return secrets.token_hex(6)


def _fsync(path: pathlib.Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path) -> Iterator[pathlib.Path]:
    """A temporary path beside ``path`` that replaces ``path`` when the block succeeds.

    Parameters
    ----------
    path : str or path-like
        The file to write. Its folder must exist.

    Yields
    ------
    pathlib.Path
        An empty file in the same folder (hidden name ending in ``.tmp``): write the
        content there, by name or by opening it. Writers that choose a format from the
        file name (``savefig``) must be given the format explicitly.

    Notes
    -----
    On leaving the block normally the temporary file is flushed to disk and replaces
    ``path``; on any exception it is removed and the exception propagates.
    """
    target = pathlib.Path(os.fspath(path))
    tmp = target.with_name(f".{target.name}.{_token()}.tmp")
    # created exclusively, with the permissions of an ordinary new file (umask applies)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def save_figure(fig, path, **kwargs) -> None:
    """``fig.savefig`` to ``path`` atomically, in the format named by its suffix.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        The figure (left open).
    path : str or path-like
        The file, e.g. ``scene.png``.
    **kwargs
        Passed to ``savefig`` (e.g. ``dpi``).
    """
    fmt = pathlib.Path(os.fspath(path)).suffix.lstrip(".")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, **kwargs)


# -- results folders --------------------------------------------------------------------


def _is_results_folder(folder: pathlib.Path) -> bool:
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("format") == RESULTS_FORMAT


def check_replaceable(out_dir, overwrite: bool = False) -> None:
    """Raise unless a run may write its results folder at ``out_dir``.

    Parameters
    ----------
    out_dir : str or path-like
        The results folder.
    overwrite : bool
        Allow replacing a folder (or file) with other content, which is then deleted.

    Raises
    ------
    FileExistsError
        If ``out_dir`` exists, is neither empty nor a results folder of this package
        (no ``run.json`` marker) nor a folder being staged, and ``overwrite`` is false.
    """
    target = pathlib.Path(os.fspath(out_dir))
    if overwrite or not (target.exists() or target.is_symlink()):
        return
    if target.is_dir() and (
        not any(target.iterdir())
        or _is_results_folder(target)
        or _enclosing_target(target) is not None
    ):
        return
    what = "folder" if target.is_dir() else "file"
    raise FileExistsError(
        f"the results folder {str(target)!r} exists and is not a mobs_ppl results folder "
        f"(a {what} without the {MARKER} marker of a previous run); a run replaces its "
        "results folder as a whole, so choose another (or an empty) folder, or allow "
        "replacing this one and deleting its content (overwrite=True; on the command "
        "line --overwrite)"
    )


@dataclasses.dataclass
class StagedFolder:
    """A results folder being written (see :func:`staged_folder`).

    Attributes
    ----------
    path : pathlib.Path
        The folder to write the files into (temporary until the run ends).
    target : pathlib.Path
        Where the folder will be once the run succeeds.
    discarded : bool
        Set by :meth:`discard`.
    """

    path: pathlib.Path
    target: pathlib.Path
    discarded: bool = False

    def discard(self) -> None:
        """Drop what was written: the target is left as it was when the block ends."""
        self.discarded = True


def _enclosing_target(folder: pathlib.Path) -> pathlib.Path | None:
    """The final path of ``folder`` if it is a staging folder being filled, else None."""
    try:
        return pathlib.Path((folder / _STAGING_SENTINEL).read_text(encoding="utf-8"))
    except OSError:
        return None


def _write_marker(folder: pathlib.Path) -> None:
    from . import __version__

    files = sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MARKER
    )
    marker = {
        "format": RESULTS_FORMAT,
        "version": 1,
        "mobs_ppl_version": __version__,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "run_id": secrets.token_hex(16),
        "files": files,
    }
    write_text(folder / MARKER, json.dumps(marker, indent=2) + "\n")


def _swap_into_place(staging: pathlib.Path, target: pathlib.Path) -> None:
    if not (target.exists() or target.is_symlink()):
        os.replace(staging, target)
        return
    old = target.with_name(f".{target.name}.{_token()}.old")
    os.replace(target, old)
    os.replace(staging, target)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    else:
        old.unlink()


@contextlib.contextmanager
def staged_folder(out_dir, overwrite: bool = False) -> Iterator[StagedFolder]:
    """Write a results folder as a whole: into a temporary sibling, swapped in at the end.

    Parameters
    ----------
    out_dir : str or path-like
        The results folder. Its parent is created if needed.
    overwrite : bool
        Allow replacing an ``out_dir`` that holds other content (see
        :func:`check_replaceable`).

    Yields
    ------
    StagedFolder
        Write the files into its ``path``. When the block ends normally the
        ``run.json`` marker is written and the folder replaces ``out_dir``; when it
        raises (``KeyboardInterrupt`` included) or :meth:`StagedFolder.discard` was
        called, the temporary folder is deleted and ``out_dir`` is left as it was.

    Raises
    ------
    FileExistsError
        As :func:`check_replaceable`, before anything is written.

    Notes
    -----
    Nested use is allowed: when ``out_dir`` is itself a folder being staged, the files
    go straight into it and the enclosing block writes the marker and swaps. The swap is
    two renames; a crash between them leaves the old folder as a hidden sibling
    ``.<name>.<token>.old``.
    """
    target = pathlib.Path(os.fspath(out_dir)).absolute()
    enclosing = _enclosing_target(target) if target.is_dir() else None
    if enclosing is not None:
        yield StagedFolder(target, enclosing)
        return
    check_replaceable(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.{_token()}.staging")
    staging.mkdir()
    try:
        (staging / _STAGING_SENTINEL).write_text(str(target), encoding="utf-8")
        handle = StagedFolder(staging, target)
        yield handle
        if not handle.discarded:
            (staging / _STAGING_SENTINEL).unlink()
            _write_marker(staging)
            check_replaceable(target, overwrite)  # the target may have changed meanwhile
            _swap_into_place(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already after a swap
