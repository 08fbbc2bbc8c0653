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
# # Quickstart: one HSC blend, from catalogue to fluxes with error bars
#
# Seven galaxies overlap in a small Hyper Suprime-Cam cut-out of the COSMOS field,
# seen in five bands (g, r, i, z, y; 0.168" pixels; a seeing of ~0.6"). We know
# roughly where they are -- a catalogue of seven pixel positions comes with the data --
# but not how their light is shared out between them. This tutorial separates them:
# one non-parametric source per catalogue entry (a free morphology image and a
# spectrum), fitted to the five bands at once, then checked against the data and
# given error bars.
#
# Steps: observation -> model frame -> sources from the catalogue -> NumPyro model ->
# MAP fit -> residuals and chi-square -> fluxes with Laplace error bars.
#
# Figures go to `$MOBS_PPL_TUTORIAL_OUT` (default: `tutorial_output/`), with a
# `numbers.json` of the headline results. The data are found through
# `$MOBS_PPL_DATA_DIR` (a folder holding `hsc_blends/hsc_cosmos_35.npz`).
# `MOBS_PPL_TUTORIAL_QUICK=1` (as the test suite runs it) caps the MAP fit at 300
# Newton steps instead of 1000.

# %%
import json
import os
import pathlib

import astropy.units as u
import jax
import matplotlib.pyplot as plt
import numpy as np

import mobs_ppl as mp

jax.config.update("jax_enable_x64", True)  # the package works in float32 too
out = pathlib.Path(os.environ.get("MOBS_PPL_TUTORIAL_OUT", "tutorial_output"))
out.mkdir(parents=True, exist_ok=True)
quick = os.environ.get("MOBS_PPL_TUTORIAL_QUICK", "0") not in ("", "0")

# %% [markdown]
# ## 1. The observation
#
# `load_hsc_blend` returns an `mp.Observation` -- data `(channel, y, x)`, inverse-variance
# weights from the variance maps, one PSF image per band, a WCS and band names -- and
# the catalogue as an astropy `SkyCoord`. Pixels that the HSC pipeline flagged as
# unusable (here: cosmic-ray tracks it interpolated over) get zero weight. The file
# carries no WCS, so the loader attaches a local one at the HSC pixel scale: sky
# positions are right relative to each other, which is all a fit needs.
#
# With your own data: `mp.Observation(data, weights=1 / variance, psf=psf, wcs=wcs,
# channels=list("grizy"), name="HSC", mask=bad_pixels)`.

# %%
hsc, catalog = mp.datasets.load_hsc_blend()
print(hsc.name, hsc.shape, hsc.channels, f"{hsc.frame.pixel_scale.to(u.arcsec):.3f} / px")
masked = (np.asarray(hsc.weights) == 0).mean(axis=(1, 2))
print("masked fraction per band:", dict(zip(hsc.channels, masked.round(3).tolist(), strict=True)))

norm = mp.plot.AsinhAutomaticNorm(hsc)  # one asinh stretch per band, from its noise
fig = mp.plot.observation(hsc, norm=norm, add_peaks=catalog, show_psf=True)
fig.savefig(out / "observation.png", dpi=150)
plt.show()  # shown in a notebook (and on the docs pages); a no-op in a script

# %% [markdown]
# ## 2. The model frame
#
# The scene is modelled on a frame: a pixel grid with bands and a *model PSF*. From one
# observation it is that observation's grid, with a narrow Gaussian PSF; the fit
# renders the model into the data by convolving with the difference kernel between the
# two PSFs.

# %%
frame = mp.Frame.from_observations([hsc])
print(frame.shape, frame.channels)

# %% [markdown]
# ## 3. Sources from the catalogue
#
# `from_observation` makes one source per catalogue entry: a centre, a morphology box
# cut from the detection footprint nearest to it (or a compact start where nothing was
# detected), and a spectrum from forced photometry -- all seven sources solved together
# as a linear problem under the noise model. The catalogue may be any `SkyCoord`;
# pixel positions convert with `hsc.frame.pixel_to_sky(y, x)`. `cores="none"` keeps
# one component per galaxy (the default, `"auto"`, gives bright resolved galaxies a
# compact core of their own colour: better for colour gradients, slower to fit).

