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
# # Judging a joint fit in the native HSC pixels
#
# In a joint HST + HSC fit the HSC image is resampled once onto the fine HST grid, so
# that one model frame serves both. The resampled image is smooth: each native HSC
# pixel is spread over some thirty model pixels, and neighbouring resampled pixels carry
# nearly the same noise. Any check of the fit made on that grid as if its pixels were
# independent is misleading. The data we actually have are the native HSC pixels, and
# that is where the fit should be judged.
#
# This tutorial fits the COSMOS field, converts the fitted HSC shift from model pixels
# to native HSC pixels, renders the fitted scene into the *native* HSC observation and
# looks at what a good fit should give there: chi-square per degree of freedom near
# one in every band, and normalised residuals `(data - model) * sqrt(w)` distributed as
# N(0, 1). Then it does the same sums on the resampled grid, naively, to show what goes
# wrong.
#
# Figures and `numbers.json` go to `$MOBS_PPL_TUTORIAL_OUT` (default:
# `tutorial_output/`). With `MOBS_PPL_TUTORIAL_QUICK=1` (as the test suite runs it)
# the MAP takes fewer steps; see section 3.

# %%
import json
import os
import pathlib
import time

import astropy.units as u
import jax
import matplotlib.pyplot as plt
import numpy as np
from scipy import stats

import mobs_ppl as mp

jax.config.update("jax_enable_x64", True)
out = pathlib.Path(os.environ.get("MOBS_PPL_TUTORIAL_OUT", "tutorial_output"))
out.mkdir(parents=True, exist_ok=True)
quick = os.environ.get("MOBS_PPL_TUTORIAL_QUICK", "0") not in ("", "0")
DPI = 150

# %% [markdown]
# ## 1. Data, frame, sources
#
# The model frame is the intersection of the two footprints (the HST image: every model
# pixel has high-resolution data); sources come from detection on HST. To keep the fit
# short, both images are cut to the box that holds the sources (see the sampling
# tutorial for the same step explained).


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


hst_full, hsc_full = mp.datasets.load_cosmos()
frame_full = mp.Frame.from_observations([hst_full, hsc_full], coverage="intersection")
scene_full = mp.init.from_observation(hst_full, frame_full, image_type="space")

margin = 8  # model (= HST) pixels around the union of the morphology boxes
_, height, width = frame_full.shape
y0 = max(min(s.origin[0] for s in scene_full.sources) - margin, 0)
x0 = max(min(s.origin[1] for s in scene_full.sources) - margin, 0)
y1 = min(max(s.origin[0] + s.box_shape[0] for s in scene_full.sources) + margin, height)
x1 = min(max(s.origin[1] + s.box_shape[1] for s in scene_full.sources) + margin, width)
hst = cutout(hst_full, y0, y1, x0, x1)
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
print(f"model frame {frame.shape}, native HSC {hsc.shape}, {scene.n_groups} galaxies")

# %% [markdown]
# ## 2. The joint model
#
# HSC is resampled onto the model grid. `CorrelatedObservation` remembers the native
# observation and the resampling operator, and its likelihood is that of the native
# pixels -- so the fit itself is already honest. What this tutorial adds is the
# *evaluation* on the native grid.

# %%
hsc_c = mp.CorrelatedObservation.from_observation(hsc, resample_to_frame=frame)
hst_c = mp.CorrelatedObservation.from_observation(hst)
scene = mp.measure.forced_photometry(scene, hsc_c)
model = mp.SceneModel(scene, [hst_c, hsc_c], shifts={"HSC": 0.1 * u.arcsec})
print("resampled HSC grid:", hsc_c.shape, "native:", hsc.shape)

# %% [markdown]
# ## 3. The MAP
#
# `fit_map` runs damped Gauss-Newton until the Newton decrement (the distance to the
# mode in posterior standard deviations) is below 0.1, or `max_iter` steps. On this cut
# the objective falls fast for ~20 steps and then creeps, the decrement hovering
# between one and two. The full run allows 300 steps; the quick run stops after 25,
# which is *not* converged (`fit_map` warns and `fit.converged` is False): the
# residuals below are then those of a point about two posterior sd from the mode,
# which changes chi-square by a few units over thousands of pixels. (The first step
# includes compiling the model: a few minutes on two CPU cores.)

# %%
max_iter = 25 if quick else 300
start = time.perf_counter()
fit = mp.fit_map(model, max_iter=max_iter)
print(
    f"MAP ({time.perf_counter() - start:.0f} s): {fit.iterations} steps, "
    f"decrement {fit.decrement:.3f}, converged {fit.converged}"
)

