"""Inference benchmarks on the COSMOS HST + HSC field; prints a markdown table.

Usage::

    python benchmarks/inference.py [--data-dir DIR] [--max-iter N] [--num-warmup N]
                                   [--num-samples N] [--svi-steps N]

The model is the one of the NUTS health check (``tests/test_cosmos_nuts.py``): sources
detected on the HST image (non-parametric morphologies), HST with measured correlated
noise, HSC resampled onto the model frame, an HSC astrometric shift. Rows:

* SVI step, steady: one ``svi.update`` of an ``AutoDelta`` guide (all sites), jitted,
  median over repeated calls after compilation;
* MAP fit: :func:`mobs_ppl.fit_map` wall time, compilation included, to convergence
  or ``--max-iter``;
* NUTS: :func:`mobs_ppl.sample` of spectra and shift (2 chains, dense mass, morphologies
  at the MAP), wall time compilation included, and the effective samples per second:
  the smallest bulk ESS over all flux and shift components divided by that time;
* peak memory: the process's peak resident set size.
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import platform
import resource
import statistics
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent


def cosmos_setup(data_dir=None):
    """The COSMOS model of the health check: ``(model, info)``.

    Loads :func:`cosmos_model` from ``tests/test_cosmos_nuts.py`` so that the test and
    the benchmark measure the same thing.
    """
    spec = importlib.util.spec_from_file_location(
        "_cosmos_nuts", REPO / "tests" / "test_cosmos_nuts.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.cosmos_model(data_dir)


def _default_data_dir():
    shared = REPO.parent / "shared" / "data"
    return shared if shared.is_dir() else None


def svi_step_seconds(model, repeat: int) -> tuple[float, float]:
    """Compile time and steady median time of one jitted AutoDelta SVI step."""
    import jax
    import numpyro
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoDelta
    from numpyro.infer.initialization import init_to_value

    guide = AutoDelta(model, init_loc_fn=init_to_value(values=model.init_values()))
    svi = SVI(model, guide, numpyro.optim.Adam(1e-3), Trace_ELBO())
    state = svi.init(jax.random.PRNGKey(0))
    update = jax.jit(svi.update)
    start = time.perf_counter()
    state, loss = jax.block_until_ready(update(state))
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        state, loss = jax.block_until_ready(update(state))
        times.append(time.perf_counter() - start)
    return compile_s, statistics.median(times)


def peak_memory_mib() -> float:
    """Peak resident memory of this process (MiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="directory holding cosmos_hst_hsc/")
    parser.add_argument("--max-iter", type=int, default=600, help="fit_map iterations")
    parser.add_argument("--num-warmup", type=int, default=300, help="NUTS warm-up per chain")
    parser.add_argument("--num-samples", type=int, default=600, help="NUTS draws per chain")
    parser.add_argument("--svi-steps", type=int, default=50, help="timed SVI steps")
    parser.add_argument(
        "--chain-method", default="sequential", help="NUTS chains: sequential or vectorized"
    )
    parser.add_argument(
        "--mass-matrix",
        default="laplace",
        choices=["laplace", "laplace+adapt", "adapt"],
        help="NUTS mass matrix (see mobs_ppl.sample)",
    )
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)

    import jax

    jax.config.update("jax_enable_x64", True)
    import arviz as az
    import numpy as np

    import mobs_ppl as mp

    data_dir = args.data_dir or _default_data_dir()
    start = time.perf_counter()
    model, info = cosmos_setup(data_dir)
    setup_s = time.perf_counter() - start

    compile_s, step_s = svi_step_seconds(model, args.svi_steps)

    start = time.perf_counter()
    fit = mp.fit_map(model, max_iter=args.max_iter)
    map_s = time.perf_counter() - start

    start = time.perf_counter()
    post = mp.sample(
        model,
        init=fit,
        sites=["spectrum", "shift"],
        num_warmup=args.num_warmup,
        num_samples=args.num_samples,
        num_chains=2,
        dense_mass=True,
        chain_method=args.chain_method,
        mass_matrix=args.mass_matrix,
    )
    samples = jax.tree.map(np.asarray, post.samples(group_by_chain=True))
    nuts_s = time.perf_counter() - start
    idata = post.to_arviz(log_likelihood="none")
    summary = az.summary(idata, var_names=["flux", "shift"], kind="diagnostics", round_to="none")
    ess = float(summary["ess_bulk"].min())
    diverging = int(idata.sample_stats["diverging"].sum())
    steps = float(idata.sample_stats["n_steps"].mean())
    n_latent = sum(int(np.prod(v.shape[2:])) for k, v in samples.items() if k in post.sampled)

    frame = info["frame"]
    rows = [
        ("set-up", setup_s, "s", f"load, detect {info['sources']} sources, NNLS spectra, match"),
        ("SVI step, first call", compile_s, "s", "AutoDelta, all sites; includes compilation"),
        (
            "SVI step, steady",
            step_s * 1e3,
            "ms",
            f"median of {args.svi_steps}; frame {'x'.join(map(str, frame.shape))}",
        ),
        (
            "MAP fit",
            map_s,
            "s",
            f"{fit.losses.size} iterations, converged={fit.converged}; compilation included",
        ),
        (
            "NUTS wall time",
            nuts_s,
            "s",
            f"2 {args.chain_method} chains x ({args.num_warmup} warm-up + "
            f"{args.num_samples}), mass matrix {args.mass_matrix}; {n_latent} "
            f"parameters; {steps:.1f} steps/draw; {diverging} divergences",
        ),
        (
            "NUTS ESS per second",
            ess / nuts_s,
            "1/s",
            f"min bulk ESS {ess:.0f} over flux + shift; max R-hat {summary['r_hat'].max():.3f}",
        ),
        ("peak memory", peak_memory_mib(), "MiB", "ru_maxrss of the process"),
    ]
    device = jax.devices()[0]
    print(
        f"mobs_ppl {mp.__version__}, jax {jax.__version__}, {device.platform} "
        f"({device.device_kind}), float64, Python {platform.python_version()}, "
        f"{platform.machine()}"
    )
    print()
    print("| benchmark | value | unit | notes |")
    print("|---|---:|---|---|")
    for name, value, unit, note in rows:
        text = f"{value:.0f}" if value >= 100 else f"{value:.3g}"
        print(f"| {name} | {text} | {unit} | {note} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
