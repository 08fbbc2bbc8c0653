"""NUTS health on the shared COSMOS field: HST F814W and HSC g, r, i, z, y together.

The set-up is a deliberately simple one, independent of ``mp.detection`` and
``mp.init`` (tested elsewhere): peaks of the smoothed HST image above 8 sigma become
non-parametric sources whose morphology is the HST image of their segment (pixels
nearer to that peak than to any other, above 3 sigma), normalised to its peak; spectra
start from non-negative least squares against both images. HST enters with its
measured pixel correlations (drizzled co-add), HSC resampled onto the model frame with
its exact noise model. After a MAP fit of every site, NUTS samples spectra and the HSC
astrometric shift with the morphologies held at the MAP (four chains, dense mass
matrix), and must show R-hat < 1.01, bulk ESS > 400 for every flux and shift
component, and no divergence.

Both images are cut to the box holding the sources' morphology boxes (plus a margin):
the blank rest of the field constrains neither fluxes nor the shift and only makes
every gradient ~2.4x more expensive.

Run time: ``mobs_ppl.sample`` starts NUTS with the Laplace covariance at the MAP as
its (fixed, dense) metric, so trajectories take ~13 leapfrog steps from the first
warm-up iteration; the unconstrained (log) spectra have posterior widths from ~0.003 to
~0.3, and with NumPyro's identity start the first adaptation window alone took
~100-1000 steps per iteration (NUTS 672 s instead of 131 s for 2 x (300 + 600)). The
test takes ~6 minutes on two otherwise idle cores, hence ``slow``.

:func:`cosmos_model` builds the model; ``benchmarks/inference.py`` reuses it.
"""

from __future__ import annotations

import time

import astropy.units as u
import numpy as np
import pytest
from scipy import ndimage, optimize

import mobs_ppl as mp

#: NUTS settings of the health check (NUM_CHAINS chains x NUM_SAMPLES draws). R-hat
#: estimates scatter by ~1/draws: with 2 chains of 600 draws the largest of 38 values
#: reached 1.016 for a flux whose bulk ESS was 1900; 4 x 1000 draws keep that scatter
#: well below the 0.01 margin.
NUM_WARMUP = 300
NUM_SAMPLES = 1000
NUM_CHAINS = 4
#: Chains one after the other: vectorised chains advance in lockstep, every iteration
#: as long as the longest of their trees.
CHAIN_METHOD = "sequential"


def _robust_sigma(values: np.ndarray) -> tuple[float, float]:
    median = float(np.median(values))
    return median, 1.4826 * float(np.median(np.abs(values - median)))


def detect_sources(
    hst: mp.Observation,
    frame: mp.Frame,
    n_sigma: float = 8.0,
    smooth: float = 2.0,
    separation: int = 9,
    segment_sigma: float = 3.0,
    max_half_size: int = 25,
) -> list[mp.Source]:
    """Non-parametric sources at the peaks of the smoothed HST image.

    Parameters
    ----------
    hst : Observation
        Single-band high-resolution image whose grid is that of ``frame`` up to an
        integer offset (the model frame of HST + HSC is built on the HST pixels).
    frame : Frame
        The model frame.
    n_sigma : float
        Detection threshold on the smoothed image, in its own robust sigma.
    smooth : float
        Gaussian smoothing width (pixels) before detection.
    separation : int
        Peaks are maxima over ``separation x separation`` pixels.
    segment_sigma : float
        Pixels of a source are those above this threshold nearer to its peak than to
        any other peak.
    max_half_size : int
        Largest half-size of a morphology box.
    """
    image = np.asarray(hst.data[0])
    used = np.asarray(hst.weights[0]) > 0
    smoothed = ndimage.gaussian_filter(np.where(used, image, 0.0), smooth)
    median, sigma = _robust_sigma(smoothed[used])
    excess = smoothed - median
    peaks = (smoothed == ndimage.maximum_filter(smoothed, size=separation)) & (
        excess > n_sigma * sigma
    )
    ys, xs = np.nonzero(peaks)
    if len(ys) == 0:
        raise ValueError("no source above the detection threshold")
    # nearest peak of every pixel (Voronoi segmentation, restricted to the footprint)
    not_peak = np.ones(image.shape, bool)
    not_peak[ys, xs] = False
    _, (iy, ix) = ndimage.distance_transform_edt(not_peak, return_indices=True)
    index = np.full(image.shape, -1)
    index[ys, xs] = np.arange(len(ys))
    nearest = index[iy, ix]
    footprint = excess > segment_sigma * sigma
    fy, fx = frame.sky_to_pixel(hst.frame.pixel_to_sky(ys.astype(float), xs.astype(float)))
    sources = []
    for k, (y, x) in enumerate(zip(ys, xs, strict=True)):
        segment = footprint & (nearest == k)
        sy, sx = np.nonzero(segment)
        half = int(np.clip(max(np.abs(sy - y).max(), np.abs(sx - x).max()) + 2, 5, max_half_size))
        yy, xx = np.mgrid[y - half : y + half + 1, x - half : x + half + 1]
        inside = (yy >= 0) & (yy < image.shape[0]) & (xx >= 0) & (xx < image.shape[1])
        box = np.zeros(yy.shape)
        yi, xi = yy[inside], xx[inside]
        box[inside] = np.where(segment[yi, xi], image[yi, xi], 0.0)
        morphology = np.clip(box / box.max(), 1e-4, 1 - 1e-4)
        centre = (float(np.round(fy[k])), float(np.round(fx[k])))
        sources.append(mp.Source(centre, np.ones(frame.n_channels), morphology))
    return sources


