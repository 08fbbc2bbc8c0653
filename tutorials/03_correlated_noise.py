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
# # Resampled data need their correlated-noise model: the error bars, in numbers
#
# To fit HST and HSC together, the coarse HSC image (0.168" pixels) is resampled once
# onto the fine HST grid (0.03"). That makes about 31 fine pixels out of every native
# one. Their values are no new measurements: neighbouring fine pixels share the same
# native noise, so they are strongly correlated. A likelihood that counts them as
# independent pixels, each with its own (correct) variance, believes it has ~31 times
# more data than there is, and its error bars shrink by about sqrt(31) = 5.6.
#
# Here we measure that, cheaply. The scene is held fixed (sources detected on HST) and
# only the fluxes in the five HSC bands are solved, by linear forced photometry with
# its exact covariance, under three treatments of the same HSC data:
#
# (a) resampled, with the exact noise model (`mp.CorrelatedObservation`);
# (b) resampled, with independent-pixel weights (the naive treatment);
# (c) native, not resampled: the reference, since these are the data as measured.
#
# Figures go to `$MOBS_PPL_TUTORIAL_OUT` (default: `tutorial_output/`), with a
# `numbers.json`. The data are found through `$MOBS_PPL_DATA_DIR`. With
# `MOBS_PPL_TUTORIAL_QUICK=1` (as the test suite runs it) fewer noise realisations are
# averaged for the correlation plot.

# %%
import json
import os
import pathlib

import equinox as eqx
import jax
import matplotlib.pyplot as plt
import numpy as np

import mobs_ppl as mp

jax.config.update("jax_enable_x64", True)  # the package works in float32 too
out = pathlib.Path(os.environ.get("MOBS_PPL_TUTORIAL_OUT", "tutorial_output"))
out.mkdir(parents=True, exist_ok=True)
quick = os.environ.get("MOBS_PPL_TUTORIAL_QUICK", "0") not in ("", "0")

# %% [markdown]
# ## 1. Observations and the model frame
#
# The COSMOS field: HST F814W and HSC g, r, i, z, y (see the `02_multi_observation`
# tutorial). The model frame has HST's pixels and covers both images.

# %%
hst, hsc = mp.datasets.load_cosmos()
frame = mp.Frame.from_observations([hst, hsc], coverage="union")
scale_ratio = float((frame.pixel_scale / hsc.frame.pixel_scale).decompose())
print(frame.shape, frame.channels)
print(
    f"model pixel / HSC pixel = {scale_ratio:.4f}: {1 / scale_ratio**2:.1f} fine px per native px"
)

# %% [markdown]
# ## 2. Three views of the same HSC data
#
# (a) `CorrelatedObservation.from_observation(hsc, resample_to_frame=frame)` resamples
# the data once with a band-limited operator `R`. Its likelihood is that of the
# resampled data under their true covariance `R W^-1 R^T` -- which equals the native
# chi-square of the native residual, so it is exact.
#
# (b) The naive treatment keeps the same resampled data and gives each fine pixel the
# inverse of its own noise variance as a weight (`hsc_c.weights`), as if pixels were
# independent. It is a plain `mp.Observation` on the resampled grid; we give it the
# resampled PSF of (a) as it is (its peak may sit a fraction of a native pixel off the
# array centre, which `Observation` would otherwise "fix").
#
# (c) The native observation `hsc`, rendered into its own pixels.

# %%
hsc_c = mp.CorrelatedObservation.from_observation(hsc, resample_to_frame=frame)
naive = mp.Observation(
    np.asarray(hsc_c.data),
    weights=np.asarray(hsc_c.weights),
    wcs=hsc_c.wcs,
    channels=hsc_c.channels,
    name="HSC_naive",
)
naive = eqx.tree_at(lambda obs: obs.frame, naive, hsc_c.frame)  # the resampled PSF as is
print("resampled grid:", hsc_c.shape, " native grid:", hsc.shape)