# %%
scene = mp.init.from_observation(hsc, frame, catalog=catalog, image_type="ground", cores="none")
print(f"{len(scene.sources)} sources")

# %% [markdown]
# Source 0 is a star: compact, white, and its profile is the PSF's (the PSF image,
# shifted and scaled, fits it with a best size factor of 0.994-1.001 in the five
# bands). A free morphology would have to shrink to about one model pixel to match it,
# which the fit does only very slowly: with source 0 left free, chi2/dof in r is
# still 6.8 after 80 steps, with a dark ring round the star. So we model it as what it
# is, an `mp.PointSource` (the model PSF at a sub-pixel centre), starting from the
# spectrum the forced photometry gave it.

# %%
star_y, star_x = frame.sky_to_pixel(catalog[0])
sources = list(scene.sources)
sources[0] = mp.PointSource(center=(float(star_y), float(star_x)), spectrum=sources[0].spectrum)
scene = scene.replace_sources(sources)

fig = mp.plot.scene(
    scene,
    observation=hsc,
    norm=norm,
    show_rendered=True,
    show_observed=True,
    show_residual=True,
    add_boxes=True,
)
fig.savefig(out / "initial_scene.png", dpi=150)
plt.show()  # shown in a notebook (and on the docs pages); a no-op in a script

# %% [markdown]
# ## 4. The NumPyro model and its MAP
#
# `SceneModel` is a plain NumPyro program: positive spectra, morphologies in [0, 1]
# and the Gaussian likelihood of the observation. `fit_map` runs damped Gauss-Newton
# until the Newton decrement -- roughly the distance to the mode in posterior standard
# deviations -- falls below `tol` (0.1 by default): only then is `fit.converged` true.
# A fit that stops at `max_iter` first warns and says how far it still is: on this
# blend it still does after 300 steps (decrement ~26, with chi2/dof 1.1-1.4 in every
# band: the faint sources' morphologies still spread slowly), so the numbers below belong to
# a point short of the mode and the marginal error bars of section 6 wait for a
# converged fit (continue with `mp.fit_map(model, init=fit)`).

# %%
model = mp.SceneModel(scene, [hsc])
fit = mp.fit_map(model, max_iter=300 if quick else 1000)
print(
    f"MAP after {fit.iterations} steps: Newton decrement {fit.decrement:.3g} "
    f"(converged when below 0.1): converged = {fit.converged}"
)

fig, ax = plt.subplots(figsize=(5, 3.5), layout="constrained")
ax.plot(fit.losses - fit.losses.min() + 1.0)
ax.set_yscale("log")
ax.set_xlabel("Newton step")
ax.set_ylabel("objective - its minimum + 1")
fig.savefig(out / "convergence.png", dpi=150)
plt.show()  # shown in a notebook (and on the docs pages); a no-op in a script

# %% [markdown]
# ## 5. How well does it fit?
#
# The fitted scene, rendered into the observation, against the data: the residual
# panel shows (data - model) / sigma. Chi-square per degree of freedom per band is
# close to one where the model explains the data down to the noise.

# %%
chi2 = mp.measure.goodness_of_fit(fit.scene, hsc)
print("chi2 / dof:", {band: round(v, 2) for band, v in chi2.items()})

fig = mp.plot.scene(
    fit.scene,
    observation=hsc,
    norm=norm,
    show_rendered=True,
    show_observed=True,
    show_residual=True,
    add_labels=True,
    add_boxes=True,
)
fig.savefig(out / "fit_scene.png", dpi=150)
plt.show()  # shown in a notebook (and on the docs pages); a no-op in a script

# %% [markdown]
# Each source should sit where the catalogue puts it: the light-weighted centre of its
# fitted morphology against the catalogue position, in pixels.

