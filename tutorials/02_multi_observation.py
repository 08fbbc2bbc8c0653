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
# # One scene, two telescopes: HST and HSC fitted jointly
#
# This tutorial fits a few blended galaxies in the COSMOS field as seen by the Hubble
# Space Telescope (ACS F814W: one band, 0.03" pixels, a PSF of ~0.1") and by Hyper
# Suprime-Cam on Subaru (g, r, i, z, y: 0.168" pixels, a PSF of ~0.7"). The sharp image
# tells us *where* the light is; the five HSC bands tell us its *colour*. One scene of
# non-parametric sources explains both, and the astrometric offset between the two
# instruments is a parameter of the model, with HST as the reference.
#
# Steps: observations -> model frame -> noise models -> sources -> NumPyro model ->
# MAP -> posterior (Laplace, then NUTS) -> ArviZ -> back to the native HSC pixels.
#
# It runs in about twenty minutes on two CPU cores. Figures go to
# `$MOBS_PPL_TUTORIAL_OUT` (default: `tutorial_output/`). With `MOBS_PPL_TUTORIAL_QUICK=1`
# (as the test suite runs it) NUTS draws fewer samples; everything else is the same.

# %%
import os
import pathlib

import arviz as az
import astropy.units as u
import jax
import matplotlib.pyplot as plt

import mobs_ppl as mp

jax.config.update("jax_enable_x64", True)  # the package works in float32 too
out = pathlib.Path(os.environ.get("MOBS_PPL_TUTORIAL_OUT", "tutorial_output"))
out.mkdir(parents=True, exist_ok=True)
quick = os.environ.get("MOBS_PPL_TUTORIAL_QUICK", "0") not in ("", "0")

# %% [markdown]
# ## 1. The observations
#
# `load_cosmos` returns two `mp.Observation`s: data `(channel, y, x)`, inverse-variance
# weights, a PSF image per channel, an astropy WCS and band names. With your own FITS
# files you would build them the same way:
# `mp.Observation(data, weights=w, psf=psf, wcs=wcs, channels=["F814W"], name="HST")`.
# Data may be in any units: nothing needs rescaling by hand.

# %%
hst, hsc = mp.datasets.load_cosmos()
for obs in (hst, hsc):
    print(obs.name, obs.shape, obs.channels, f"{obs.frame.pixel_scale.to(u.arcsec):.3f} / px")

fig = mp.plot.observation(hst, norm=mp.plot.AsinhAutomaticNorm(hst), show_psf=True)
fig.savefig(out / "hst.png")
fig = mp.plot.observation(hsc, norm=mp.plot.AsinhAutomaticNorm(hsc), show_psf=True)
fig.savefig(out / "hsc.png")
plt.show()  # shown in a notebook (and on the docs pages); a no-op in a script

# %% [markdown]
# ## 2. One model frame for both
#
# The model lives on the finest pixel grid (HST's), covers the union of the two
# images, and carries all six channels: F814W, g, r, i, z, y.

# %%
frame = mp.Frame.from_observations([hst, hsc], coverage="union")
print(frame.shape, frame.channels)

# %% [markdown]
# ## 3. Noise models
#
# HSC is resampled once onto the model grid. Its pixels are then correlated, and
# `CorrelatedObservation` keeps the exact likelihood of the native data, so error bars
# are neither too tight nor too wide. The HST coadd was drizzled: its pixel
# correlations are measured from the data.

# %%
hsc_c = mp.CorrelatedObservation.from_observation(hsc, resample_to_frame=frame)
hst_c = mp.CorrelatedObservation.from_observation(hst)

# %% [markdown]
# ## 4. Sources
#
# Detection with a starlet (wavelet) transform: on HST first, whose resolution separates
# the blends, then on HSC for whatever HST does not see -- here a galaxy on the bottom
# edge of the HSC image, outside the HST field. Each source gets a centre, a
# morphology box cut from the data and a spectrum from forced photometry (all sources
# of an observation solved together with its noise model).

# %%
scene = mp.init.from_observations([hst, hsc], frame, image_types=["space", "ground"])
scene = mp.measure.forced_photometry(scene, hsc_c)  # HSC bands, with the resampled noise
# resolved bright galaxies get a compact core of their own colour beside the envelope:
# the components of one galaxy form a group (one "source" in fluxes and ArviZ)
print(f"{scene.n_groups} galaxies in {len(scene.sources)} components")

fig = mp.plot.scene(
    scene,
    observation=hst_c,
    show_rendered=True,
    show_observed=True,
    show_residual=True,
    add_boxes=True,
)
fig.savefig(out / "initial_hst.png")
plt.show()  # shown in a notebook (and on the docs pages); a no-op in a script