norm = mp.plot.AsinhAutomaticNorm(hsc)
fig, axes = plt.subplots(1, 2, figsize=(9, 4.5), layout="constrained")
mp.plot.observation(hsc, norm=norm, ax=axes[0])
mp.plot.observation(hsc_c, ax=axes[1])
axes[1].set_title("HSC resampled onto the HST grid", fontsize=9)
fig.savefig(out / "hsc_native_and_resampled.png", dpi=150)
plt.show()  # shown in a notebook (and on the docs pages); a no-op in a script

# %% [markdown]
# ## 3. What the noise of resampled pixels looks like
#
# `hsc_c.sample_noise(key)` draws native white noise with the data's variance and
# resamples it. Neighbouring fine pixels then move together. For ideal band-limited
# (sinc) interpolation of white noise of native spacing 1, the correlation of two
# resampled points a distance `d` apart (native pixels) along one axis is
# `sinc(d) = sin(pi d) / (pi d)`; one fine pixel is `d = 0.179`, so we expect about
# 0.95 between direct neighbours.

# %%
n_draws = 4 if quick else 32
keys = jax.random.split(jax.random.PRNGKey(0), n_draws)
band = hsc.channels.index("i")
lags = np.arange(0, 13)


def lag_correlation(image, lag):
    """Correlation of pixels ``lag`` apart along x, over the used pixels."""
    a, b = image[:, : image.shape[1] - lag], image[:, lag:]
    return float(np.sum(a * b) / np.sqrt(np.sum(a * a) * np.sum(b * b)))


draws = [np.asarray(hsc_c.sample_noise(key))[band] for key in keys]
inner = (slice(20, -20), slice(20, -20))  # away from the box edges
measured = np.array([np.mean([lag_correlation(d[inner], lag) for d in draws]) for lag in lags])
expected = np.sinc(lags * scale_ratio)
print("lag (fine px)   measured   sinc")
for lag in lags[:7]:
    print(f"{lag:>13d} {measured[lag]:>10.3f} {expected[lag]:>6.3f}")

fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), layout="constrained")
white = np.asarray(jax.random.normal(jax.random.PRNGKey(1), draws[0].shape))
sigma = np.std(draws[0][inner])
axes[0].imshow(np.c_[draws[0][:80, :80] / sigma, white[:80, :80]], origin="lower", cmap="gray")
axes[0].set_title("resampled HSC noise (left) vs independent pixels (right)", fontsize=9)
axes[0].set_axis_off()
axes[1].plot(lags, measured, "o", label="resampled noise, measured")
axes[1].plot(lags, expected, "-", label="sinc(lag x 0.03 / 0.168)")
axes[1].axhline(0, color="k", lw=0.5)
axes[1].set_xlabel('lag along x (model pixels, 0.03")')
axes[1].set_ylabel("correlation of pixel pairs")
axes[1].legend(fontsize=8)
fig.savefig(out / "noise_correlation.png", dpi=150)
plt.show()  # shown in a notebook (and on the docs pages); a no-op in a script

# %% [markdown]
# ## 4. A fixed scene, three sets of error bars
#
# Sources are detected on HST, which resolves the blends. With their morphologies held
# fixed, the fluxes are linear parameters of the likelihood: `forced_photometry(...,
# return_covariance=True)` solves them exactly (generalised least squares under each
# observation's noise model) and returns their covariance. No iterative fit is needed.

# %%
scene = mp.init.from_observation(hst, frame, image_type="space", cores="none")
print(f"{len(scene.sources)} sources detected on HST")

hsc_index = list(frame.channel_indices(hsc.frame))
unit_flux = np.array(
    [
        mp.measure.flux(source.with_spectrum(np.ones(frame.n_channels)), frame)[hsc_index]
        for source in scene.sources
    ]
)  # flux per unit amplitude, per source and HSC band
treatments = {"exact (a)": hsc_c, "naive (b)": naive, "native (c)": hsc}
flux, flux_sd = {}, {}
for label, obs in treatments.items():
    _, amplitudes, covariance = mp.measure.forced_photometry(scene, obs, return_covariance=True)
    sd = np.sqrt(np.diag(covariance)).reshape(amplitudes.shape)
    flux[label], flux_sd[label] = amplitudes * unit_flux, sd * unit_flux

# %% [markdown]
# The flux error bars of the brightest sources, per band (data units), and their ratio
# to the native ones:

