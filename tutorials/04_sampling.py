# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Sampling fluxes and the astrometric shift with NUTS
#
# A MAP fit gives one scene; how sure are we of its fluxes, and of the offset between
# the HST and HSC astrometry? This tutorial answers with Markov chains. On the COSMOS
# field seen by HST (F814W) and HSC (g, r, i, z, y) we fit the MAP, then let NumPyro's
# NUTS sampler explore the posterior of every source's spectrum and of the HSC shift,
# with the morphologies held at their MAP values. We check that the chains mixed
# (R-hat, effective sample sizes, rank plots, traces), compare the widths with the
# Laplace approximation, and draw the corner plot of the shift.
#
# Three things keep it to minutes: the images are cut to the box that holds the
# sources, NUTS starts from the Laplace covariance at the MAP as its metric (no long
# adaptation), and the chains run one after the other.
#
# Figures and `numbers.json` go to `$MOBS_PPL_TUTORIAL_OUT` (default:
# `tutorial_output/`). `MOBS_PPL_TUTORIAL_QUICK=1` (as the test suite runs it) takes
# fewer MAP steps and fewer draws: enough to show every step, too few for the
# diagnostics to be trusted to two decimals.

# %%
import json
import os
import pathlib
import time

import arviz as az
import astropy.units as u
import jax
import matplotlib.pyplot as plt
import numpy as np

import mobs_ppl as mp

jax.config.update("jax_enable_x64", True)
out = pathlib.Path(os.environ.get("MOBS_PPL_TUTORIAL_OUT", "tutorial_output"))
out.mkdir(parents=True, exist_ok=True)
quick = os.environ.get("MOBS_PPL_TUTORIAL_QUICK", "0") not in ("", "0")
DPI = 150

# %% [markdown]
# ## 1. Data, model frame, sources
#
# The model frame is the *intersection* of the two footprints, i.e. the HST image: every
# model pixel has high-resolution data. Sources are detected on HST.

# %%
hst_full, hsc_full = mp.datasets.load_cosmos()
frame_full = mp.Frame.from_observations([hst_full, hsc_full], coverage="intersection")
scene_full = mp.init.from_observation(hst_full, frame_full, image_type="space")
print(f"{scene_full.n_groups} galaxies in {len(scene_full.sources)} components")

# %% [markdown]
# ## 2. Cut the images to the sources
#
# Pixels far from every source constrain neither the fluxes nor the shift, but every
# gradient pays for them. We cut both images to the box holding all morphology boxes
# (plus a margin) -- plain array slicing, with the WCS sliced alongside -- and move the
# detected sources into the smaller frame through the sky.


# %%
def cutout(obs, y0, y1, x0, x1):
    """Pixels ``[y0:y1, x0:x1]`` of an observation, WCS sliced to match."""
    return mp.Observation(
        np.asarray(obs.data)[:, y0:y1, x0:x1],
        weights=np.asarray(obs.weights)[:, y0:y1, x0:x1],
        psf=np.asarray(obs.psf),
        wcs=obs.wcs[y0:y1, x0:x1],
        channels=list(obs.channels),
        name=obs.name,
    )


margin = 8  # model (= HST) pixels around the union of the boxes
_, height, width = frame_full.shape
y0 = max(min(s.origin[0] for s in scene_full.sources) - margin, 0)
x0 = max(min(s.origin[1] for s in scene_full.sources) - margin, 0)
y1 = min(max(s.origin[0] + s.box_shape[0] for s in scene_full.sources) + margin, height)
x1 = min(max(s.origin[1] + s.box_shape[1] for s in scene_full.sources) + margin, width)
hst = cutout(hst_full, y0, y1, x0, x1)  # the model frame is the HST grid
# HSC: the native pixels that cover the HST cut, and two more on each side
ymin, ymax, xmin, xmax = hst.frame.footprint(hsc_full.wcs)
_, h_hsc, w_hsc = hsc_full.shape
hsc = cutout(
    hsc_full,
    max(int(np.floor(ymin)) - 2, 0),
    min(int(np.ceil(ymax)) + 3, h_hsc),
    max(int(np.floor(xmin)) - 2, 0),
    min(int(np.ceil(xmax)) + 3, w_hsc),
)
frame = mp.Frame.from_observations([hst, hsc], coverage="intersection")


