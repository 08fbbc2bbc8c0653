"""Command-line interface: ``mobs-ppl``.

``mobs-ppl demo --out DIR`` fits the COSMOS HST + HSC field (or, without data, a
simulated one with known truth) end to end with :func:`mobs_ppl.field.run_field`:
joint detection, MAP with the HSC shift, Laplace error bars, NUTS on fluxes and shift;
it prints the shift and fluxes and writes the results folder of ``mobs-ppl fit``.

``mobs-ppl fit FIELD.toml --out DIR`` fits the observations a TOML file describes
(:mod:`mobs_ppl.field`; schema in ``docs/cli.md``).

``mobs-ppl batch MANIFEST --out DIR`` fits many such fields on a Dask cluster
(:mod:`mobs_ppl.batch`).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
import traceback
from collections.abc import Sequence

__all__ = ["main"]

PROG = "mobs-ppl"

#: NUTS chains, draws and warm-up steps per chain of ``mobs-ppl demo``. On the simulated
#: field, 2 x (300 + 300) gave bulk ESS 610-1270 for every flux and shift component, but
#: R-hat up to 1.016: the estimate of R-hat from two chains scatters by about that much.
#: Four chains of 400 draws bring it below 1.01 (warm-up is short: NUTS starts with the
#: Laplace metric).
DEMO_CHAINS = 4
DEMO_SAMPLES = 400
DEMO_WARMUP = 200

#: The simulated field of ``mobs-ppl demo``: a blend of two galaxies (a bulge and a disk
#: each) in a 2.4-arcsec HST cut and a 3-arcsec HSC cut, which fits in a few minutes on
#: two cores (the simulator's default field, four galaxies in 3 arcsec, took 14).
DEMO_FIELD = {"n_galaxies": 2, "space_pixels": 80, "ground_pixels": 18}

#: ``mobs-ppl demo --quick``: NUTS draws and warm-up steps per chain.
QUICK_NUTS = 30


def _version() -> str:
    from . import __version__

    return __version__


def _count(minimum: int):
    """An ``argparse`` type: a whole number of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number; got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}; got {value}")
        return value

    return parse


def _add_debug(command) -> None:
    """``--debug`` also after the command name (hidden; the top-level one is documented).

    ``SUPPRESS`` keeps a top-level ``--debug`` when it is not repeated.
    """
    command.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )


def _add_results_arguments(command) -> None:
    """``--out``, ``--overwrite`` and ``--debug``, shared by the commands that write results."""
    command.add_argument(
        "--out",
        required=True,
        type=pathlib.Path,
        help=(
            "results folder, written as a whole (replaced at the end of a successful run); "
            "an existing one must be empty or an earlier results folder (with run.json)"
        ),
    )
    command.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out even if it holds other content (which is deleted)",
    )
    _add_debug(command)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Joint models of blended galaxies seen by several instruments.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="on an error, print the full traceback (default: one line)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo = commands.add_parser(
        "demo",
        help="fit the COSMOS HST + HSC field (or a simulated one) end to end",
        description=(
            "Fit the COSMOS HST (F814W) and HSC (g, r, i, z, y) images jointly -- or, "
            "without data or network, a simulated field with a known shift and known "
            "fluxes: model frame, HSC resampled with its exact correlated noise, joint "
            "detection (HST, then HSC), MAP with the HSC shift, marginal Laplace error "
            "bars, then NUTS on fluxes and shift. Prints the shift and the fluxes (against "
            "the truth on the simulated field). Writes OUT/summary.json, "
            "OUT/sources.ecsv, the scene and fit, OUT/posterior.nc when sampled, and a "
            "scene plot per observation."
        ),
    )
    _add_results_arguments(demo)
    demo.add_argument(
        "--data-dir",
        type=pathlib.Path,
        default=None,
        help=(
            "directory holding cosmos_hst_hsc/ (or that folder itself); default: "
            "$MOBS_PPL_DATA_DIR, else a user cache filled by a one-off download"
        ),
    )
    demo.add_argument(
        "--no-download",
        action="store_true",
        help="never download the data; use what is found locally",
    )
    demo.add_argument(
        "--field",
        choices=("auto", "cosmos", "simulated"),
        default="auto",
        help=(
            "cosmos: the real COSMOS field (fail if it cannot be found or downloaded); "
            "simulated: a simulated HST + HSC field with a known shift, needing no data; "
            "auto (default): COSMOS when found or downloadable, else the simulated field "
            "(an explicit --data-dir or $MOBS_PPL_DATA_DIR must hold the COSMOS files)"
        ),
    )
    demo.add_argument("--seed", type=int, default=0, help="seed of the simulated field (default 0)")
    demo.add_argument(
        "--quick",
        action="store_true",
        help=(
            "a check that everything works, in a minute or two: the simulated field "
            f"and NUTS {DEMO_CHAINS} x ({QUICK_NUTS} + {QUICK_NUTS}) (too short to mix) "
            "unless --samples / --warmup say otherwise"
        ),
    )
    demo.add_argument(
        "--max-iter",
        type=_count(1),
        default=None,
        help="largest number of MAP iterations (default: fit_map's, which stops at the mode)",
    )
    demo.add_argument(
        "--samples",
        type=_count(0),
        default=None,
        help=f"NUTS draws per chain after the MAP (default {DEMO_SAMPLES}; 0: MAP only)",
    )
    demo.add_argument(
        "--warmup",
        type=_count(0),
        default=None,
        help=f"NUTS warm-up steps per chain (default {DEMO_WARMUP})",
    )
    _add_fit(commands)
    _add_batch(commands)
    return parser


