"""Start-up time of the command line: ``mobs-ppl --help`` and each subcommand's ``--help``.

Each row is the median wall time of fresh interpreter runs of the installed entry point
(``python -m mobs_ppl.cli`` where it is not on the path), from process start to exit.

    .venv/bin/python benchmarks/cli_start.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import statistics
import subprocess
import sys
import time

COMMANDS = (["--help"], ["demo", "--help"], ["fit", "--help"], ["--version"])


def _entry_point() -> list[str]:
    here = pathlib.Path(sys.executable).parent / "mobs-ppl"
    found = here if here.exists() else shutil.which("mobs-ppl")
    return [str(found)] if found else [sys.executable, "-m", "mobs_ppl.cli"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per command (median)")
    args = parser.parse_args()
    entry = _entry_point()
    print(f"{'command':<32} {'median wall (s)':>16} {'max (s)':>9}")
    for argv in COMMANDS:
        times = []
        for _ in range(max(1, args.repeat)):
            start = time.perf_counter()
            subprocess.run([*entry, *argv], capture_output=True, check=True)
            times.append(time.perf_counter() - start)
        label = "mobs-ppl " + " ".join(argv)
        print(f"{label:<32} {statistics.median(times):>16.3f} {max(times):>9.3f}")


if __name__ == "__main__":
    main()
