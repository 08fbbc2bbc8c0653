"""Throughput of ``mobs-ppl batch``: fields per minute for 1 and 2 local workers.

N copies of the tiny simulated HST + HSC field of ``tests/test_cli_fit.py`` (40 x 40
and 10 x 10 pixels, two galaxies, MAP of ``--max-iter`` Newton steps) are fitted by
:func:`mobs_ppl.batch.run_batch` on a fresh ``LocalCluster`` for each worker count,
into a fresh results folder. Each worker compiles the fit once (the first field it
fits), so the rate includes that start-up and grows with fields per worker.

    .venv/bin/python benchmarks/batch.py [--fields 8] [--workers 1 2] [--max-iter 5]
        [--cores-per-worker 0 1]

Rows: workers, cores bound to each worker ("all": unbound), fields, cluster start
(s), wall time from first submission to last result (s), fields per minute (fields /
wall), median and largest per-field time on its worker (s: the largest is a first,
compiling fit).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parent.parent


def _fields(root: pathlib.Path, n: int, max_iter: int) -> pathlib.Path:
    sys.path.insert(0, str(REPO / "tests"))
    from test_cli_fit import FIELD, _simulate

    text = FIELD.replace("max_iter = 100", f"max_iter = {max_iter}")
    tables = []
    for k in range(n):
        folder = root / f"field{k}"
        folder.mkdir()
        _simulate(folder)
        (folder / "field.toml").write_text(text)
        tables.append(f'[[field]]\nname = "field{k}"\nconfig = "field{k}/field.toml"\n')
    manifest = root / "manifest.toml"
    manifest.write_text("\n".join(tables))
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fields", type=int, default=8, help="simulated fields (default 8)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts")
    parser.add_argument("--max-iter", type=int, default=5, help="Newton steps per MAP")
    parser.add_argument(
        "--cores-per-worker",
        type=int,
        nargs="+",
        default=[0],
        help="cores bound to each worker; 0: unbound (default 0; e.g. 0 1 runs both)",
    )
    args = parser.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # inherited by the worker processes

    from mobs_ppl import __version__
    from mobs_ppl.batch import run_batch

    print(
        f"mobs_ppl {__version__}, {os.cpu_count()} CPUs, {args.fields} tiny fields, "
        f"MAP of {args.max_iter} Newton steps"
    )
    print(
        "| workers | cores / worker | fields | cluster start (s) | wall (s) | fields / min "
        "| median fit (s) | max fit (s) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="mobs_ppl_batch_") as tmp:
        manifest = _fields(pathlib.Path(tmp), args.fields, args.max_iter)
        runs = [(n, k) for k in args.cores_per_worker for n in args.workers]
        for n, k in runs:
            out = pathlib.Path(tmp) / f"out_{n}_{k}"
            result = run_batch(manifest, out, workers=n, progress=False, cores_per_worker=k or None)
            walls = [f.wall_s for f in result.fields if f.status == "done"]
            if len(walls) != args.fields:
                raise SystemExit(f"{args.fields - len(walls)} fields failed: see {out}")
            print(
                f"| {n} | {k or 'all'} | {args.fields} | {result.start_s:.1f} | "
                f"{result.wall_s:.1f} | "
                f"{result.fields_per_minute:.2f} | {statistics.median(walls):.1f} | "
                f"{max(walls):.1f} |"
            )


if __name__ == "__main__":
    main()