def _add_fit(commands) -> None:
    fit = commands.add_parser(
        "fit",
        help="fit a field described by a TOML file",
        description=(
            "Fit the observations listed in FIELD (a TOML file; schema and example in "
            "docs/cli.md) jointly: model frame, noise models, sources, forced photometry, "
            "MAP with fitted shifts, marginal Laplace error bars, optionally NUTS. Writes "
            "OUT/summary.json, OUT/sources.ecsv, the scene and fit, plots per observation "
            "and, when sampled, OUT/posterior.nc."
        ),
    )
    fit.add_argument("field", type=pathlib.Path, metavar="FIELD", help="the field's TOML file")
    _add_results_arguments(fit)


def _fit(args) -> int:
    """Check the field file, then fit it into ``--out``."""
    from .field import load_field

    config = load_field(args.field)  # bad input fails here, before JAX is imported

    import jax
    import matplotlib

    jax.config.update("jax_enable_x64", True)
    # the command line writes figures to files: a non-interactive backend (the entry
    # point's choice, not the library's)
    matplotlib.use("Agg")

    from .field import fit_field

    print(f"{PROG} {_version()} fit {args.field} (jax {jax.__version__}, float64)")
    fit_field(
        config,
        args.out,
        overwrite=args.overwrite,
        log=lambda line: print("  " + line),
        progress_bar=True,
    )
    print(f"wrote {args.out / 'summary.json'}")
    return 0


def _add_batch(commands) -> None:
    batch = commands.add_parser(
        "batch",
        help="fit the fields of a manifest on a Dask cluster",
        description=(
            "Fit every field listed in MANIFEST (a TOML file of [[field]] tables with "
            "name and config, the path of a field file; see docs/cli.md) as `fit` does, "
            "one Dask task per field, on a local cluster or an existing scheduler. "
            "Writes OUT/NAME/ per field as soon as it finishes (the results folder of "
            "`fit`), OUT/NAME/error.json for a field that failed (the others go on) and "
            "OUT/batch.json (status of each field, fields per minute). Run again to "
            "resume: fields with OUT/NAME/summary.json are skipped. Exit status 1 if "
            "any field failed."
        ),
    )
    batch.add_argument(
        "manifest", type=pathlib.Path, metavar="MANIFEST", help="the manifest (TOML)"
    )
    batch.add_argument(
        "--out",
        required=True,
        type=pathlib.Path,
        help="results folder: one sub-folder per field, and batch.json",
    )
    batch.add_argument(
        "--scheduler",
        default="local",
        metavar="local|ADDRESS",
        help=(
            "local (default): start a Dask LocalCluster of single-threaded worker "
            "processes; or the address of a running Dask scheduler (e.g. "
            "tcp://host:8786) whose workers see the same files"
        ),
    )
    batch.add_argument(
        "--workers",
        type=_count(1),
        default=None,
        help="worker processes of the local cluster (default: CPUs, at most one per field)",
    )
    batch.add_argument(
        "--cores-per-worker",
        type=_count(1),
        default=None,
        metavar="K",
        help=(
            "bind each local worker to K cores of its own (Linux), so that the workers' "
            "JAX threads do not compete for the same cores (default: unbound)"
        ),
    )
    _add_debug(batch)