def initial_spectra(sources, frame: mp.Frame, observations) -> np.ndarray:
    """Spectra by non-negative least squares of every channel (sources' shapes fixed).

    Values below 1% of a channel's largest are raised to it (the model needs
    strictly positive spectra).
    """
    spectra = np.zeros((len(sources), frame.n_channels))
    for obs in observations:
        matched = obs.match(frame)
        renders = np.stack(
            [np.asarray(matched.render(mp.Scene(frame, [s]).render())) for s in sources]
        )
        root_w = np.sqrt(np.asarray(matched.weights * matched.renderer.coverage))
        data = np.asarray(matched.data)
        for c, channel in enumerate(obs.channels):
            design = (renders[:, c] * root_w[c]).reshape(len(sources), -1).T
            solution, _ = optimize.nnls(design, (data[c] * root_w[c]).ravel())
            spectra[:, frame.channels.index(channel)] = solution
    return np.maximum(spectra, 1e-2 * spectra.max(axis=0))


def _cutout(obs: mp.Observation, y0: int, y1: int, x0: int, x1: int) -> mp.Observation:
    """Pixels ``[y0:y1, x0:x1]`` of an observation, with the WCS sliced to match."""
    return mp.Observation(
        np.asarray(obs.data)[:, y0:y1, x0:x1],
        weights=np.asarray(obs.weights)[:, y0:y1, x0:x1],
        psf=np.asarray(obs.psf),
        wcs=obs.wcs[y0:y1, x0:x1],
        channels=list(obs.channels),
        name=obs.name,
    )


def crop_to_sources(hst, hsc, sources, frame, margin: int = 8, native_margin: int = 2):
    """Cut both images down to the box holding every source's morphology box.

    Pixels further from all sources constrain neither fluxes nor the shift; leaving
    them out makes every gradient several times cheaper. The HSC cut covers the HST
    cut plus ``native_margin`` native pixels, so the model frame (their intersection)
    is the HST cut.
    """
    y_lo = min(s.origin[0] for s in sources) - margin
    x_lo = min(s.origin[1] for s in sources) - margin
    y_hi = max(s.origin[0] + s.box_shape[0] for s in sources) + margin
    x_hi = max(s.origin[1] + s.box_shape[1] for s in sources) + margin
    # frame pixels -> HST pixels (the frame is the HST grid up to an integer offset)
    corners = frame.pixel_to_sky(np.array([y_lo, y_hi], float), np.array([x_lo, x_hi], float))
    hy, hx = hst.frame.sky_to_pixel(corners)
    height, width = hst.shape[1:]
    y0, y1 = max(int(np.round(hy.min())), 0), min(int(np.round(hy.max())), height)
    x0, x1 = max(int(np.round(hx.min())), 0), min(int(np.round(hx.max())), width)
    hst_cut = _cutout(hst, y0, y1, x0, x1)
    ymin, ymax, xmin, xmax = hst_cut.frame.footprint(hsc.wcs)
    height, width = hsc.shape[1:]
    hsc_cut = _cutout(
        hsc,
        max(int(np.floor(ymin)) - native_margin, 0),
        min(int(np.ceil(ymax)) + native_margin + 1, height),
        max(int(np.floor(xmin)) - native_margin, 0),
        min(int(np.ceil(xmax)) + native_margin + 1, width),
    )
    return hst_cut, hsc_cut


