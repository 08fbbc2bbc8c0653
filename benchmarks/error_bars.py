"""Error bars of native vs resampled fits; prints a markdown table.

Usage::

    python benchmarks/error_bars.py [--realisations N]

The set-up is that of ``tests/test_error_bars.py`` (imported from there, so the table
describes exactly what the tests assert): an HSC-like image (0.168"/px, 25 x 25,
Moffat PSF FWHM 0.7") of a point source or a Sersic galaxy, fitted for flux and
position ``(dy, dx)`` in arcsec

* natively (``Observation``),
* resampled onto the 0.03"/px model grid (5.6x finer) with ``CorrelatedObservation``,
  likelihood on the resampled pixels with the pseudo-inverse of their covariance,
* resampled, but with the resampled pixels treated as independent (weights
  ``co.weights``): the naive treatment.

Columns: the Laplace posterior sd of the native fit (inverse Hessian at the truth, for
noiseless data) and the ratios sd(resampled) / sd(native), sd(naive) / sd(native).
With ``--realisations N`` (a multiple of 100) it also fits N seeded noise realisations
and reports the scatter of the MAP over the mean Laplace sd (1 for honest error bars)
and the coverage of the 68% intervals.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
PARAMETERS = ("flux", "dy", "dx")
KINDS = ("native", "resampled", "naive")


def _load_setup():
    """The test module that defines the problem, the likelihoods and the fits."""
    path = ROOT / "tests" / "test_error_bars.py"
    spec = importlib.util.spec_from_file_location("error_bar_setup", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def fisher_sd(setup, source):
    """Laplace sd at the truth for noiseless data, per treatment."""
    s = setup.problem()
    nlls = setup.negative_loglikes()
    truth = jnp.asarray(setup.TRUTH[source])
    clean = setup.clean_native(source)
    template = s["templates"][source]
    out = {}
    for kind in KINDS:
        data = setup.data_for(kind, clean)
        hessian = jax.jit(jax.hessian(nlls[kind]))(truth, data, template)
        out[kind] = np.sqrt(np.diag(np.linalg.inv(np.asarray(hessian))))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--realisations",
        type=int,
        default=0,
        help="also fit this many noise realisations (multiple of 100; default: none)",
    )
    args = parser.parse_args(argv)
    setup = _load_setup()
    if args.realisations % setup.CHUNK:
        parser.error(f"--realisations must be a multiple of {setup.CHUNK}")

    start = time.perf_counter()
    print(
        f"# error bars: {setup.NATIVE_N}x{setup.NATIVE_N} native px of "
        f'{setup.NATIVE_SCALE}" -> {setup.FINE_SCALE}" model px '
        f"({setup.NATIVE_SCALE / setup.FINE_SCALE:.1f}x), jax {jax.__version__} on "
        f"{jax.devices()[0].platform}"
    )
    print()
    header = "| source | parameter | sd native | sd resampled / native | sd naive / native |"
    rule = "|---|---|---|---|---|"
    if args.realisations:
        header += " MAP scatter / sd (native, resampled, naive) | 68% coverage (same) |"
        rule += "---|---|"
    print(header)
    print(rule)
    for source in setup.TRUTH:
        sds = fisher_sd(setup, source)
        empirical = (
            setup.run_coverage(source, KINDS, args.realisations) if args.realisations else None
        )
        for i, name in enumerate(PARAMETERS):
            unit = "" if name == "flux" else '"'
            row = (
                f"| {source} | {name} | {sds['native'][i]:.4g}{unit} | "
                f"{sds['resampled'][i] / sds['native'][i]:.4f} | "
                f"{sds['naive'][i] / sds['native'][i]:.4f} |"
            )
            if empirical:
                ratios = ", ".join(
                    f"{empirical[k]['scatter'][i] / empirical[k]['sd'][i]:.3f}" for k in KINDS
                )
                cover = ", ".join(f"{empirical[k]['coverage'][i]:.3f}" for k in KINDS)
                row += f" {ratios} | {cover} |"
            print(row)
    print()
    print(f"# {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