def _batch(args) -> int:
    """Run the manifest's fields on Dask; exit status 1 if any failed."""
    from .batch import load_manifest, run_batch

    entries = load_manifest(args.manifest)  # bad input fails here, before Dask starts

    from tqdm.auto import tqdm

    where = "a local cluster" if args.scheduler == "local" else f"scheduler {args.scheduler}"
    print(f"{PROG} {_version()} batch {args.manifest}: {len(entries)} fields on {where}")
    result = run_batch(
        args.manifest,
        args.out,
        scheduler=args.scheduler,
        workers=args.workers,
        cores_per_worker=args.cores_per_worker,
        log=lambda line: tqdm.write("  " + line),
    )
    print(result.table())
    print(f"wrote {args.out / 'batch.json'}")
    failed = result.count("failed")
    if failed:
        print(
            f"{PROG}: {failed} of {len(entries)} fields failed; their errors are in "
            f"{args.out}/NAME/error.json",
            file=sys.stderr,
        )
        return 1
    return 0


def _load_field(args):
    """The demo's observations: ``(hst, hsc, description, truth or None)``, or None.

    ``None`` means the COSMOS data were required and could not be had; the reason has
    been printed. In ``auto`` mode without an explicit data location, a missing or
    undownloadable COSMOS field falls back to :func:`mobs_ppl.synthetic.simulated_field`.
    """
    import os

    from . import datasets
    from .synthetic import simulated_field

    explicit = args.data_dir is not None or os.environ.get(datasets.DATA_DIR_ENV, "").strip()
    if args.quick and args.field == "cosmos":
        raise ValueError("--quick runs on the simulated field; drop --field cosmos or --quick")
    if args.field != "simulated" and not args.quick:
        try:
            files = datasets.cosmos_files(args.data_dir, download=not args.no_download)
        except OSError as err:  # not found, or the download failed
            if args.field == "cosmos" or explicit:
                print(f"{PROG}: error: {err}", file=sys.stderr)
                print(
                    f"{PROG}: hint: on the command line, give --data-dir DIR (a directory "
                    f"holding {datasets.COSMOS_FOLDER}/) or set {datasets.DATA_DIR_ENV}; "
                    "or run on a simulated field with --field simulated",
                    file=sys.stderr,
                )
                return None
            print(
                f"{PROG}: the COSMOS data are not available ({err}); running the demo on a "
                f"simulated HST + HSC field instead (seed {args.seed}). For the real field "
                f"give --data-dir DIR or set {datasets.DATA_DIR_ENV}.",
                file=sys.stderr,
            )
        else:
            folder = pathlib.Path(files["Cut_HST.fits"]).parent
            hst, hsc = datasets.load_cosmos(folder, download=False)
            return hst, hsc, str(folder), None
    field = simulated_field(args.seed, **DEMO_FIELD)
    truth = {
        "shift_native_px": field.true_shift_native.tolist(),
        "positions_deg": [[c.ra.deg, c.dec.deg] for c in field.positions],
        "fluxes": field.fluxes.tolist(),
    }
    size = ", quick" if args.quick else ""
    return field.hst, field.hsc, f"simulated field (seed {args.seed}{size})", truth


def _demo(args) -> int:
    """Run the demo into a staged results folder that replaces ``--out`` on success."""
    from .atomic import staged_folder

    with staged_folder(args.out, overwrite=args.overwrite) as staged:
        code = _run_demo(args, staged.path)
        if code:
            staged.discard()  # e.g. no data: leave --out as it was
    if code == 0:
        print(f"wrote {args.out / 'summary.json'}")
    return code


def _demo_config(samples: int, warmup: int, max_iter: int | None):
    """The demo's field: HST the reference, HSC resampled and shifted, joint detection."""
    from .field import FieldConfig, ObservationConfig, SampleConfig, SourcesConfig

    return FieldConfig(
        path=None,
        observations=(
            ObservationConfig("HST", None, None, ("F814W",), noise="measured"),
            ObservationConfig(
                "HSC",
                None,
                None,
                ("g", "r", "i", "z", "y"),
                resample=True,
                shift_prior_arcsec=0.1,
            ),
        ),
        sources=SourcesConfig(detect_on=("HST", "HSC"), image_types=("space", "ground")),
        max_iter=max_iter,
        sample=SampleConfig(num_warmup=warmup, num_samples=samples, num_chains=DEMO_CHAINS)
        if samples
        else None,
    )