# %%
order = np.argsort(-flux["native (c)"].sum(axis=1))
shown = order[:3]
ratio_naive = flux_sd["naive (b)"] / flux_sd["native (c)"]
ratio_exact = flux_sd["exact (a)"] / flux_sd["native (c)"]
print(
    f"{'source':>6} {'band':>4} {'sd exact':>9} {'sd naive':>9} {'sd native':>9} "
    f"{'naive/native':>12} {'exact/native':>12}"
)
for k in shown:
    for c, band_name in enumerate(hsc.channels):
        print(
            f"{k:>6} {band_name:>4} {flux_sd['exact (a)'][k, c]:>9.3g} "
            f"{flux_sd['naive (b)'][k, c]:>9.3g} {flux_sd['native (c)'][k, c]:>9.3g} "
            f"{ratio_naive[k, c]:>12.3f} {ratio_exact[k, c]:>12.4f}"
        )
print(
    f"naive / native over all sources and bands: {np.median(ratio_naive):.3f} "
    f"(pixel-scale ratio {scale_ratio:.3f})"
)
print(f"exact / native: {ratio_exact.min():.6f} to {ratio_exact.max():.6f}")

fig, ax = plt.subplots(figsize=(6.5, 4), layout="constrained")
bands = np.arange(len(hsc.channels))
for label, style in zip(treatments, ("o-", "s--", "^:"), strict=True):
    for n, k in enumerate(shown):
        ax.plot(
            bands,
            flux_sd[label][k],
            style,
            color=f"C{n}",
            label=f"{label}, source {k}",
        )
ax.set_xticks(bands, hsc.channels)
ax.set_yscale("log")
ax.set_xlabel("band")
ax.set_ylabel("forced-flux sd (data units)")
ax.set_title("exact (a) and native (c) coincide; naive (b) is 5.6x too small", fontsize=9)
ax.legend(fontsize=7, ncols=3)
fig.savefig(out / "flux_error_bars.png", dpi=150)

fig, ax = plt.subplots(figsize=(5.5, 3.8), layout="constrained")
ax.plot(ratio_naive.ravel(), "s", label="naive / native")
ax.plot(ratio_exact.ravel(), "o", label="exact / native")
ax.axhline(scale_ratio, color="k", ls=":", label=f"pixel-scale ratio {scale_ratio:.3f}")
ax.set_ylim(0, 1.2)
ax.set_xlabel("source x band")
ax.set_ylabel("flux sd ratio")
ax.legend(fontsize=8)
fig.savefig(out / "sd_ratios.png", dpi=150)
plt.show()  # shown in a notebook (and on the docs pages); a no-op in a script

# %% [markdown]
# Why the naive error bars shrink by the pixel-scale ratio: the marginal variance of a
# band-limited interpolant of white noise is the native variance wherever it is
# evaluated, and the sum of a smooth template's squares over fine pixels is
# `1 / ratio^2` times its sum over native ones (Parseval). The naive Fisher
# information of a flux is therefore `1 / ratio^2 = 31` times the native one, and its
# error bar `ratio = 0.18` times the true one. The exact model (a) gives back the native
# error bars to rounding: the resampled likelihood *is* the native one.

# %%
numbers = {
    "n_sources": len(scene.sources),
    "pixel_scale_ratio": scale_ratio,
    "sd_ratio_exact_over_native": ratio_exact.tolist(),
    "sd_ratio_naive_over_native": ratio_naive.tolist(),
    "neighbour_correlation_measured": float(measured[1]),
    "neighbour_correlation_sinc": float(expected[1]),
    "correlation_lags": lags.tolist(),
    "correlation_measured": measured.tolist(),
}
(out / "numbers.json").write_text(json.dumps(numbers, indent=2))

# %% [markdown]
# ## What this means for a fit
#
# In `SceneModel(scene, [hst_c, hsc_c])` the resampled HSC observation always carries
# this exact noise model: the error bars of shifts and fluxes are those the native data
# support. `mp.measure.goodness_of_fit(scene, hsc_c)` reports chi-square per degree of
# freedom on the native pixels for the same reason. See `docs/noise_model.md`.