def moved(source):
    """The source placed at the same sky position in the cut frame."""
    y, x = frame.sky_to_pixel(frame_full.pixel_to_sky(*np.asarray(source.center, float)))
    return source.with_center(np.round([float(y), float(x)], 6))


scene = mp.Scene(frame, [moved(s) for s in scene_full.sources], groups=scene_full.groups)
print(f"model frame {frame_full.shape[1:]} -> {frame.shape[1:]}; HSC {hsc.shape[1:]}")

# %% [markdown]
# ## 3. Noise models, HSC fluxes, the model
#
# As in the multi-observation tutorial: HSC resampled onto the model grid with its exact
# noise model, HST with its measured pixel correlations, HSC spectra from forced
# photometry, and a shift of HSC with a Normal(0, 0.1") prior per axis.

# %%
hsc_c = mp.CorrelatedObservation.from_observation(hsc, resample_to_frame=frame)
hst_c = mp.CorrelatedObservation.from_observation(hst)
scene = mp.measure.forced_photometry(scene, hsc_c)
model = mp.SceneModel(scene, [hst_c, hsc_c], shifts={"HSC": 0.1 * u.arcsec})

fig = mp.plot.scene(
    scene, observation=hst_c, show_observed=True, show_residual=True, add_boxes=True
)
fig.savefig(out / "initial_hst.png", dpi=DPI)
plt.show()  # shown in a notebook (and on the docs pages); a no-op in a script

# %% [markdown]
# ## 4. The MAP
#
# `fit_map` optimises every site: spectra, morphology pixels and the shift. NUTS will
# sample spectra and shift with the morphologies *held* at the values found here, and
# its metric is the Laplace covariance at its start, which must be a mode of the sampled
# sites; a second, short `fit_map` over those sites alone (a few dozen parameters)
# makes sure it is, even when the first stops before full convergence.

# %%
max_iter = 25 if quick else 300
start = time.perf_counter()
fit = mp.fit_map(model, max_iter=max_iter)
print(
    f"MAP ({time.perf_counter() - start:.0f} s): {fit.iterations} steps, "
    f"decrement {fit.decrement:.3f}, converged {fit.converged}"
)
fit = mp.fit_map(model, init=fit, sites=["spectrum", "shift"])
print(f"conditional MAP: decrement {fit.decrement:.3g}, converged {fit.converged}")
print("HSC shift, native HSC px:", fit.shift_native("HSC").round(4))

# %% [markdown]
# ## 5. NUTS
#
# `mp.sample(model, init=fit, sites=[...])` conditions the model on every other site
# (`numpyro.handlers.condition`) and runs NUTS on the rest. The error bars that come out
# are therefore **conditional on the MAP morphologies**: a galaxy whose shape could
# trade light with its neighbour would have wider flux errors if its shape were free.
# Four chains, each started at the MAP, give R-hat.
#
# The faintest fluxes (galaxy 4 in g: a few sigma above zero) are sampled as logarithms,
# whose posterior has a long tail toward zero and a steep wall above: with NumPyro's
# default acceptance target of 0.8 the step size suits the bulk and some trajectories
# diverge against the wall (17 of 600 draws in a first run). A target of 0.95 takes
# smaller steps.

# %%
num_warmup, num_samples = (100, 150) if quick else (300, 1000)
start = time.perf_counter()
post = mp.sample(
    model,
    init=fit,
    sites=["spectrum", "shift"],
    num_warmup=num_warmup,
    num_samples=num_samples,
    num_chains=4,
    chain_method="sequential",  # vectorised chains wait for the slowest tree
    target_accept_prob=0.95,
    seed=0,
)
idata = post.to_arviz(log_likelihood="none")  # dims: source, channel, observation, axis
print(f"NUTS: {time.perf_counter() - start:.0f} s for 4 x ({num_warmup} + {num_samples}) draws")
print(idata.posterior["flux"].dims, idata.posterior["shift"].dims)

# %% [markdown]
# ## 6. Did the chains mix?
#
# `az.summary` gives, per parameter, the split R-hat (chains agree: below 1.01) and the
# bulk effective sample size (ESS; several hundred for a stable mean and sd). Divergent
# transitions would mean the sampler met curvature it could not follow.

