"""Command-line interface: ``mobs-ppl``.

``mobs-ppl demo --out DIR`` runs the packaged demonstration on the COSMOS HST + HSC
field: the forward model alone (load, model frame, match, render, timings), then the
joint fit of :func:`mobs_ppl.workflow.joint_fit` (detection on HST, forced photometry
on HSC, MAP with the HSC shift, NUTS on spectra and shift), writing results and plots.

``mobs-ppl fit FIELD.toml --out DIR`` fits the observations a TOML file describes
(:mod:`mobs_ppl.field`; schema in ``docs/cli.md``).

``mobs-ppl batch MANIFEST --out DIR`` fits many such fields on a Dask cluster
(:mod:`mobs_ppl.batch`).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
import traceback
from collections.abc import Sequence

__all__ = ["main"]

PROG = "mobs-ppl"


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
    # also after the command; SUPPRESS keeps a top-level --debug when it is not repeated
    command.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )


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
        help="run the demonstration on the COSMOS HST + HSC field",
        description=(
            "Load the COSMOS HST (F814W) and HSC (g, r, i, z, y) images (or, without data "
            "or network, a simulated field with a known shift), build the model frame, "
            "bind both observations to it, render a simple model cube into each and "
            "report timings and chi-squared per band; then fit them jointly. Writes "
            "OUT/summary.json, the fit and plots."
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
    demo.add_argument("--no-fit", action="store_true", help="stop after the rendering stage")
    demo.add_argument(
        "--max-iter",
        type=_count(1),
        default=None,
        help="largest number of MAP iterations (default: fit_map's, which stops at the mode)",
    )
    demo.add_argument(
        "--samples",
        type=_count(0),
        default=0,
        help="NUTS draws per chain after the MAP (default 0: skip; e.g. 200 for a posterior)",
    )
    demo.add_argument(
        "--warmup", type=_count(0), default=150, help="NUTS warm-up steps (default 150)"
    )
    demo.add_argument(
        "--repeat",
        type=int,
        default=10,
        help="renders timed for the steady-state figure (median; default 10)",
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
    fit_field(config, args.out, overwrite=args.overwrite, log=lambda line: print("  " + line))
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
        "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )


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


def _block(x):
    import jax

    return jax.block_until_ready(x)


def _time_render(observation, cube, repeat: int) -> tuple[float, float]:
    """First (compiling) and median steady-state time of a jitted render, in seconds."""
    import equinox as eqx
    import numpy as np

    render = eqx.filter_jit(lambda obs, model: obs.render(model))
    start = time.perf_counter()
    _block(render(observation, cube))
    first = time.perf_counter() - start
    times = []
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        _block(render(observation, cube))
        times.append(time.perf_counter() - start)
    return first, float(np.median(times))


def _demo_cube(frame, hst, hsc):
    """Model cube: HST data placed into the frame, scaled per HSC band to that band's sum.

    The HST image is put on the model grid at the integer offset given by the WCS (the
    model frame uses HST's pixels), zero elsewhere. Each HSC channel holds the same
    image scaled so that its sum equals the sum of that HSC band's data; since rendering
    conserves flux, the rendered HSC images then carry the observed total flux.
    """
    import numpy as np

    from . import sky

    y0, x0 = sky.pixel_to_pixel(hst.wcs, frame.wcs, np.array([0.0]), np.array([0.0]))
    oy, ox = int(np.round(y0[0])), int(np.round(x0[0]))
    _, h, w = hst.shape
    image = np.zeros(frame.shape[1:])
    image[oy : oy + h, ox : ox + w] = np.asarray(hst.data[0])
    cube = np.zeros(frame.shape)
    total = image.sum()
    scales = {}
    for c, band in enumerate(frame.channels):
        if band in hst.channels:
            scale = 1.0
        else:
            scale = float(np.sum(np.asarray(hsc.data[hsc.channels.index(band)]))) / total
        cube[c] = scale * image
        scales[band] = scale
    return cube, (oy, ox), scales


def _chi2_per_dof(observation, cube) -> dict[str, dict[str, float]]:
    """Chi-squared per counted pixel, per band (nothing fitted: dof = counted pixels).

    The observation's own :meth:`~mobs_ppl.Observation.chi2_per_channel`.
    """
    import numpy as np

    chi2, counts = (np.asarray(a) for a in observation.chi2_per_channel(cube))
    out = {}
    for c, band in enumerate(observation.channels):
        out[band] = {
            "chi2": float(chi2[c]),
            "dof": int(counts[c]),
            "chi2_per_dof": float(chi2[c]) / int(counts[c]),
        }
    return out


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
    if args.field != "simulated":
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
    field = simulated_field(args.seed)
    truth = {
        "shift_native_px": field.true_shift_native.tolist(),
        "positions_deg": [[c.ra.deg, c.dec.deg] for c in field.positions],
        "fluxes": field.fluxes.tolist(),
    }
    return field.hst, field.hsc, f"simulated field (seed {args.seed})", truth


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


def _run_demo(args, out_dir: pathlib.Path) -> int:
    import jax

    jax.config.update("jax_enable_x64", True)

    import numpy as np

    from .atomic import write_text
    from .frame import Frame
    from .psf import psf_sigma

    t_start = time.perf_counter()
    print(f"{PROG} {_version()} demo (jax {jax.__version__}, {jax.default_backend()}, float64)")

    start = time.perf_counter()
    loaded = _load_field(args)
    if loaded is None:
        return 1
    hst, hsc, source, truth = loaded
    t_load = time.perf_counter() - start
    print(f"data: {source} (loaded in {t_load:.2f} s)")
    for obs in (hst, hsc):
        sigma = 1.0 / np.sqrt(np.asarray(obs.weights)[:, 0, 0])
        noise = ", ".join(f"{b} {s:.3g}" for b, s in zip(obs.channels, sigma, strict=True))
        print(
            f"  {obs.name}: {obs.shape[1]} x {obs.shape[2]} px at "
            f"{obs.frame.pixel_scale.to_value('arcsec'):.4f} arcsec, "
            f"PSF {obs.psf.shape[1]} x {obs.psf.shape[2]}, noise sigma {noise}"
        )

    start = time.perf_counter()
    frame = Frame.from_observations([hst, hsc], coverage="union")
    t_frame = time.perf_counter() - start
    scale = frame.pixel_scale.to_value("arcsec")
    model_sigma = psf_sigma(np.asarray(frame.psf[0]))
    print(
        f"model frame: shape {frame.shape} (channel, y, x), pixel scale {scale:.4f} arcsec, "
        f"channels {' '.join(frame.channels)} (built in {t_frame:.2f} s)"
    )
    print(
        f"model PSF: Gaussian, sigma {model_sigma:.3f} model px = {model_sigma * scale:.4f} "
        f"arcsec (second moments of the pixel-integrated image)"
    )

    matched, timings = {}, {}
    for obs in (hst, hsc):
        start = time.perf_counter()
        matched[obs.name] = _block(obs.match(frame))
        timings[obs.name] = {"match_s": time.perf_counter() - start}

    cube, offset, scales = _demo_cube(frame, hst, hsc)
    print(
        f"model cube: F814W = HST data placed at frame pixel (y, x) = {offset} (zero "
        "elsewhere); g..y = the same image scaled so its sum equals each HSC band's sum "
        f"(scales {', '.join(f'{b} {s:.4g}' for b, s in scales.items() if b in hsc.channels)})"
    )
    cube = jax.numpy.asarray(cube)

    summary_obs = {}
    chi2 = {}
    print("observation  mode       grid (padded)        match     first render  steady render")
    for name, obs in matched.items():
        first, steady = _time_render(obs, cube, args.repeat)
        timings[name].update(first_render_s=first, steady_render_s=steady)
        r = obs.renderer
        grid = f"{r.grid_shape[0]}x{r.grid_shape[1]} ({r.padded_shape[0]}x{r.padded_shape[1]})"
        print(
            f"{name:<12} {r.mode:<10} {grid:<20} {timings[name]['match_s']:6.3f} s  "
            f"{first:8.3f} s    {steady * 1e3:9.3f} ms"
        )
        chi2.update(_chi2_per_dof(obs, cube))
        summary_obs[name] = {
            "shape": list(obs.shape),
            "channels": list(obs.channels),
            "pixel_scale_arcsec": obs.frame.pixel_scale.to_value("arcsec"),
            "noise_sigma": [float(s) for s in 1.0 / np.sqrt(np.asarray(obs.weights)[:, 0, 0])],
            "render_mode": r.mode,
            "grid_shape": list(r.grid_shape),
            "padded_shape": list(r.padded_shape),
            **timings[name],
        }
    print(f"steady render: median of {max(1, args.repeat)} calls of the jitted render")
    print("chi2 per degree of freedom (dof = used pixels; nothing fitted):")
    print("  " + ", ".join(f"{band} {v['chi2_per_dof']:.3g}" for band, v in chi2.items()))

    summary = {
        "version": _version(),
        "jax": {"version": jax.__version__, "backend": jax.default_backend(), "x64": True},
        "data": source,
        "truth": truth,
        "frame": {
            "shape": list(frame.shape),
            "pixel_scale_arcsec": scale,
            "channels": list(frame.channels),
            "model_psf_sigma_px": model_sigma,
        },
        "model_cube": {
            "description": "HST data placed into the frame; HSC channels scaled to band sums",
            "hst_offset_yx": list(offset),
            "scales": scales,
        },
        "observations": summary_obs,
        "chi2": chi2,
        "total_s": time.perf_counter() - t_start,
    }
    if not args.no_fit:
        import matplotlib

        from .workflow import joint_fit

        # the command line writes figures to files: a non-interactive backend (the
        # entry point's choice, not the library's)
        matplotlib.use("Agg")

        print("joint fit (HST reference, HSC shifted):")
        summary["fit"] = joint_fit(
            hst,
            hsc,
            out_dir=out_dir,
            max_iter=args.max_iter,
            num_warmup=args.warmup,
            num_samples=args.samples,
            log=lambda line: print("  " + line.replace("\n", "\n  ")),
        )
        if truth is not None:
            fitted = np.asarray(summary["fit"]["shift_native_px"])
            sd = np.asarray(summary["fit"]["shift_native_sd_px"])
            true = np.asarray(truth["shift_native_px"])
            summary["fit"]["shift_z"] = ((fitted - true) / sd).tolist()
            print(
                f"  true shift of HSC {np.round(true, 3)} native px; fitted - true = "
                f"{np.round(fitted - true, 3)} = {np.round((fitted - true) / sd, 2)} marginal sd"
            )
        summary["total_s"] = time.perf_counter() - t_start
    write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
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
