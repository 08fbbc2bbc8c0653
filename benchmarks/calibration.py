"""Coverage of posterior intervals on scenes simulated from the model itself.

Usage::

    python benchmarks/calibration.py [--scenes N] [--workers W] [--warmup 200]
                                     [--samples 300] [--first-seed 0] [--sources 2]

Every scene (``tests/simulations.py``, :class:`CalibrationProblem`) draws spectra and an
HSC shift from the model's default priors, simulates a fine one-band image and a
coarse five-band one with the model's own forward model and noise, and samples the
spectra and the shift with NUTS (morphologies known). The script prints a header,
then a markdown table: for the 68% and 95% central intervals, how many of the
per-parameter intervals hold the truth (12 fluxes and 2 shift components per scene),
with the binomial standard error of the pooled fraction, then the spread of the
truths' ranks among the posterior draws (uniform when the posterior is calibrated).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_enable_x64", True)

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))
import mobs_ppl as mp  # noqa: E402
from simulations import INTERVALS, coverage_table, pooled, run_calibration  # noqa: E402


def rank_histogram(results, bins: int = 10) -> tuple[np.ndarray, float]:
    """Counts of the truths' ranks (fraction of draws below) in ``bins`` equal bins."""
    ranks = np.concatenate([np.ravel(v) for r in results for v in r.ranks.values()])
    counts, _ = np.histogram(ranks, bins=bins, range=(0.0, 1.0))
    expected = ranks.size / bins
    chi2 = float(np.sum((counts - expected) ** 2 / expected))
    return counts, chi2


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenes", type=int, default=50, help="number of scenes (default 50)")
    parser.add_argument(
        "--workers", type=int, default=1, help="processes sharing the scenes (one per core)"
    )
    parser.add_argument("--warmup", type=int, default=200, help="NUTS warm-up steps per chain")
    parser.add_argument("--samples", type=int, default=300, help="NUTS draws per chain")
    parser.add_argument("--chains", type=int, default=2, help="NUTS chains")
    parser.add_argument("--sources", type=int, default=2, choices=(1, 2, 3))
    parser.add_argument("--first-seed", type=int, default=0, help="seed of the first scene")
    parser.add_argument("--verbose", action="store_true", help="one line per scene")
    args = parser.parse_args(argv)

    print(
        f"mobs_ppl {mp.__version__}, jax {jax.__version__}, {jax.devices()[0].platform}, "
        f"python {platform.python_version()}, {os.cpu_count()} CPUs, {args.workers} worker(s); "
        f"{args.scenes} scenes, {args.sources} sources, NUTS {args.warmup}+{args.samples} "
        f"x {args.chains} chains",
        flush=True,
    )
    start = time.perf_counter()
    results, rows = run_calibration(
        args.scenes,
        first_seed=args.first_seed,
        workers=args.workers,
        verbose=args.verbose,
        n_sources=args.sources,
        num_warmup=args.warmup,
        num_samples=args.samples,
        num_chains=args.chains,
    )
    seconds = time.perf_counter() - start
    print()
    print(coverage_table(rows))
    print()
    for level in INTERVALS:
        row = pooled(rows, level)
        error = np.sqrt(level * (1 - level) / row.total)
        off = (row.fraction - level) / error
        print(
            f"pooled {level:.0%} interval: {row.fraction:.1%} +- {error:.1%} "
            f"(binomial s.e. of {row.total} checks; off by {off:+.1f} s.e.)"
        )
    counts, chi2 = rank_histogram(results)
    print(f"ranks of the truths in 10 bins: {counts.tolist()} (chi2 = {chi2:.1f}, 9 d.o.f.)")
    times = np.array([r.seconds for r in results])
    print(
        f"largest R-hat {max(r.r_hat for r in results):.3f}, divergences "
        f"{sum(r.divergences for r in results)}; wall time {seconds:.0f} s, per scene median "
        f"{np.median(times):.1f} s (first {times[0]:.1f} s, with compilation)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
