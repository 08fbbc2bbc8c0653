"""The standard joint fit of a sharp and a coarse observation, start to finish.

This is the user flow of the package in one function (what ``mobs-ppl demo`` runs):
model frame, resampling of the coarse observation with its exact noise model, measured
noise correlations of the sharp one, detection and initialisation on the sharp image,
forced photometry in the coarse bands, MAP with a fitted astrometric shift, NUTS on
spectra and shift, ArviZ summary, plots and files.
"""

from __future__ import annotations

import pathlib
import time

import astropy.units as u
import numpy as np

__all__ = ["joint_fit"]


def joint_fit(
    sharp,
    coarse,
    out_dir=None,
    shift_scale=0.1 * u.arcsec,
    max_iter: int = 500,
    num_warmup: int = 200,
    num_samples: int = 200,
    num_chains: int = 2,
    seed: int = 0,
    log=print,
) -> dict:
    """Fit a scene jointly to a sharp reference observation and a coarse shifted one.

    Parameters
    ----------
    sharp, coarse : Observation
        The astrometric reference (e.g. HST) and the observation whose shift is fitted
        (e.g. HSC).
    out_dir : path-like, optional
        Where to write ``scene.npz``, ``fit.npz``, ``posterior.nc`` and PNG plots.
    shift_scale : Quantity
        Prior standard deviation of the shift.
    max_iter : int
        MAP iterations.
    num_warmup, num_samples, num_chains : int
        NUTS settings; ``num_samples=0`` skips sampling.
    seed : int
        Seed of SVI and NUTS.
    log : callable
        Receives progress lines.

    Returns
    -------
    dict
        Summary: numbers of sources, shift in model / native pixels and arcsec, chi2 per
        dof per band in the native images, timings, and (with sampling) posterior
        means and sds of the shift with R-hat and ESS.
    """
    from . import init, measure, plot
    from .correlated import CorrelatedObservation
    from .frame import Frame, relative_jacobian
    from .inference import fit_map, sample
    from .model import SceneModel

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
    scene = init.from_observation(sharp, frame, image_type="space")
    scene = measure.forced_photometry(scene, coarse_c)
    timings["init_s"] = time.perf_counter() - start
    log(f"{len(scene.sources)} sources initialised on {sharp.name} ({timings['init_s']:.1f} s)")

    model = SceneModel(scene, [sharp_c, coarse_c], shifts={coarse.name: shift_scale})
    start = time.perf_counter()
    fit = fit_map(model, max_iter=max_iter, seed=seed)
    timings["fit_map_s"] = time.perf_counter() - start
    native = relative_jacobian(coarse_c.frame, coarse.frame) @ fit.shift(coarse.name)
    log(
        f"MAP in {timings['fit_map_s']:.1f} s ({len(fit.losses)} steps, converged: "
        f"{fit.converged}); shift of {coarse.name}: "
        f"{np.round(fit.shift(coarse.name), 3)} model px, "
        f"{np.round(native, 3)} native px, {np.round(fit.shift_arcsec(coarse.name), 4)} arcsec"
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
        "shift_arcsec": fit.shift_arcsec(coarse.name).tolist(),
        "chi2_per_dof": gof,
        "map_converged": bool(fit.converged),
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
        log(f"NUTS in {timings['nuts_s']:.1f} s\n{table}")
        summary["shift_native_posterior"] = {
            "mean": table["mean"].tolist(),
            "sd": table["sd"].tolist(),
            "r_hat": table["r_hat"].tolist(),
            "ess_bulk": table["ess_bulk"].tolist(),
        }
        summary["divergences"] = int(np.asarray(idata.sample_stats["diverging"]).sum())
    summary["timings"] = timings
    if out_dir is not None:
        _write(pathlib.Path(out_dir), fit, idata, coarse, coarse_c, sharp_c, native, plot, log)
    return summary


def _write(out_dir, fit, idata, coarse, coarse_c, sharp_c, native, plot, log):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import persistence

    out_dir.mkdir(parents=True, exist_ok=True)
    persistence.save_scene(out_dir / "scene.npz", fit.scene)
    persistence.save_fit(out_dir / "fit.npz", fit)
    if idata is not None:
        persistence.save_posterior(out_dir / "posterior.nc", idata)
        fig = plot.corner(idata, var_names=["shift_native"])
        fig.savefig(out_dir / "corner_shift.png", dpi=80)
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
        fig.savefig(out_dir / f"scene_{name}.png", dpi=80)
        plt.close(fig)
    log(f"wrote results to {out_dir}")
