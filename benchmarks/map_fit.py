"""MAP fits to the mode on COSMOS: Newton against Adam, and the marginal error bars.

Usage::

    python benchmarks/map_fit.py [--data-dir DIR] [--adam-steps N] [--only hst|joint]
                                 [--hst-noise measured|white]

For both detections of the COSMOS HST + HSC field (sources detected on HST alone, and
jointly on HST then HSC), with HST's measured correlated noise and HSC resampled with
its exact noise model, it prints one markdown table:

* ``fit_map(method="newton")`` (the default): iterations, wall time (compilation
  included), final Newton decrement;
* ``fit_map(method="adam", max_iter=N)``: the same numbers after ``N`` Adam steps
  (``--adam-steps 0`` skips it);
* ``laplace(model, fit)``: wall time of the marginal error bars (every morphology
  pixel free; matrix-free above 3000 parameters), the marginal and the conditional
  (morphologies held) sd of the HSC shift, and the solves' precision (CG steps, the
  final ``rtol``, the asymmetry of the solved covariance);
* native HSC chi2 per dof per band at the Newton MAP;
* the model-independent cross-check ``measure.template_shift`` (HST rendered into HSC
  pixels, fitted in i + z + y).

``--hst-noise white`` gives HST its inverse-variance weights as if its pixels were
independent (a plain ``Observation``) instead of the drizzled co-add's measured pixel
correlations: the cross-check of issue 13 of how much the shift depends on HST's noise
model.
"""

from __future__ import annotations

import argparse
import pathlib
import platform
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent


def _default_data_dir():
    shared = REPO.parent / "shared" / "data"
    return shared if shared.is_dir() else None


def _model(hst, hsc, detection: str, hst_noise: str = "measured"):
    import warnings

    import astropy.units as u

    import mobs_ppl as mp

    frame = mp.Frame.from_observations([hst, hsc], coverage="union")
    hsc_c = mp.CorrelatedObservation.from_observation(hsc, resample_to_frame=frame)
    hst_c = mp.CorrelatedObservation.from_observation(hst) if hst_noise == "measured" else hst
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mp.MobsPplWarning)
        if detection == "joint":
            scene = mp.init.from_observations([hst, hsc], frame, image_types=["space", "ground"])
        else:
            scene = mp.init.from_observation(hst, frame, image_type="space")
            scene = mp.measure.forced_photometry(scene, hsc_c)
    return mp.SceneModel(scene, [hst_c, hsc_c], shifts={"HSC": 0.1 * u.arcsec})


def _solve_note() -> str:
    """The last matrix-free solves' CG steps, final rtol and asymmetry (empty if dense)."""
    import numpy as np

    from mobs_ppl import laplace_approximation

    stats = laplace_approximation._SOLVE_STATS
    if "steps" not in stats:
        return ""
    return (
        f"; solves: at most {int(np.max(stats['steps']))} CG steps, rtol {stats['rtol']:.0e},"
        f" asymmetry {stats['asymmetry']:.1e}"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="directory holding cosmos_hst_hsc/")
    parser.add_argument("--adam-steps", type=int, default=2000, help="Adam steps to compare")
    parser.add_argument("--only", choices=["hst", "joint"], default=None)
    parser.add_argument("--hst-noise", choices=["measured", "white"], default="measured")
    args = parser.parse_args(argv)

    import jax

    jax.config.update("jax_enable_x64", True)
    import warnings

    import numpy as np

    import mobs_ppl as mp

    hst, hsc = mp.datasets.load_cosmos(args.data_dir or _default_data_dir())
    rows = []
    for detection in ("hst", "joint") if args.only is None else (args.only,):
        model = _model(hst, hsc, detection, args.hst_noise)
        n = sum(int(np.size(v)) for v in model.init_values().values())
        label = (
            f"{detection} detection, {args.hst_noise} HST noise "
            f"({model.scene.n_groups} sources, {n} parameters)"
        )
        start = time.perf_counter()
        fit = mp.fit_map(model)
        newton_s = time.perf_counter() - start
        rows.append((f"{label}: Newton", fit.iterations, newton_s, fit.decrement, fit.converged))
        if args.adam_steps > 0:
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", mp.MobsPplWarning)
                adam = mp.fit_map(model, method="adam", max_iter=args.adam_steps)
            adam_s = time.perf_counter() - start
            rows.append((f"{label}: Adam", adam.iterations, adam_s, adam.decrement, adam.converged))
        start = time.perf_counter()
        approx = mp.laplace(model, fit)
        laplace_s = time.perf_counter() - start
        solves = _solve_note()
        conditional = mp.laplace(model, fit, sites=["spectrum", "shift"])
        shift = fit.shift_native("HSC")
        gof = mp.measure.goodness_of_fit(fit.scene, hsc, shift=shift)
        rows.append(
            (
                f"{label}: Laplace, marginal",
                None,
                laplace_s,
                approx.decrement,
                f"shift {np.round(shift, 3)} +- {np.round(approx.sd('shift_native')[0], 3)}"
                f" (conditional sd {np.round(conditional.sd('shift_native')[0], 3)}) native px;"
                " HSC chi2/dof " + ", ".join(f"{k} {v:.2f}" for k, v in gof.items()) + solves,
            )
        )
    start = time.perf_counter()
    template = mp.measure.template_shift(hst, hsc, channels=["i", "z", "y"])
    rows.append(
        (
            "template shift (HST into HSC, i+z+y)",
            None,
            time.perf_counter() - start,
            None,
            f"{np.round(template.shift, 3)} +- {np.round(template.sd, 3)} native px",
        )
    )
    device = jax.devices()[0]
    print(
        f"mobs_ppl {mp.__version__}, jax {jax.__version__}, {device.platform}, float64, "
        f"Python {platform.python_version()}, {platform.machine()}"
    )
    print()
    print("| run | iterations | wall s | decrement | converged / result |")
    print("|---|---:|---:|---:|---|")
    for name, iterations, seconds, decrement, result in rows:
        it = "" if iterations is None else str(iterations)
        dec = "" if decrement is None else f"{decrement:.3g}"
        print(f"| {name} | {it} | {seconds:.1f} | {dec} | {result} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
