"""Compile and run time of one Newton step of ``fit_map`` and of the marginal error bars.

Usage::

    python benchmarks/newton_step.py [--galaxies 2 4] [--repeat 3]

On the simulated HST + HSC field of :func:`mobs_ppl.synthetic.simulated_field` (needs
no data; HSC resampled with its exact noise, HST with measured noise correlations,
joint detection, every site free) it prints one markdown table row per field size:

* ``params``: coordinates of the fit;
* ``step compile s``: first call of the jitted Gauss-Newton step (tracing, lowering and
  XLA compilation; the cost a user pays once per scene structure);
* ``step s``: best of ``--repeat`` further calls of the compiled step;
* ``fit_map s`` and ``steps``: a whole default fit (its step already compiled above);
* ``laplace s``: ``mp.laplace(model, fit)`` with every site free (matrix-free above
  3000 parameters), compilation included.

Compile times depend on the machine and on other load; rerun on an idle machine.
"""

from __future__ import annotations

import argparse
import time


def _model(n_galaxies: int):
    import astropy.units as u

    import mobs_ppl as mp

    field = mp.synthetic.simulated_field(0, n_galaxies=n_galaxies)
    frame = mp.Frame.from_observations([field.hst, field.hsc], coverage="union")
    hsc = mp.CorrelatedObservation.from_observation(field.hsc, resample_to_frame=frame)
    hst = mp.CorrelatedObservation.from_observation(field.hst)
    scene = mp.init.from_observations(
        [field.hst, field.hsc], frame, image_types=["space", "ground"]
    )
    return mp.SceneModel(scene, [hst, hsc], shifts={"HSC": 0.1 * u.arcsec})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--galaxies", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    import jax

    jax.config.update("jax_enable_x64", True)
    import mobs_ppl as mp
    from mobs_ppl import newton
    from mobs_ppl.sites import split_sites

    print(f"jax {jax.__version__} on {jax.default_backend()}, float64\n")
    print("| galaxies | params | step compile s | step s | fit_map s | steps | laplace s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n_galaxies in args.galaxies:
        model = _model(n_galaxies)
        values, fixed = split_sites(model, None, None)
        problem = newton.PosteriorProblem.build(model, values, fixed)
        key = jax.random.PRNGKey(0)
        settings = newton._traced(1.0, 0.1, 100)
        start = time.perf_counter()
        jax.block_until_ready(newton._step(problem, problem.start, key, *settings))
        compile_s = time.perf_counter() - start
        best = float("inf")
        for _ in range(max(1, args.repeat)):
            start = time.perf_counter()
            jax.block_until_ready(newton._step(problem, problem.start, key, *settings))
            best = min(best, time.perf_counter() - start)
        start = time.perf_counter()
        fit = mp.fit_map(model)
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        mp.laplace(model, fit)
        laplace_s = time.perf_counter() - start
        print(
            f"| {n_galaxies} | {problem.start.size} | {compile_s:.1f} | {best:.3f} | "
            f"{fit_s:.1f} | {fit.iterations} | {laplace_s:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