# %% [markdown]
# ## 5. The NumPyro model and its MAP
#
# `SceneModel` is a plain NumPyro program: positive spectra, morphologies in [0, 1],
# a shift of HSC (a Normal prior of 0.1" per axis) and the likelihood of each
# observation. `fit_map` runs damped Gauss-Newton (Levenberg-Marquardt) with
# matrix-free solves until the Newton decrement -- the distance to the mode in posterior
# standard deviations -- is below 0.1 (`fit.converged`, `fit.decrement`), or until
# `max_iter` steps (500 by default). On this field it does not get there quickly: the
# galaxy on the HSC edge, half outside the image, trades its flux against its position
# along a curved valley, which holds almost all of the decrement (about 0.8 after 120
# steps, with the objective changing by 1e-3 per step). To keep the tutorial to minutes
# we stop at 150 steps: `fit_map` then warns, `fit.converged` is False, and the error
# bars below are those of a point about 0.8 posterior sd from the mode.

# %%
model = mp.SceneModel(scene, [hst_c, hsc_c], shifts={"HSC": 0.1 * u.arcsec})
fit = mp.fit_map(model, max_iter=150)
print(f"MAP: {fit.iterations} steps, decrement {fit.decrement:.3f}, converged {fit.converged}")
print("shift of HSC, model pixels:", fit.shift("HSC").round(3))
print("              native HSC px:", fit.shift_native("HSC").round(3))
print("              arcsec:       ", fit.shift_arcsec("HSC").round(4))

# %% [markdown]
# ## 6. Error bars
#
# `mp.laplace(model, fit)` is the normal approximation at the MAP over *every* site,
# morphology pixels included: its error bars of the shift and the fluxes are marginal
# (tens of thousands of parameters here, so it solves with Hessian-vector products and
# conjugate gradients instead of forming the Hessian). Holding the morphologies fixed
# (`sites=["spectrum", "shift"]`) gives *conditional* error bars, narrower (here by
# about 2.5x for the shift): `approx.conditional` says which is which. `mp.sample` runs
# NUTS; to keep this tutorial to minutes it samples only the shift here, with spectra
# and morphologies held at the MAP, so its widths are conditional ones too.

# %%
approx = mp.laplace(model, fit)
print("marginal sd of the native shift:", approx.sd("shift_native")[0].round(4))
conditional = mp.laplace(model, fit, sites=["spectrum", "shift"])
print(
    "conditional sd (morphologies held):",
    conditional.sd("shift_native")[0].round(4),
    conditional.conditional,
)

num_warmup, num_samples = (50, 50) if quick else (200, 300)
post = mp.sample(
    model,
    init=fit,
    sites=["shift"],
    num_warmup=num_warmup,
    num_samples=num_samples,
    num_chains=2,
    seed=0,
)
idata = post.to_arviz()  # dims: observation, axis, source, channel
print(az.summary(idata, var_names=["shift_native"], round_to="none"))
fig = mp.plot.corner(idata, var_names=["shift_native"])
fig.savefig(out / "corner_shift.png")
plt.show()  # shown in a notebook (and on the docs pages); a no-op in a script

# %% [markdown]
# ## 7. Back to the native HSC pixels
#
# The fitted shift belongs to the resampled HSC image; `fit.shift_native` carries it
# into the original pixels, where the model is rendered and compared with the data
# users trust: chi-square per degree of freedom per band.

# %%
native = fit.shift_native("HSC")
chi2 = mp.measure.goodness_of_fit(fit.scene, hsc, shift=native)
print("chi2 / dof in native HSC pixels:", {band: round(v, 2) for band, v in chi2.items()})
fig = mp.plot.scene(
    fit.scene,
    observation=hsc,
    shift=native,
    norm=mp.plot.AsinhAutomaticNorm(hsc),
    show_rendered=True,
    show_observed=True,
    show_residual=True,
    add_labels=True,
    add_boxes=True,
)
fig.savefig(out / "fit_hsc_native.png")
plt.show()  # shown in a notebook (and on the docs pages); a no-op in a script

# %% [markdown]
# ## 8. Keep the numbers
#
# The fit itself goes to disk with `mp.save_fit` (reload it with `mp.load_fit` and the
# same model); the headline numbers, with the marginal error bar first, to a JSON file.

# %%
import json  # noqa: E402

mp.save_fit(out / "fit.npz", fit)
numbers = {
    "converged": fit.converged,
    "decrement": fit.decrement,
    "iterations": fit.iterations,
    "shift_native_px": native.tolist(),
    "shift_native_sd_px": approx.sd("shift_native")[0].tolist(),
    "shift_native_sd_px_conditional": conditional.sd("shift_native")[0].tolist(),
    "laplace_decrement": approx.decrement,
    "laplace_decrement_conditional": conditional.decrement,
    "chi2_per_dof": {**chi2, **mp.measure.goodness_of_fit(fit.scene, hst_c)},
}
(out / "numbers.json").write_text(json.dumps(numbers, indent=2))
print(json.dumps(numbers, indent=2))

# %% [markdown]
# ## Where to go next
#
# - `docs/inference.md`: the site table, `fit_map(sites=...)`, Laplace and NUTS options.
# - `docs/noise_model.md`: why the resampled likelihood is exact.
# - `docs/sharp_bits.md`: what the shift can and cannot absorb (colour gradients).
