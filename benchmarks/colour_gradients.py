"""The default flow on blends of galaxies with colour gradients; prints a markdown table.

Usage::

    python benchmarks/colour_gradients.py [--scenes N] [--first SEED] [--workers W]
                                          [--cores auto|none] [--noise-free]

Each scene is two blended bulge + disk galaxies drawn by the numpy simulator of
``tests/colour_gradients.py`` with a known HSC shift; the flow is
``init.from_observation`` (catalogue, ``cores=...``) -> forced photometry -> ``fit_map``
-> ``laplace`` (marginal). One row per scene (iterations, decrement, shift z-scores,
largest flux z-score, seconds) and the summary (the numbers of
``tests/test_colour_gradient_calibration.py``).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=20)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cores", choices=["auto", "none"], default="auto")
    parser.add_argument("--noise-free", action="store_true")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO / "tests"))
    import numpy as np

    from colour_gradients import run_batch, summary

    seeds = range(args.first, args.first + args.scenes)
    results = run_batch(seeds, cores=args.cores, noise=not args.noise_free, workers=args.workers)
    print("| scene | components | steps | decrement | shift z (y, x) | max flux z | s |")
    print("|---:|---|---:|---:|---|---:|---:|")
    for r in results:
        z = "refused" if r.refused else f"{r.z_shift[0]:+.2f}, {r.z_shift[1]:+.2f}"
        print(
            f"| {r.seed} | {r.groups} | {r.iterations} | {r.decrement:.3f} | {z} | "
            f"{np.nanmax(np.abs(r.z_flux)):.2f} | {r.seconds:.0f} |"
        )
    numbers = summary(results)
    print()
    for key, value in numbers.items():
        print(f"- {key}: {np.round(value, 3)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