def _against_truth(truth):
    """``extra`` for :func:`mobs_ppl.field.write_results`: fitted minus true, in sd."""
    import numpy as np
    from astropy.coordinates import SkyCoord

    def compare(summary: dict) -> dict:
        shift = summary["shift"]["HSC"]
        true = np.asarray(truth["shift_native_px"])
        sd = np.asarray(shift["sd_native_px"] or [np.nan, np.nan], float)
        out = {
            "shift_native_px": {
                "true": true.tolist(),
                "z": ((shift["native_px"] - true) / sd).tolist(),
            }
        }
        sources = summary["sources"]
        fitted = SkyCoord([s["ra"] for s in sources], [s["dec"] for s in sources], unit="deg")
        positions = SkyCoord(truth["positions_deg"], unit="deg")
        index, separation, _ = positions.match_to_catalog_sky(fitted)
        galaxies = []
        for g, (k, sep) in enumerate(zip(index, separation.arcsec, strict=True)):
            source = sources[int(k)]
            true_flux = dict(zip(summary["frame"]["channels"], truth["fluxes"][g], strict=True))
            entry = {"source": int(k), "separation_arcsec": float(sep), "flux": {}}
            for band, value in true_flux.items():
                sd_band = (source.get("flux_sd") or {}).get(band)
                z = None if not sd_band else (source["flux"][band] - value) / sd_band
                entry["flux"][band] = {
                    "true": float(value),
                    "fitted": source["flux"][band],
                    "sd": sd_band,
                    "z": z,
                }
            galaxies.append(entry)
        out["galaxies"] = galaxies
        return {"truth_comparison": out}

    return compare


#: How the demo names each ``sd_method`` of the summary.
_SD_LABELS = {
    "laplace": "marginal sd, Laplace",
    "nuts": "marginal sd, NUTS",
    "nuts_conditional": "NUTS sd conditional on the MAP morphologies",
}


def _report_nuts(summary: dict) -> None:
    """One line of NUTS diagnostics, saying whether the chains can be trusted."""
    diagnostics = summary.get("diagnostics")
    if diagnostics is None:
        return
    r_hat, ess = diagnostics["max_r_hat"], diagnostics["min_ess_bulk"]
    healthy = r_hat is not None and r_hat < 1.01 and ess is not None and ess > 400
    held = " (morphologies held at the MAP)" if summary["nuts"]["conditional"] else ""
    verdict = "mixed well" if healthy else "NOT mixed: do not use its widths; run longer"
    print(
        f"NUTS{held}, fluxes and shift: max r_hat {r_hat:.4f}, min bulk ESS {ess:.0f}, "
        f"{diagnostics['divergences']} divergences -- {verdict}"
        if r_hat is not None and ess is not None
        else f"NUTS{held}: max r_hat {r_hat}, min bulk ESS {ess} -- {verdict}"
    )


def _report(summary: dict) -> None:
    """Print the shift and the fluxes (against the truth when there is one)."""
    import numpy as np

    shift = summary["shift"]["HSC"]
    sd = shift["sd_native_px"]
    error = (
        "no error bar: the MAP is not at the mode"
        if sd is None
        else f"+- {np.round(sd, 3)} ({_SD_LABELS[shift['sd_method']]})"
    )
    print(
        f"shift of HSC: {np.round(shift['native_px'], 3)} native px {error}; "
        f"sky offset (dRA cos dec, dDec) {np.round(shift['sky_arcsec'], 4)} arcsec"
    )
    _report_nuts(summary)
    truth = summary.get("truth_comparison")
    if truth is not None:
        t = truth["shift_native_px"]
        z = "n/a" if any(v is None or not np.isfinite(v) for v in t["z"]) else np.round(t["z"], 2)
        print(f"  true shift {np.round(t['true'], 3)} native px; fitted - true = {z} sd")
        print("fluxes against the truth (fitted +- sd, true, z):")
        for g, galaxy in enumerate(truth["galaxies"]):
            cells = []
            for band, f in galaxy["flux"].items():
                z = "" if f["z"] is None else f", z {f['z']:+.1f}"
                sd_text = "" if f["sd"] is None else f" +- {f['sd']:.3g}"
                cells.append(f"{band} {f['fitted']:.3g}{sd_text} ({f['true']:.3g}{z})")
            print(
                f'  galaxy {g} (source {galaxy["source"]}, {galaxy["separation_arcsec"]:.3f}"): '
                + "; ".join(cells)
            )
        return
    method = summary["flux_sd_method"]
    label = "no error bars" if method is None else f"+- {_SD_LABELS[method]}"
    print(f"fluxes of {summary['n_sources']} sources (data units, {label}):")
    for source in summary["sources"]:
        sds = source.get("flux_sd") or {}
        cells = [
            f"{band} {value:.3g}" + (f" +- {sds[band]:.2g}" if sds.get(band) else "")
            for band, value in source["flux"].items()
        ]
        print(f"  {source['id']:>3} ({source['ra']:.5f}, {source['dec']:.5f}): " + "; ".join(cells))


