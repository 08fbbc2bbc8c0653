"""Benchmarks of mobs_ppl on the COSMOS HST + HSC field; prints a markdown table.

Usage::

    python benchmarks/run.py [--float32] [--repeat N] [--data-dir DIR] [--only NAME ...]

Every benchmark is a function registered with ``@benchmark("name")``. It receives the
shared :class:`Context` (loaded observations, model frame, options) and returns rows
``Row(name, value, unit, note)``; the peak-memory row always comes last. New benchmarks
(an SVI step, NUTS ESS per second, ...) are added by writing one more registered
function; they run in registration order and may reuse what earlier ones left in
``ctx.cache`` (e.g. the matched observations).
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable


@dataclasses.dataclass
class Row:
    """One line of the results table."""

    name: str
    value: float
    unit: str
    note: str = ""


@dataclasses.dataclass
class Context:
    """What every benchmark gets: options, the COSMOS observations and the model frame."""

    args: argparse.Namespace
    hst: object
    hsc: object
    frame: object
    dtype: object
    cache: dict = dataclasses.field(default_factory=dict)


BENCHMARKS: list[tuple[str, Callable[[Context], list[Row]]]] = []


def benchmark(name: str):
    """Register a benchmark function under ``name`` (selectable with ``--only``)."""

    def register(func):
        BENCHMARKS.append((name, func))
        return func

    return register


def _timed(func, *args):
    """Wall time (seconds) of ``func(*args)`` with JAX results ready, and its result."""
    import jax

    start = time.perf_counter()
    result = jax.block_until_ready(func(*args))
    return time.perf_counter() - start, result


def _median_time(func, *args, repeat: int) -> float:
    return statistics.median(_timed(func, *args)[0] for _ in range(max(1, repeat)))


# -- benchmarks -------------------------------------------------------------------------


@benchmark("match")
def bench_match(ctx: Context) -> list[Row]:
    """``Observation.match`` per observation: all set-up of the forward operator."""
    rows = []
    matched = {}
    for obs in (ctx.hst, ctx.hsc):
        seconds, matched[obs.name] = _timed(obs.match, ctx.frame)
        r = matched[obs.name].renderer
        rows.append(
            Row(
                f"match {obs.name}",
                seconds,
                "s",
                f"one call; mode {r.mode}, grid {r.grid_shape[0]}x{r.grid_shape[1]}, "
                f"padded {r.padded_shape[0]}x{r.padded_shape[1]}",
            )
        )
    ctx.cache["matched"] = matched
    return rows


@benchmark("render_grad")
def bench_render_grad(ctx: Context) -> list[Row]:
    """Value and gradient of the joint log-likelihood w.r.t. the cube and the HSC shift."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    matched = ctx.cache.get("matched") or {o.name: o.match(ctx.frame) for o in (ctx.hst, ctx.hsc)}
    hst, hsc = matched["HST"], matched["HSC"]

    def joint_log_likelihood(params, hst, hsc):
        cube, shift = params
        return hst.log_likelihood(cube) + hsc.log_likelihood(cube, shift)

    value_and_grad = eqx.filter_jit(jax.value_and_grad(joint_log_likelihood))
    cube = jnp.full(ctx.frame.shape, 0.1, dtype=ctx.dtype)
    shift = jnp.array([0.1, -0.2], dtype=ctx.dtype)
    params = (cube, shift)
    first, (value, grads) = _timed(value_and_grad, params, hst, hsc)
    steady = _median_time(value_and_grad, params, hst, hsc, repeat=ctx.args.repeat)
    shape = "x".join(str(s) for s in ctx.frame.shape)
    what = f"d/d(cube {shape}, HSC shift) of logL(HST) + logL(HSC)"
    return [
        Row("render + grad, first call", first, "s", f"includes compilation; {what}"),
        Row(
            "render + grad, steady",
            steady * 1e3,
            "ms",
            f"median of {max(1, ctx.args.repeat)} calls; dtype {grads[0].dtype}",
        ),
    ]


def peak_memory() -> Row:
    """Peak resident memory of this process so far (all benchmarks above included)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes
    mib = peak / 2**20 if sys.platform == "darwin" else peak / 2**10
    return Row("peak memory", mib, "MiB", "ru_maxrss of the process, after all rows above")


# -- driver -----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--float32", action="store_true", help="run in float32 (default float64)")
    parser.add_argument(
        "--repeat", type=int, default=20, help="calls timed for steady-state medians (default 20)"
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="directory holding cosmos_hst_hsc/ (default: $MOBS_PPL_DATA_DIR, else download)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=[name for name, _ in BENCHMARKS],
        help="run only these benchmarks (default: all)",
    )
    return parser


def _format(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def main(argv=None) -> int:
    args = _parser().parse_args(argv)

    import jax

    # before any array is created: the loader and the operators follow this precision
    jax.config.update("jax_enable_x64", not args.float32)
    import jax.numpy as jnp

    import mobs_ppl as mp

    dtype = jnp.float32 if args.float32 else jnp.float64
    load_s, (hst, hsc) = _timed(mp.datasets.load_cosmos, args.data_dir)
    frame_s, frame = _timed(mp.Frame.from_observations, [hst, hsc])
    ctx = Context(args=args, hst=hst, hsc=hsc, frame=frame, dtype=dtype)

    rows = [
        Row("load_cosmos", load_s, "s", "read FITS, weights, PSFs (+ download if not local)"),
        Row("Frame.from_observations", frame_s, "s", f"union frame {frame.shape}"),
    ]
    for name, func in BENCHMARKS:
        if args.only and name not in args.only:
            continue
        rows.extend(func(ctx))
    rows.append(peak_memory())

    device = jax.devices()[0]
    print(
        f"mobs_ppl {mp.__version__}, jax {jax.__version__}, {device.platform} "
        f"({device.device_kind}), {'float32' if args.float32 else 'float64'}, "
        f"Python {platform.python_version()}, {platform.machine()}"
    )
    print()
    print("| benchmark | value | unit | notes |")
    print("|---|---:|---|---|")
    for row in rows:
        print(f"| {row.name} | {_format(row.value)} | {row.unit} | {row.note} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
