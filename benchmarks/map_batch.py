"""Throughput of batched MAP fits: blends per minute, ``fit_map_batch`` vs ``fit_map``.

Usage::

    python benchmarks/map_batch.py [--sizes 1 8 64] [--sequential 64] [--sources 3]

The blends are those of ``tests/blends.py``: one 32 x 32 px, three-band image of three
(``--sources``) overlapping Gaussian galaxies, fitted with Gaussian sources of 15 px
boxes; the blends differ in positions (sub-pixel), sizes, shapes, colours, fluxes and
noise (seeds 0, 1, ...), and share every shape. Printed as a markdown table:

* ``compile s``: for a batch, the first call's extra time, i.e. the first run minus
  the second on the same blends (tracing, lowering and XLA compilation of the vectorised step and
  objective, once per batch size and structure);
* ``wall s``: the second run (everything compiled);
* ``blends / min``: with and without the compilation;
* ``vectorize=N`` rows: the same batch with every scene's step vectorised by
  ``jax.vmap`` (lock step) instead of scanned one after another (the CPU default);
* ``steps``: Newton steps of the slowest blend of the batch (median over blends for
  the sequential fits).

The sequential row fits the same blends one after another with ``mp.fit_map``, which
compiles its step once for all of them (the same structure); its first blend's fit
carries the compilation (its time minus the median of the others).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_enable_x64", True)

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))
import mobs_ppl as mp  # noqa: E402
from blends import blend_model  # noqa: E402


def _batched(models, vectorize=None) -> tuple[float, float, int, bool]:
    start = time.perf_counter()
    mp.fit_map_batch(models, vectorize=vectorize)
    first = time.perf_counter() - start
    start = time.perf_counter()
    fits = mp.fit_map_batch(models, vectorize=vectorize)
    second = time.perf_counter() - start
    return first, second, max(f.iterations for f in fits), all(f.converged for f in fits)


def _sequential(models) -> tuple[float, float, int, bool]:
    times, fits = [], []
    for model in models:
        start = time.perf_counter()
        fits.append(mp.fit_map(model))
        times.append(time.perf_counter() - start)
    # the compilation: the first fit's time minus the median of the others
    compile_s = times[0] - float(np.median(times[1:] if len(times) > 1 else times))
    steps = int(np.median([f.iterations for f in fits]))
    return compile_s, sum(times) - compile_s, steps, all(f.converged for f in fits)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--sequential", type=int, default=64)
    parser.add_argument("--sources", type=int, default=3)
    parser.add_argument(
        "--vmap", type=int, nargs="*", default=[64], help="batch sizes also run fully vmapped"
    )
    args = parser.parse_args(argv)

    n_max = max([*args.sizes, args.sequential])
    models = [blend_model(seed, n_sources=args.sources) for seed in range(n_max)]
    print(f"jax {jax.__version__} on {jax.default_backend()}, float64, load {os.getloadavg()}\n")
    print(
        "| fit | blends | compile s | wall s | blends / min | with compile | steps "
        "| all converged |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    rows = [("fit_map, one by one", args.sequential, _sequential(models[: args.sequential]))]
    rows += [("fit_map_batch", n, _batched(models[:n])) for n in args.sizes]
    rows += [(f"fit_map_batch, vectorize={n}", n, _batched(models[:n], n)) for n in args.vmap]
    for name, n, (compile_s, wall, steps, converged) in rows:
        print(
            f"| {name} | {n} | {compile_s:.1f} | {wall:.2f} | {60 * n / wall:.0f} | "
            f"{60 * n / (wall + compile_s):.0f} | {steps} | {converged} |"
        )
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
