"""How the cost of the scene model's gradient grows with the number of sources.

Usage::

    python benchmarks/scaling.py [--kinds gaussian source] [--sizes 1 2 4 ...]
                                 [--repeat N] [--float32]

A ~200 x 200, 6-channel model frame is built from two synthetic observations (zero data,
unit weights, Gaussian PSFs, TAN WCS sharing the tangent point): an HST-like one on the
model grid itself (0.03"/px, one band) and an HSC-like one (0.168"/px, five bands). For
N sources (``GaussianSource`` with r = 2 px, or a non-parametric ``Source`` on a 21 x 21
box) the loss is the negative log joint density of the ``SceneModel`` at its initial
values, ``-numpyro.infer.util.log_density(model, (), {}, params)``, and the timed
function is ``jax.jit(jax.grad(loss))``:

* ``compile s``: tracing, lowering and XLA compilation (``.lower(params).compile()``);
* ``step ms``: best wall time of one call of the compiled gradient over ``--repeat``
  calls (the minimum, which other load on the machine can only inflate);
* ``eqns``: equations in its jaxpr, nested jaxprs included (the size of the program).

It prints a markdown table per source kind and a one-line verdict: the step time and the
compile time are fitted by ``a + b N``, and growth is called linear when the last doubling
of N multiplies both by less than 2.5 (an affine cost at most doubles, a quadratic one
quadruples) and every added source adds the same number of jaxpr equations.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

HST_SCALE = 0.03  # arcsec per pixel, also the model grid
HSC_SCALE = 0.168
HST_N = 200
HSC_N = 35  # 35 x 0.168" = 5.88", inside the 6" HST field: the model frame is 200 x 200
GAUSSIAN_RADIUS = 2.0  # model pixels (box 25 x 25)
MORPHOLOGY_BOX = 21
DEFAULT_SIZES = (1, 2, 4, 8, 16, 32, 64)


def _tan_wcs(scale_arcsec, n):
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.1, 2.2]
    w.wcs.crpix = [(n + 1) / 2.0, (n + 1) / 2.0]
    w.wcs.cdelt = [-scale_arcsec / 3600.0, scale_arcsec / 3600.0]
    w.wcs.cunit = ["deg", "deg"]
    w.wcs.set()
    return w


def build_observations():
    """Model frame and the two observations bound to it."""
    import mobs_ppl as mp

    hst = mp.Observation(
        np.zeros((1, HST_N, HST_N)),
        weights=1.0,
        psf=mp.psf.gaussian_psf(1.5),
        wcs=_tan_wcs(HST_SCALE, HST_N),
        channels=["F814W"],
        name="HST",
    )
    hsc = mp.Observation(
        np.zeros((5, HSC_N, HSC_N)),
        weights=1.0,
        psf=mp.psf.gaussian_psf(1.3),
        wcs=_tan_wcs(HSC_SCALE, HSC_N),
        channels=["g", "r", "i", "z", "y"],
        name="HSC",
    )
    frame = mp.Frame.from_observations([hst, hsc])
    return frame, [hst.match(frame), hsc.match(frame)]


def build_model(frame, observations, n_sources, kind, seed=0):
    """``SceneModel`` with ``n_sources`` sources of one kind at random positions."""
    import mobs_ppl as mp

    rng = np.random.default_rng(seed)
    margin = 15
    sources = []
    for _ in range(n_sources):
        center = rng.uniform(margin, np.array(frame.shape[1:]) - 1 - margin)
        spectrum = rng.uniform(0.5, 2.0, size=frame.n_channels)
        if kind == "gaussian":
            g = rng.uniform(-0.3, 0.3, size=2)
            sources.append(mp.GaussianSource(center, spectrum, GAUSSIAN_RADIUS, g))
        else:
            box = (MORPHOLOGY_BOX, MORPHOLOGY_BOX)
            sources.append(mp.Source(center, spectrum, rng.uniform(0.05, 0.95, size=box)))
    return mp.SceneModel(mp.Scene(frame, sources), observations)


def count_equations(jaxpr) -> int:
    """Equations of a jaxpr, those of nested jaxprs included."""
    total = 0
    for eqn in jaxpr.eqns:
        total += 1
        for value in eqn.params.values():
            for item in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(item, "jaxpr", item)
                if hasattr(inner, "eqns"):
                    total += count_equations(inner)
    return total


def measure(model, repeat):
    """Compile seconds, best step milliseconds and jaxpr size of grad(loss)."""
    import jax
    from numpyro.infer.util import log_density

    params = model.init_values()

    def loss(p):
        return -log_density(model, (), {}, p)[0]

    grad = jax.grad(loss)
    eqns = count_equations(jax.make_jaxpr(grad)(params).jaxpr)
    start = time.perf_counter()
    compiled = jax.jit(grad).lower(params).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(compiled(params))  # first run (allocations)
    steps = []
    for _ in range(repeat):
        start = time.perf_counter()
        jax.block_until_ready(compiled(params))
        steps.append(time.perf_counter() - start)
    return compile_s, 1e3 * min(steps), eqns


def linear_fit(sizes, values):
    """Least-squares ``a + b N``."""
    b, a = np.polyfit(np.asarray(sizes, float), np.asarray(values, float), 1)
    return float(a), float(b)


def verdict(sizes, compile_s, step_ms, eqns) -> str:
    """One line: fitted costs, the last doubling's ratios and the equations per source.

    For ``a + b N`` with ``a >= 0`` doubling ``N`` at most doubles the time; for ``c N^2``
    it quadruples it. Growth is called linear when the last doubling multiplies the step
    and the compile time by less than 2.5 (room for timing noise) and a source added in the
    last doubling adds as many jaxpr equations as one added in the doubling before (5%).
    """
    a, b = linear_fit(sizes, step_ms)
    ca, cb = linear_fit(sizes, compile_s)
    step_ratio = step_ms[-1] / step_ms[-2]
    compile_ratio = compile_s[-1] / compile_s[-2]
    first = (eqns[-2] - eqns[-3]) / (sizes[-2] - sizes[-3])
    last = (eqns[-1] - eqns[-2]) / (sizes[-1] - sizes[-2])
    linear = max(step_ratio, compile_ratio) < 2.5 and abs(last / first - 1) < 0.05
    return (
        f"{'Linear' if linear else 'SUPER-LINEAR'} in N: step ~ {a:.2f} ms + {b:.3f} ms x N, "
        f"compile ~ {ca:.2f} s + {cb:.3f} s x N; N {sizes[-2]} -> {sizes[-1]} multiplies the "
        f"step by {step_ratio:.2f} and the compile time by {compile_ratio:.2f} (2 = linear "
        f"without fixed cost, 4 = quadratic); jaxpr equations per added source {first:.0f} "
        f"then {last:.0f} over the last two doublings."
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kinds", nargs="+", default=["gaussian", "source"])
    parser.add_argument("--sizes", nargs="+", type=int, default=list(DEFAULT_SIZES))
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--float32", action="store_true", help="JAX in float32")
    args = parser.parse_args(argv)

    import jax

    jax.config.update("jax_enable_x64", not args.float32)
    import mobs_ppl as mp

    frame, observations = build_observations()
    precision = "float32" if args.float32 else "float64"
    print(
        f"mobs_ppl {mp.__version__}, jax {jax.__version__}, device "
        f"{jax.devices()[0].device_kind} ({jax.default_backend()}), {precision}, "
        f"model frame {frame.shape}"
    )
    for kind in args.kinds:
        label = (
            f"GaussianSource r={GAUSSIAN_RADIUS:g}"
            if kind == "gaussian"
            else f"Source {MORPHOLOGY_BOX}x{MORPHOLOGY_BOX}"
        )
        print(f"\n### {label}\n")
        print("| N | compile s | step ms | step ms / N | eqns |")
        print("|---:|---:|---:|---:|---:|")
        compile_s, step_ms, sizes_eqns = [], [], []
        for n in args.sizes:
            model = build_model(frame, observations, n, kind)
            c, s, eqns = measure(model, args.repeat)
            compile_s.append(c)
            step_ms.append(s)
            sizes_eqns.append(eqns)
            print(f"| {n} | {c:.2f} | {s:.2f} | {s / n:.3f} | {eqns} |", flush=True)
        if len(args.sizes) >= 3:
            print(f"\n{verdict(args.sizes, compile_s, step_ms, sizes_eqns)}")


if __name__ == "__main__":
    main()