# %%
catalog_y, catalog_x = frame.sky_to_pixel(catalog)
centres = np.array([mp.measure.centroid(source) for source in fit.scene.sources])
offsets = np.hypot(centres[:, 0] - catalog_y, centres[:, 1] - catalog_x)
for k, (centre, offset) in enumerate(zip(centres, offsets, strict=True)):
    print(f"source {k}: centre (y, x) = {centre.round(2)}, {offset:.2f} px from the catalogue")

# %% [markdown]
# ## 6. Fluxes and their error bars
#
# `mp.laplace(model, fit)` is the normal approximation of the posterior at the MAP over
# *every* site, morphology pixels included: its flux error bars are **marginal** -- they
# include what we do not know about the shapes, which matters in a blend where
# neighbours trade light. Holding the morphologies at the MAP
# (`sites=["spectrum"]`) gives **conditional** error bars, which are narrower: they
# answer "how well are the fluxes known if the shapes were exactly right".
# `approx.conditional` says which kind an approximation gives.

# %%
conditional = mp.laplace(model, fit, sites=["spectrum"])
print("spectrum-only approximation conditional?", conditional.conditional)
flux = fit.deterministic()["flux"]  # (sources, bands), data units
sd_conditional = conditional.sd("flux")
if fit.converged:
    approx = mp.laplace(model, fit)
    print("full approximation conditional?", approx.conditional)
    sd_marginal, laplace_decrement = approx.sd("flux"), approx.decrement
else:
    # away from the mode the curvature over every site need not be positive definite
    # (mp.laplace then refuses): the marginal error bars wait for a converged fit
    print(f"not at the mode (decrement {fit.decrement:.3g}): no marginal error bars")
    sd_marginal, laplace_decrement = np.full_like(flux, np.nan), float("nan")
print(f"{'source':>6} {'band':>4} {'flux':>10} {'marginal sd':>12} {'conditional sd':>15}")
for k in range(flux.shape[0]):
    for c, band in enumerate(hsc.channels):
        print(
            f"{k:>6} {band:>4} {flux[k, c]:>10.4g} {sd_marginal[k, c]:>12.3g} "
            f"{sd_conditional[k, c]:>15.3g}"
        )

fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
bands = np.arange(len(hsc.channels))
for k in range(flux.shape[0]):
    sd = sd_marginal[k] if fit.converged else sd_conditional[k]
    ax.errorbar(bands + 0.05 * k, flux[k], yerr=sd, marker="o", label=f"{k}")
ax.set_xticks(bands, hsc.channels)
ax.set_yscale("log")
ax.set_xlabel("band")
ax.set_ylabel(f"flux (data units), {'marginal' if fit.converged else 'conditional'} 1 sd")
ax.legend(title="source", fontsize=7, ncols=2)
fig.savefig(out / "fluxes.png", dpi=150)
plt.show()  # shown in a notebook (and on the docs pages); a no-op in a script

# %% [markdown]
# ## 7. Keep the numbers

# %%
numbers = {
    "converged": fit.converged,
    "decrement": fit.decrement,
    "iterations": fit.iterations,
    "chi2_per_dof": chi2,
    "catalog_yx": np.c_[catalog_y, catalog_x].tolist(),
    "centroid_yx": centres.tolist(),
    "flux": flux.tolist(),
    "flux_sd_marginal": sd_marginal.tolist(),
    "flux_sd_conditional": sd_conditional.tolist(),
    "laplace_decrement": laplace_decrement,
}
(out / "numbers.json").write_text(json.dumps(numbers, indent=2))
print(json.dumps({k: numbers[k] for k in ("converged", "decrement", "chi2_per_dof")}, indent=2))

# %% [markdown]
# ## Where to go next
#
# - `02_multi_observation`: the same kind of scene seen by HST and HSC together, with the
#   astrometric offset between them fitted.
# - `03_correlated_noise`: why resampled data need their correlated-noise model.
# - `docs/inference.md`: `fit_map`, Laplace and NUTS options.
