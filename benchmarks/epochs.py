"""How the cost of the scene model's gradient grows with the number of epochs.

Usage::

    python benchmarks/epochs.py [--epochs 1 2 4 8] [--sources 8] [--repeat N] [--float32]

The observations of ``scaling.py`` (zero data, unit weights, Gaussian PSFs, TAN WCS): an
HST-like image on the model grid (0.03"/px, one band, the reference) and N HSC-like
epochs (0.168"/px, the same five bands, each pointing offset by a fraction of a pixel
and its PSF a little wider than the one before), joined with
``Frame.from_observations(..., channels="shared")``: the model frame keeps six channels
whatever N. Every epoch but the first has a shift and a calibration (the first is the
photometric reference). The timed function is ``jax.jit(jax.grad(loss))`` of the
negative log joint density at the initial values of ``--sources`` Gaussian sources, as
in ``scaling.py`` (compile seconds, best step milliseconds over ``--repeat`` calls, jaxpr
equations). The verdict fits ``a + b N`` to the step times.
"""

from __future__ import annotations

import argparse

import numpy as np
from scaling import HSC_N, HSC_SCALE, HST_N, HST_SCALE, _tan_wcs, linear_fit, measure

DEFAULT_EPOCHS = (1, 2, 4, 8)


def build_model(n_epochs: int, n_sources: int, seed: int = 0):
    """``SceneModel`` of the HST image and ``n_epochs`` HSC epochs (shared channels)."""
    import astropy.units as u

    import mobs_ppl as mp

    rng = np.random.default_rng(seed)
    observations = [
        mp.Observation(
            np.zeros((1, HST_N, HST_N)),
            weights=1.0,
            psf=mp.psf.gaussian_psf(1.5),
            wcs=_tan_wcs(HST_SCALE, HST_N),
            channels=["F814W"],
            name="HST",
        )
    ]
    for k in range(n_epochs):
        wcs = _tan_wcs(HSC_SCALE, HSC_N)
        wcs.wcs.crpix = wcs.wcs.crpix + rng.uniform(-0.5, 0.5, size=2)
        wcs.wcs.set()
        observations.append(
            mp.Observation(
                np.zeros((5, HSC_N, HSC_N)),
                weights=1.0,
                psf=mp.psf.gaussian_psf(1.3 + 0.1 * k),
                wcs=wcs,
                channels=["g", "r", "i", "z", "y"],
                name=f"HSC{k + 1}",
            )
        )
    frame = mp.Frame.from_observations(observations, channels="shared")
    margin = 15
    sources = []
    for _ in range(n_sources):
        center = rng.uniform(margin, np.array(frame.shape[1:]) - 1 - margin)
        spectrum = rng.uniform(0.5, 2.0, size=frame.n_channels)
        sources.append(mp.GaussianSource(center, spectrum, 2.0, rng.uniform(-0.3, 0.3, size=2)))
    later = [o.name for o in observations[2:]]
    return mp.SceneModel(
        mp.Scene(frame, sources),
        observations,
        shifts={n: 0.1 * u.arcsec for n in ["HSC1", *later]},
        calibrations={n: 0.05 for n in later},
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", nargs="+", type=int, default=list(DEFAULT_EPOCHS))
    parser.add_argument("--sources", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--float32", action="store_true", help="JAX in float32")
    args = parser.parse_args(argv)

    import jax

    jax.config.update("jax_enable_x64", not args.float32)
    import mobs_ppl as mp

    precision = "float32" if args.float32 else "float64"
    print(
        f"mobs_ppl {mp.__version__}, jax {jax.__version__}, device "
        f"{jax.devices()[0].device_kind} ({jax.default_backend()}), {precision}, "
        f"{args.sources} Gaussian sources"
    )
    print("\n| epochs | model frame | compile s | step ms | eqns |")
    print("|---:|---|---:|---:|---:|")
    step_ms = []
    for n in args.epochs:
        model = build_model(n, args.sources)
        c, s, eqns = measure(model, args.repeat)
        step_ms.append(s)
        print(f"| {n} | {model.scene.frame.shape} | {c:.2f} | {s:.2f} | {eqns} |", flush=True)
    if len(args.epochs) >= 2:
        a, b = linear_fit(args.epochs, step_ms)
        ratio = step_ms[-1] / step_ms[-2]
        print(
            f"\nstep ~ {a:.2f} ms + {b:.2f} ms x epochs; epochs {args.epochs[-2]} -> "
            f"{args.epochs[-1]} multiplies the step by {ratio:.2f} (at most "
            f"{args.epochs[-1] / args.epochs[-2]:g} when linear)"
        )


if __name__ == "__main__":
    main()