def cosmos_model(
    data_dir=None, shift_scale=0.1 * u.arcsec, crop: bool = True
) -> tuple[mp.SceneModel, dict]:
    """The COSMOS HST + HSC scene model of the health check.

    Parameters
    ----------
    data_dir : path-like, optional
        Directory holding ``cosmos_hst_hsc/`` (see :func:`mobs_ppl.datasets.load_cosmos`).
    shift_scale : Quantity
        Prior scale of the HSC astrometric shift.
    crop : bool
        Cut both images to the region of the detected sources (:func:`crop_to_sources`).

    Returns
    -------
    model : SceneModel
        HST (measured correlated noise) and HSC (resampled) on their intersection
        frame, with an HSC shift.
    info : dict
        ``hst``, ``hsc`` (the observations used), ``frame``, ``sources`` (number).
    """
    hst, hsc = mp.datasets.load_cosmos(data_dir, download=False)
    # the intersection is the HST footprint: no model pixel without high-resolution data
    frame = mp.Frame.from_observations([hst, hsc], coverage="intersection")
    sources = detect_sources(hst, frame)
    if crop:
        hst, hsc = crop_to_sources(hst, hsc, sources, frame)
        full = frame
        frame = mp.Frame.from_observations([hst, hsc], coverage="intersection")
        sources = [s.with_center(_moved(s.center, full, frame)) for s in sources]
    spectra = initial_spectra(sources, frame, [hst, hsc])
    scene = mp.Scene(frame, [s.with_spectrum(v) for s, v in zip(sources, spectra, strict=True)])
    observations = [
        mp.CorrelatedObservation.from_observation(hst).match(frame),
        mp.CorrelatedObservation.from_observation(hsc, resample_to_frame=frame).match(frame),
    ]
    model = mp.SceneModel(scene, observations, shifts={"HSC": shift_scale})
    return model, {"hst": hst, "hsc": hsc, "frame": frame, "sources": len(sources)}


def _moved(center, old: mp.Frame, new: mp.Frame) -> np.ndarray:
    """Pixel position in ``new`` of a position in ``old`` (rounded: the grids align)."""
    y, x = np.asarray(center, float)
    ny, nx = new.sky_to_pixel(old.pixel_to_sky(y, x))
    return np.round(np.array([float(ny), float(nx)]), 6)


def _mean_sd(values) -> tuple[np.ndarray, np.ndarray]:
    return values.mean(("chain", "draw")).values, values.std(("chain", "draw")).values


def report(idata) -> str:
    """Posterior fluxes and HSC shift (model pixels, native HSC pixels, arcsec) as text."""
    flux = idata.posterior["flux"]
    lines = [f"flux (mean +- sd); columns {list(flux['channel'].values)}"]
    for i in flux["source"].values:
        mean, sd = _mean_sd(flux.sel(source=i))
        lines.append(
            f"  source {i}: "
            + "  ".join(f"{m:.4g} +- {s:.2g}" for m, s in zip(mean, sd, strict=True))
        )
    for label, site in (
        ("model px", "shift"),
        ("native HSC px", "shift_native"),
        ("arcsec", "shift_arcsec"),
    ):
        mean, sd = _mean_sd(idata.posterior[site].sel(observation="HSC"))
        lines.append(
            f"HSC shift (dy, dx), {label}: ({mean[0]:+.4f} +- {sd[0]:.4f}, "
            f"{mean[1]:+.4f} +- {sd[1]:.4f})"
        )
    return "\n".join(lines)


@pytest.mark.slow
@pytest.mark.data
def test_nuts_health_on_cosmos(shared_data_dir):
    import arviz as az

    start = time.perf_counter()
    model, info = cosmos_model(shared_data_dir)
    n_sources = info["sources"]
    assert 4 <= n_sources <= 10, n_sources
    # the sampler's health over the sites it samples: their mode, morphologies held at
    # the start (the MAP of every site: the tutorial 02_multi_observation)
    fit = mp.fit_map(model, sites=["spectrum", "shift"])
    assert fit.converged and fit.losses[-1] < fit.losses[0]
    map_seconds = time.perf_counter() - start

    post = mp.sample(
        model,
        init=fit,
        sites=["spectrum", "shift"],
        num_warmup=NUM_WARMUP,
        num_samples=NUM_SAMPLES,
        num_chains=NUM_CHAINS,
        dense_mass=True,
        chain_method=CHAIN_METHOD,
    )
    idata = post.to_arviz(log_likelihood="none")
    nuts_seconds = time.perf_counter() - start - map_seconds

    summary = az.summary(idata, var_names=["flux", "shift"], kind="diagnostics", round_to="none")
    diverging = int(idata.sample_stats["diverging"].sum())
    steps = float(idata.sample_stats["n_steps"].mean())
    print(
        f"\nCOSMOS: {n_sources} sources, frame {info['frame'].shape}; MAP {map_seconds:.0f} s "
        f"({fit.losses.size} iterations, converged={fit.converged}); NUTS + ArviZ "
        f"{nuts_seconds:.0f} s, {steps:.1f} leapfrog steps per draw"
    )
    print(
        f"divergences {diverging}; max R-hat {summary['r_hat'].max():.4f}; min bulk ESS "
        f"{summary['ess_bulk'].min():.0f}; min tail ESS {summary['ess_tail'].min():.0f}"
    )
    print(report(idata))
    print(summary.to_string())

    assert diverging == 0
    assert summary["r_hat"].max() < 1.01
    assert summary["ess_bulk"].min() > 400
    assert len(summary) == n_sources * model.scene.frame.n_channels + 2