def _run_demo(args, out_dir: pathlib.Path) -> int:
    import jax

    jax.config.update("jax_enable_x64", True)

    import matplotlib
    import numpy as np

    from . import field

    # the command line writes figures to files: a non-interactive backend (the entry
    # point's choice, not the library's)
    matplotlib.use("Agg")

    print(f"{PROG} {_version()} demo (jax {jax.__version__}, {jax.default_backend()}, float64)")
    start = time.perf_counter()
    loaded = _load_field(args)
    if loaded is None:
        return 1
    hst, hsc, source, truth = loaded
    print(f"data: {source} (loaded in {time.perf_counter() - start:.2f} s)")
    for obs in (hst, hsc):
        sigma = 1.0 / np.sqrt(np.asarray(obs.weights)[:, 0, 0])
        noise = ", ".join(f"{b} {s:.3g}" for b, s in zip(obs.channels, sigma, strict=True))
        print(
            f"  {obs.name}: {obs.shape[1]} x {obs.shape[2]} px at "
            f"{obs.frame.pixel_scale.to_value('arcsec'):.4f} arcsec, "
            f"PSF {obs.psf.shape[1]} x {obs.psf.shape[2]}, noise sigma {noise}"
        )
    default = QUICK_NUTS if args.quick else None
    samples = args.samples if args.samples is not None else default or DEMO_SAMPLES
    warmup = args.warmup if args.warmup is not None else default or DEMO_WARMUP
    config = _demo_config(samples, warmup, args.max_iter)
    run = field.run_field(
        config, [hst, hsc], log=lambda line: print("  " + line), progress_bar=True
    )
    compare = _against_truth(truth) if truth is not None else None

    def extra(summary: dict) -> dict:
        added = {"data": source, "truth": truth}
        if compare is not None:
            added.update(compare(summary))
        return added

    summary = field.write_results(run, out_dir, extra=extra)
    _report(summary)
    return 0


#: Errors that bad input (arguments, files, data) raise: one line, not a traceback.
USER_ERRORS = (ValueError, TypeError, OSError)

#: Exit status after Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mobs-ppl`` command line.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; ``sys.argv[1:]`` by default.

    Returns
    -------
    int
        Exit status: 0 on success, 1 on an error from bad input (data that cannot be
        found or downloaded, an unwritable ``--out``, a bad value; one line
        ``mobs-ppl: error: ...`` on stderr, the traceback too with ``--debug``), 130
        when interrupted. ``--help``, ``--version`` and usage errors exit through
        ``SystemExit``.
    """
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return INTERRUPTED
    except USER_ERRORS as err:
        if args.debug:
            traceback.print_exc()
        print(f"{PROG}: error: {_one_line(err)}", file=sys.stderr)
        return 1


def _run(args) -> int:
    """Run the chosen command."""
    if args.command == "demo":
        return _demo(args)
    if args.command == "fit":
        return _fit(args)
    if args.command == "batch":
        return _batch(args)
    raise AssertionError(f"unhandled command {args.command!r}")  # pragma: no cover


def _one_line(err: BaseException) -> str:
    """The message of ``err`` on one line (its type's name if it has none)."""
    message = " ".join(str(err).split())
    return message or type(err).__name__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