# %%
summary = az.summary(idata, var_names=["shift", "flux"], round_to="none")
print(summary[["mean", "sd", "r_hat", "ess_bulk", "ess_tail"]].to_string())
divergences = int(idata.sample_stats["diverging"].sum())
steps = float(idata.sample_stats["n_steps"].mean())
print(
    f"max R-hat {summary['r_hat'].max():.4f}, min bulk ESS {summary['ess_bulk'].min():.0f}, "
    f"{divergences} divergences, {steps:.1f} leapfrog steps per draw"
)

# %% [markdown]
# Rank plots: the ranks of each chain's draws among all draws are uniform when the
# chains sample the same distribution. Traces show the same draws in order.

# %%
fig = mp.plot.rank(idata, var_names=["shift"])
fig.savefig(out / "rank_shift.png", dpi=DPI)
fig = mp.plot.rank(idata, var_names=["flux"], coords={"source": [0], "channel": ["F814W", "i"]})
fig.savefig(out / "rank_flux.png", dpi=DPI)
fig = mp.plot.trace(idata, var_names=["shift"])
fig.savefig(out / "trace_shift.png", dpi=DPI)
plt.show()  # shown in a notebook (and on the docs pages); a no-op in a script

# %% [markdown]
# ## 7. NUTS against the Laplace approximation
#
# `mp.laplace(model, fit, sites=["spectrum", "shift"])` is the normal approximation of
# the same conditional posterior: NUTS and it should agree on the widths (the likelihood
# is nearly Gaussian in these parameters). `mp.laplace(model, fit)` frees the
# morphologies too: its *marginal* error bars are the honest ones, and wider.

# %%
start = time.perf_counter()
conditional = mp.laplace(model, fit, sites=["spectrum", "shift"])
try:
    marginal = mp.laplace(model, fit)
except ValueError as error:
    # the marginal approximation needs a mode of *every* site; a MAP stopped early
    # (the quick run's 25 steps) may not be one, and laplace says so
    print("no marginal Laplace approximation here:", error)
    marginal = None
print(f"Laplace: {time.perf_counter() - start:.0f} s")
nuts_sd = idata.posterior["shift"].sel(observation="HSC").std(("chain", "draw")).values
print("HSC shift sd, model px (y, x)")
print("  NUTS, morphologies held:    ", nuts_sd.round(4))
print("  Laplace, morphologies held: ", conditional.sd("shift")[0].round(4))
if marginal is not None:
    print("  Laplace, morphologies free: ", marginal.sd("shift")[0].round(4))
nuts_flux_sd = idata.posterior["flux"].std(("chain", "draw")).values
ratio = nuts_flux_sd / conditional.sd("flux")
print(f"flux sd, NUTS / conditional Laplace: {ratio.min():.2f} to {ratio.max():.2f}")
if marginal is not None:
    widening = marginal.sd("flux") / conditional.sd("flux")
    print(f"flux sd, marginal / conditional Laplace: median {np.median(widening):.2f}")

fig = mp.plot.corner(idata, var_names=["shift"])
fig.savefig(out / "corner_shift.png", dpi=DPI)
# the shift with two fluxes of the brightest galaxy: HST's band and HSC's i
fig = mp.plot.corner(idata.sel(source=[0], channel=["F814W", "i"]), var_names=["shift", "flux"])
fig.savefig(out / "corner_shift_flux.png", dpi=DPI)
plt.show()  # shown in a notebook (and on the docs pages); a no-op in a script

# %% [markdown]
# ## 8. Keep the numbers

# %%
numbers = {
    "quick": quick,
    "num_chains": 4,
    "num_samples": num_samples,
    "map_decrement": fit.decrement,
    "divergences": divergences,
    "r_hat": {k: float(v) for k, v in summary["r_hat"].items()},
    "ess_bulk": {k: float(v) for k, v in summary["ess_bulk"].items()},
    "shift_sd_nuts": nuts_sd.tolist(),
    "shift_sd_laplace_conditional": conditional.sd("shift")[0].tolist(),
    "shift_sd_laplace_marginal": None if marginal is None else marginal.sd("shift")[0].tolist(),
    "flux_sd_nuts": nuts_flux_sd.tolist(),
    "flux_sd_laplace_conditional": conditional.sd("flux").tolist(),
}
(out / "numbers.json").write_text(json.dumps(numbers, indent=2))