# %% [markdown]
# ## 4. The shift in native pixels
#
# The model samples the HSC shift in *model* pixels (0.03"). To render into the native
# HSC image we need it in native pixels (0.168"), rotated and scaled by the local
# Jacobian between the two pixel grids. The package has one owner of that conversion:
# the observation's `native_from_model` matrix, which `fit.shift_native`, the
# `shift_native` site of the model and the Laplace approximation all use.
# `mp.frame.relative_jacobian(hsc_c.frame, hsc.frame)` computes the same derivative
# from the two frames' WCS, at the centre of the resampled grid.

# %%
shift_model = fit.shift("HSC")
native = fit.shift_native("HSC")
jacobian = mp.frame.relative_jacobian(hsc_c.frame, hsc.frame)
print("shift, model px:     ", shift_model.round(4))
print("shift, native HSC px:", native.round(4))
print("relative_jacobian @ shift:", (jacobian @ shift_model).round(4))
print("Jacobian:\n", jacobian.round(5))

# %% [markdown]
# ## 5. Rendering into the native observation
#
# `hsc.match(frame)` binds the native HSC observation to the model frame: its renderer
# convolves the model with the difference kernel between the model PSF and each HSC
# band's PSF and integrates it onto the native pixels. `render(cube, shift)` takes the
# shift in *its own* (native) pixels. `mp.plot.scene` does the same for the figure.

# %%
hsc_native = hsc.match(frame)
cube = np.asarray(fit.scene.render())
rendered = np.asarray(hsc_native.render(cube, native))
data = np.asarray(hsc_native.data)
weights = np.asarray(hsc_native.counted_weights())  # zero outside the model frame
counted = weights > 0
normalised = (data - rendered) * np.sqrt(weights)

fig = mp.plot.scene(
    fit.scene,
    observation=hsc,
    shift=native,
    show_rendered=True,
    show_observed=True,
    show_residual=True,
    add_labels=True,
    add_boxes=True,
)
fig.savefig(out / "fit_hsc_native.png", dpi=DPI)
fig = mp.plot.scene(
    fit.scene,
    observation=hsc_c,
    shift=shift_model,
    show_model=False,
    show_observed=True,
    show_residual=True,
)
fig.savefig(out / "fit_hsc_resampled.png", dpi=DPI)
plt.show()  # shown in a notebook (and on the docs pages); a no-op in a script

# %% [markdown]
# ## 6. Chi-square per band, native pixels
#
# Per band, the sum of squared normalised residuals over the pixels that count, divided
# by their number. `mp.measure.goodness_of_fit` is the package's version of the same sum.
#
# On this field the values come out *below* one, most in the red bands (measured in
# the quick run: 1.09, 0.80, 0.74, 0.71, 0.55 for g..y). Part of it is the weights:
# `load_cosmos` takes a clipped sigma of each cut-out, 3 to 11 per cent above the
# background noise that the data's README quotes (chi-square scales with its inverse
# square). Part is the degrees of freedom, fewer than the pixels: thousands of free
# morphology pixels and the spectra can follow some of the HSC noise on the sources.

# %%
chi2_native = {
    band: float(np.sum(normalised[c][counted[c]] ** 2) / counted[c].sum())
    for c, band in enumerate(hsc.channels)
}
package = mp.measure.goodness_of_fit(fit.scene, hsc, shift=native)
for band in hsc.channels:
    print(f"{band}: chi2/dof {chi2_native[band]:.3f} (goodness_of_fit {package[band]:.3f})")

# %% [markdown]
# ## 7. Normalised residuals against N(0, 1)
#
# If the model and the noise model are right, `(data - model) * sqrt(w)` on the native
# pixels is standard normal. The histogram pools all bands, and splits the pixels where
# the model is below a tenth of the noise ("background") from those on the sources.
# Here the pooled sd is ~0.85, as chi-square said, and the background pixels sit
# ~0.4 sigma below zero: the data there are negative on average, a sky level around
# the galaxies that the model (which has no sky term) cannot follow.

# %%
pooled = normalised[counted]
faint = np.abs(rendered) * np.sqrt(weights) < 0.1  # model below 0.1 sigma
background = normalised[counted & faint]
on_sources = normalised[counted & ~faint]


def robust_sd(values):
    """1.4826 times the median absolute deviation: the sd of a normal sample."""
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


edges = np.linspace(-5, 5, 61)
grid = np.linspace(-5, 5, 400)
fig, ax = plt.subplots(figsize=(5, 3.6), layout="constrained")
for values, label in ((pooled, "all"), (background, "background"), (on_sources, "on sources")):
    ax.hist(values, bins=edges, density=True, histtype="step", lw=1.5, label=label)
ax.plot(grid, stats.norm.pdf(grid), "k--", label="N(0, 1)")
ax.set_yscale("log")
ax.set_ylim(1e-4, 1)
ax.set_xlabel("(data - model) sqrt(w), native HSC pixels")
ax.set_ylabel("density")
ax.legend()
fig.savefig(out / "residual_histogram.png", dpi=DPI)
plt.show()  # shown in a notebook (and on the docs pages); a no-op in a script
for values, label in ((pooled, "all"), (background, "background"), (on_sources, "on sources")):
    print(
        f"{label:>10}: {values.size:5d} pixels, mean {values.mean():+.3f}, sd {values.std():.3f}, "
        f"robust sd {robust_sd(values):.3f}"
    )

