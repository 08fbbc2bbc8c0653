"""Where the joint COSMOS fit stalls: the valley of the galaxy on the HSC edge (issue 13).

    python benchmarks/newton_valley.py [--steps 60] [--corrected-steps 20]

Builds the joint-detection COSMOS model of ``map_fit.py`` (x64), runs ``--steps``
steps of the default Newton fit, and prints at that point:

- the undamped Gauss-Newton step: its decrement, its predicted decrease and the actual
  decrease along it (fractions ``t`` of the step), and how nonlinear the residuals are
  along it (``|r''|``, their second directional derivative, against ``|J d|``);
- the same after a dense Newton re-solve of every spectrum coordinate at each trial
  point (a variable-projection corrector: the prediction is linear in the spectra);
- ``--corrected-steps`` damped steps with that corrector, then the Gauss-Newton
  decrement, the exact-Hessian decrement of the marginal Laplace approximation and the
  share of the squared decrement per site, with the edge galaxy's envelope.

``docs/inference.md`` ("Known limit") quotes these numbers. About 25 minutes on two
cores.
"""

from __future__ import annotations

import argparse
import math
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

FRACTIONS = (0.1, 0.25, 0.5, 1.0)


def _spectrum_corrector(problem, z0):
    """``z -> dz``: one dense Newton step in the spectrum coordinates alone."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np

    from mobs_ppl import newton

    blocks = problem.unravel(z0)
    mask = problem.ravel(
        {k: (jnp.ones_like(v) if k == "spectrum" else jnp.zeros_like(v)) for k, v in blocks.items()}
    )
    index = jnp.asarray(np.nonzero(np.asarray(mask))[0])

    @eqx.filter_jit
    def correction(problem, z):
        n = z.size
        r, jvp = jax.linearize(problem.residual, z)
        _, gradient, hvp = newton._prior_parts(problem, z)

        def unit(i):
            return jnp.zeros(n, z.dtype).at[i].set(1.0)

        columns = jax.vmap(lambda i: jvp(unit(i)))(index)
        g = columns @ r + gradient[index]
        h = columns @ columns.T + jax.vmap(lambda i: hvp(unit(i)))(index)[:, index]
        raw = jnp.zeros(n, z.dtype).at[index].set(-jnp.linalg.solve(h, g))
        room_up = jnp.where(raw > 0, 0.9 * (problem.upper_at(z) - z), jnp.inf)
        room_down = jnp.where(raw < 0, 0.9 * (z - problem.lower), jnp.inf)
        return jnp.clip(raw, -room_down, room_up)

    return lambda z: correction(problem, z)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="directory holding cosmos_hst_hsc/")
    parser.add_argument("--steps", type=int, default=60, help="default Newton steps first")
    parser.add_argument("--corrected-steps", type=int, default=20)
    args = parser.parse_args(argv)

    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np
    from map_fit import _default_data_dir, _model

    import mobs_ppl as mp
    from mobs_ppl import newton
    from mobs_ppl.ellipticity import unit_disk
    from mobs_ppl.inference import MAPResult, split_sites

    data_dir = args.data_dir or _default_data_dir()
    hst, hsc = mp.datasets.load_cosmos(data_dir)
    model = _model(hst, hsc, "joint")
    values, fixed = split_sites(model, None, None)
    problem = newton.PosteriorProblem.build(model, values, fixed)
    start = time.perf_counter()
    z = newton.levenberg_marquardt(problem, max_iter=args.steps).z
    print(f"{args.steps} default steps: {time.perf_counter() - start:.0f} s")

    def objective(x):
        return float(newton._objective(problem, x))

    def step(x, key, damping, rtol, max_steps):
        settings = newton._traced(damping, rtol, max_steps)
        return newton._step(problem, x, key, *settings, newton._PROJECTIONS)

    correct = _spectrum_corrector(problem, z)
    key = jax.random.PRNGKey(0)
    f0 = objective(z)
    _, d, slope, quadratic, decrement2, _, _ = step(z, key, 0.0, 1e-4, 1000)
    predicted = -(float(slope) + 0.5 * float(quadratic))
    r, along = jax.jvp(problem.residual, (z,), (d,))
    _, second = jax.jvp(lambda x: jax.jvp(problem.residual, (x,), (d,))[1], (z,), (d,))
    print(
        f"\nundamped step: decrement {math.sqrt(float(decrement2)):.3g}, predicted decrease "
        f"{predicted:.3g}, |J d| {float(jnp.linalg.norm(along)):.3g}, |r''| "
        f"{float(jnp.linalg.norm(second)):.3g}"
    )
    print("| t | decrease | with spectra re-solved |\n|---|---|---|")
    for t in FRACTIONS:
        x = z + t * d
        print(f"| {t} | {f0 - objective(x):.4g} | {f0 - objective(x + correct(x)):.4g} |")

    damping, ratio = 1e-3, 0.0
    for _ in range(args.corrected_steps):
        key, sub = jax.random.split(key)
        f, d, slope, quadratic, _, _, _ = step(z, sub, damping, 1e-2, 100)
        predicted = -(float(slope) + 0.5 * float(quadratic))
        x, length = z + d, 1.0
        x = x + correct(x)
        ratio = (float(f) - objective(x)) / predicted if predicted > 0 else -1.0
        while ratio <= 1e-4 and length > 0.2:
            length *= 0.5
            x = z + length * d
            x = x + correct(x)
            shorter = -(length * float(slope) + 0.5 * length**2 * float(quadratic))
            ratio = (float(f) - objective(x)) / shorter
        if ratio > 1e-4:
            z = x
            damping *= 2.0 if length < 1 else max(1 / 3, 1 - (2 * min(ratio, 1.0) - 1) ** 3)
        else:
            damping *= 4.0
    f1 = objective(z)
    print(f"\n{args.corrected_steps} corrected steps: objective {f0 - f1:.4g} lower")
    key, sub = jax.random.split(key)
    _, d, _, _, decrement2, _, _ = step(z, sub, 0.0, 1e-4, 1000)
    gradient = jax.grad(lambda x: newton._objective(problem, x))(z)
    gradient_blocks = problem.unravel(gradient)
    shares = {
        name: float(-jnp.vdot(gradient_blocks[name], block))
        for name, block in problem.unravel(d).items()
    }
    fit = MAPResult(
        model=model,
        params={**fixed, **problem.values(z)},
        losses=np.array([f1]),
        best_iteration=0,
        converged=False,
        decrement=math.sqrt(float(decrement2)),
        iterations=args.steps + args.corrected_steps,
        method="newton",
    )
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mp.MobsPplWarning)
        marginal = mp.laplace(model, fit)
    print(
        f"Gauss-Newton decrement {fit.decrement:.3g}; marginal Laplace (exact Hessian) "
        f"decrement {marginal.decrement:.3g}"
    )
    total = sum(shares.values())
    print(
        "share of the squared decrement:",
        {k: round(v / total, 3) for k, v in sorted(shares.items(), key=lambda kv: -kv[1])[:4]},
    )
    frame_rows = model.scene.frame.shape[1]
    start_values = model.init_values()
    for name in sorted(start_values):
        if name.startswith("envelope"):
            p = np.asarray(fit.params[name])
            g = float(np.hypot(*np.asarray(unit_disk(p[3:5]))))
            start_p = np.asarray(start_values[name])
            g0 = float(np.hypot(*np.asarray(unit_disk(start_p[3:5]))))
            print(
                f"{name}: centre row {p[0]:.1f} (start {start_p[0]:.1f}, frame rows "
                f"{frame_rows}), axis ratio {(1 - g) / (1 + g):.3f} (start "
                f"{(1 - g0) / (1 + g0):.3f})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
