"""The standard joint fit of a sharp and a coarse observation, start to finish.

This is the user flow of the package in one function (what ``mobs-ppl demo`` runs):
model frame, resampling of the coarse observation with its exact noise model, measured
noise correlations of the sharp one, joint detection and initialisation (sharp image
first, then sources only the coarse image sees), forced photometry, MAP to the mode
with a fitted astrometric shift, its marginal error bars (Laplace, every morphology
pixel free), optionally NUTS on spectra and shift (conditional on the MAP
morphologies), ArviZ summary, plots and files.
"""

from __future__ import annotations

import time

import astropy.units as u
import numpy as np

__all__ = ["joint_fit"]


def joint_fit(
    sharp,
    coarse,
    out_dir=None,
    shift_scale=0.1 * u.arcsec,
    max_iter: int | None = None,
    num_warmup: int = 200,
    num_samples: int = 200,
    num_chains: int = 2,
    seed: int = 0,
    log=print,
    overwrite: bool = False,
) -> dict:
    """Fit a scene jointly to a sharp reference observation and a coarse shifted one.

    Parameters
    ----------
    sharp, coarse : Observation
        The astrometric reference (e.g. HST) and the observation whose shift is fitted
        (e.g. HSC).
    out_dir : path-like, optional
        The results folder: ``scene.npz``, ``fit.npz``, ``posterior.nc``, PNG plots and
        the ``run.json`` marker (package version, time, run id). It is written as a
        whole (:func:`mobs_ppl.atomic.staged_folder`): into a temporary sibling that
        replaces ``out_dir`` at the end, so an interrupted run leaves the old folder as
        it was. An existing ``out_dir`` must be empty or an earlier results folder.
    shift_scale : Quantity
        Prior standard deviation of the shift.
    max_iter : int, optional
        Largest number of MAP iterations (default: :func:`~mobs_ppl.fit_map`'s).
    num_warmup, num_samples, num_chains : int
        NUTS settings; ``num_samples=0`` skips sampling.
    seed : int
        Seed of SVI and NUTS.
    log : callable
        Receives progress lines.
    overwrite : bool
        Allow replacing an ``out_dir`` with other content (which is deleted).

    Returns
    -------
    dict
        Summary: numbers of sources, shift in model / native pixels and arcsec with its
        marginal sd (Laplace, all sites free), chi2 per dof per band in the native
        images, timings, and (with sampling) NUTS means and sds of the shift with R-hat
        and ESS -- conditional on the MAP morphologies, and labelled so.

    Raises
    ------
    FileExistsError
        Before any work, if ``out_dir`` holds other content and ``overwrite`` is false.
    """
    from . import atomic, init, measure, plot
    from .correlated import CorrelatedObservation
    from .frame import Frame
    from .inference import fit_map, sample
    from .laplace_approximation import laplace
    from .model import SceneModel

    if out_dir is not None:
        atomic.check_replaceable(out_dir, overwrite)  # refuse before minutes of work
    timings = {}
    start = time.perf_counter()
    frame = Frame.from_observations([sharp, coarse], coverage="union")
    coarse_c = CorrelatedObservation.from_observation(coarse, resample_to_frame=frame)
    sharp_c = CorrelatedObservation.from_observation(sharp)
    timings["prepare_s"] = time.perf_counter() - start
    log(
        f"frame {frame.shape}; {coarse.name} resampled to {coarse_c.shape}; "
        f"{sharp.name} noise correlation xi(0,1)/xi(0,0) = "
        f"{float(sharp_c.correlation[0, 4, 5] / sharp_c.correlation[0, 4, 4]):.3f}"
    )

    start = time.perf_counter()
    scene = init.from_observations([sharp, coarse], frame, image_types=["space", "ground"])
    timings["init_s"] = time.perf_counter() - start
    log(
        f"{scene.n_groups} sources ({len(scene.sources)} components) detected jointly in "
        f"{sharp.name} and {coarse.name} ({timings['init_s']:.1f} s)"
    )

    model = SceneModel(scene, [sharp_c, coarse_c], shifts={coarse.name: shift_scale})
    start = time.perf_counter()
    fit = fit_map(model, max_iter=max_iter, seed=seed)
    timings["fit_map_s"] = time.perf_counter() - start
    log(
        f"MAP in {timings['fit_map_s']:.1f} s ({fit.iterations} steps, Newton decrement "
        f"{fit.decrement:.3g}, converged: {fit.converged})"
    )
    index = model.shift_names.index(coarse.name)
    native = fit.shift_native(coarse.name)
    native_sd = np.full(2, np.nan)
    if fit.converged:
        start = time.perf_counter()
        approx = laplace(model, fit)
        timings["laplace_s"] = time.perf_counter() - start
        native_sd = approx.sd("shift_native")[index]
        log(
            f"shift of {coarse.name}: {np.round(native, 3)} +- {np.round(native_sd, 3)} native "
            f"px (marginal sd, every morphology pixel free; Laplace in "
            f"{timings['laplace_s']:.1f} s), {np.round(fit.shift_arcsec(coarse.name), 4)} arcsec"
        )
    else:
        log(
            f"shift of {coarse.name}: {np.round(native, 3)} native px; no error bar: the MAP "
            "is not at the mode (raise max_iter)"
        )
    gof = {
        **measure.goodness_of_fit(fit.scene, sharp_c),
        **measure.goodness_of_fit(fit.scene, coarse, shift=native),
    }
    log("chi2 per dof (native pixels): " + ", ".join(f"{k} {v:.2f}" for k, v in gof.items()))
    summary = {
        "sources": len(scene.sources),
        "frame_shape": list(frame.shape),
        "shift_model_px": fit.shift(coarse.name).tolist(),
        "shift_native_px": np.asarray(native).tolist(),
        "shift_native_sd_px": np.asarray(native_sd).tolist(),
        "shift_error": "marginal (Laplace, all sites free); NaN: MAP not at the mode",
        "shift_arcsec": fit.shift_arcsec(coarse.name).tolist(),
        "chi2_per_dof": gof,
        "map_converged": bool(fit.converged),
        "map_decrement": float(fit.decrement),
        "map_iterations": int(fit.iterations),
    }
    idata = None
    if num_samples > 0:
        import arviz as az

        start = time.perf_counter()
        post = sample(
            model,
            init=fit,
            sites=["spectrum", "shift"],
            num_warmup=num_warmup,
            num_samples=num_samples,
            num_chains=num_chains,
            seed=seed,
            dense_mass=True,
        )
        idata = post.to_arviz(log_likelihood="total")
        timings["nuts_s"] = time.perf_counter() - start
        table = az.summary(idata, var_names=["shift_native"])
        log(
            f"NUTS in {timings['nuts_s']:.1f} s, spectra and shift sampled, conditional on "
            f"the MAP morphologies (narrower than the marginal error above)\n{table}"
        )
        summary["shift_native_nuts_conditional"] = {
            "mean": table["mean"].tolist(),
            "sd": table["sd"].tolist(),
            "r_hat": table["r_hat"].tolist(),
            "ess_bulk": table["ess_bulk"].tolist(),
        }
        summary["divergences"] = int(np.asarray(idata.sample_stats["diverging"]).sum())
    summary["timings"] = timings
    if out_dir is not None:
        with atomic.staged_folder(out_dir, overwrite) as staged:
            _write(staged.path, fit, idata, coarse, coarse_c, sharp_c, native, plot)
        log(f"wrote results to {staged.target}")
    return summary


def _write(out_dir, fit, idata, coarse, coarse_c, sharp_c, native, plot):
    # the backend is the caller's choice (the CLI picks Agg); figures are closed here
    import matplotlib.pyplot as plt

    from . import persistence
    from .atomic import save_figure

    persistence.save_scene(out_dir / "scene.npz", fit.scene)
    persistence.save_fit(out_dir / "fit.npz", fit)
    if idata is not None:
        persistence.save_posterior(out_dir / "posterior.nc", idata)
        fig = plot.corner(idata, var_names=["shift_native"])
        save_figure(fig, out_dir / "corner_shift.png", dpi=150)
        plt.close(fig)
    for name, obs, shift in (
        ("sharp", sharp_c, None),
        ("coarse_native", coarse, native),
    ):
        fig = plot.scene(
            fit.scene,
            observation=obs,
            shift=shift,
            show_rendered=True,
            show_observed=True,
            show_residual=True,
            add_labels=True,
            add_boxes=True,
        )
        save_figure(fig, out_dir / f"scene_{name}.png", dpi=150)
        plt.close(fig)