# %% [markdown]
# ## 8. The same sums on the resampled grid, naively
#
# The resampled image has its own `data` and `weights` (the inverse of each resampled
# pixel's marginal noise variance). Treating its pixels as independent, one would sum
# `(data - model)^2 * w` over them. Each resampled pixel has the right variance, so
# chi2/dof may look just as good -- but the sum runs over some thirty times more pixels
# than there are independent measurements, and neighbouring residuals are almost
# perfectly correlated. A likelihood built that way counts every native pixel about
# thirty times, and its error bars come out about sqrt(30) ~ 5.5 times too small.
#
# The native pixels are not perfectly independent either: an HSC coadd is itself made
# of warped exposures, and neighbouring native residuals correlate at the ~0.25 level
# (against ~0.97 on the resampled grid). The package's native likelihood treats them as
# independent, which makes its HSC error bars somewhat too narrow.

# %%
resampled = hsc_c.bound_to(frame)
rendered_r = np.asarray(resampled.render(cube, shift_model))
weights_r = np.asarray(resampled.counted_weights())
counted_r = weights_r > 0
normalised_r = (np.asarray(resampled.data) - rendered_r) * np.sqrt(weights_r)
chi2_naive = {
    band: float(np.sum(normalised_r[c][counted_r[c]] ** 2) / counted_r[c].sum())
    for c, band in enumerate(hsc.channels)
}


def neighbour_correlation(chi, used):
    """Correlation of normalised residuals one pixel apart along x (pairs both used)."""
    both = used[:, :, 1:] & used[:, :, :-1]
    a, b = chi[:, :, 1:][both], chi[:, :, :-1][both]
    return float(np.corrcoef(a, b)[0, 1])


pixels_native = int(counted.sum())
pixels_resampled = int(counted_r.sum())
corr_native = neighbour_correlation(normalised, counted)
corr_resampled = neighbour_correlation(normalised_r, counted_r)
print(f"{'band':>5} {'native chi2/dof':>16} {'naive resampled':>16}")
for band in hsc.channels:
    print(f"{band:>5} {chi2_native[band]:16.3f} {chi2_naive[band]:16.3f}")
print(f"pixels: native {pixels_native}, resampled {pixels_resampled}, "
      f"ratio {pixels_resampled / pixels_native:.1f}")  # fmt: skip
print(f"neighbour correlation of residuals: native {corr_native:.3f}, "
      f"resampled {corr_resampled:.3f}")  # fmt: skip

fig, axes = plt.subplots(1, 2, figsize=(8, 3.6), layout="constrained")
for ax, chi, used, title in (
    (axes[0], normalised, counted, "native HSC pixels"),
    (axes[1], normalised_r, counted_r, "resampled (model) pixels"),
):
    band = hsc.channels.index("i")
    shown = ax.imshow(np.where(used[band], chi[band], np.nan), origin="lower", cmap="RdBu_r",
                      vmin=-4, vmax=4)  # fmt: skip
    ax.set_title(f"i band, {title}")
fig.colorbar(shown, ax=axes, shrink=0.8, label="(data - model) sqrt(w)")
fig.savefig(out / "residuals_native_vs_resampled.png", dpi=DPI)
plt.show()  # shown in a notebook (and on the docs pages); a no-op in a script

# %% [markdown]
# ## 9. Keep the numbers

# %%
numbers = {
    "quick": quick,
    "converged": fit.converged,
    "decrement": fit.decrement,
    "iterations": fit.iterations,
    "shift_model_px": shift_model.tolist(),
    "shift_native_px": native.tolist(),
    "shift_native_px_relative_jacobian": (jacobian @ shift_model).tolist(),
    "jacobian": jacobian.tolist(),
    "chi2_per_dof_native": chi2_native,
    "chi2_per_dof_goodness_of_fit": package,
    "chi2_per_dof_naive_resampled": chi2_naive,
    "residual_sd": float(pooled.std()),
    "residual_robust_sd": robust_sd(pooled),
    "residual_mean": float(pooled.mean()),
    "residual_robust_sd_background": robust_sd(background),
    "residual_robust_sd_on_sources": robust_sd(on_sources),
    "pixels_background": int(background.size),
    "pixels_native": pixels_native,
    "pixels_resampled": pixels_resampled,
    "neighbour_correlation_native": corr_native,
    "neighbour_correlation_resampled": corr_resampled,
    "pixel_scale_ratio": float(hsc.frame.pixel_scale / frame.pixel_scale),
}
(out / "numbers.json").write_text(json.dumps(numbers, indent=2))
print(json.dumps(numbers, indent=2))
