"""Blends of galaxies with colour gradients, drawn with numpy alone.

An independent simulator for the tests of fits and error bars on scenes the model
cannot represent exactly: each galaxy is a compact red bulge plus an extended blue
disk whose centres differ by ~0.05", so its centroid moves with wavelength. Both are
elliptical Gaussians; convolved with a Gaussian PSF they stay Gaussian (covariances
add), and the pixel integral is done by 5 x 5 sub-pixel sampling. Nothing here calls
mobs_ppl's renderer.

Geometry: TAN WCS sharing one tangent point, ``cd = diag(-s, s)``; a profile at sky
position ``c`` is drawn at the pixel astropy's WCS gives for ``c``, plus the true shift
``(dy, dx)`` (native HSC pixels) in HSC: where sources appear minus where the WCS puts
them, the convention of ``shift_native``.
"""

from __future__ import annotations

import dataclasses

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.wcs import WCS

HST_SCALE, HSC_SCALE = 0.03, 0.168  # arcsec per pixel
HST_FWHM = 0.08  # arcsec
HSC_FWHM = (0.78, 0.72, 0.62, 0.66, 0.74)  # g..y, arcsec
BANDS = ("F814W", "g", "r", "i", "z", "y")
RED = np.array([1.0, 0.15, 0.35, 0.7, 0.95, 1.05])  # bulge SED (relative, BANDS order)
BLUE = np.array([1.0, 0.9, 0.95, 1.0, 0.95, 0.9])  # disk SED
CRVAL = (150.1, 2.3)
FWHM_TO_SIGMA = 1 / 2.3548


def tan_wcs(scale: float, shape, offset=(0.0, 0.0)) -> WCS:
    """TAN WCS of ``scale`` arcsec/px, tangent point at the centre plus ``offset`` (y, x)."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = list(CRVAL)
    w.wcs.cd = np.diag([-scale, scale]) / 3600.0
    w.wcs.crpix = [(shape[1] - 1) / 2 + offset[1] + 1, (shape[0] - 1) / 2 + offset[0] + 1]
    w.wcs.set()
    return w


def gaussian_image(shape, center, cov, flux: float, sub: int = 5) -> np.ndarray:
    """Pixel-integrated elliptical Gaussian: covariance ``cov`` (px^2, (y, x) order)."""
    h, w = shape
    offsets = (np.arange(sub) + 0.5) / sub - 0.5
    yy = (np.arange(h)[:, None] + offsets[None, :]).ravel()
    xx = (np.arange(w)[:, None] + offsets[None, :]).ravel()
    dy = yy[:, None] - center[0]
    dx = xx[None, :] - center[1]
    inv = np.linalg.inv(cov)
    q = inv[0, 0] * dy**2 + 2 * inv[0, 1] * dy * dx + inv[1, 1] * dx**2
    img = np.exp(-0.5 * q) / (2 * np.pi * np.sqrt(np.linalg.det(cov)))
    return flux * img.reshape(h, sub, w, sub).mean(axis=(1, 3))


def ellipse_cov(sigma: float, q: float, angle: float) -> np.ndarray:
    """Covariance (px^2, (y, x)) of a Gaussian: geometric-mean ``sigma``, axis ratio ``q``."""
    a, b = sigma / np.sqrt(q), sigma * np.sqrt(q)
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    return rot @ np.diag([a**2, b**2]) @ rot.T


@dataclasses.dataclass(frozen=True)
class Component:
    """One Gaussian component: sky centre, sigma (arcsec), axis ratio, angle, fluxes."""

    coord: SkyCoord
    sigma_arcsec: float
    q: float
    angle: float
    fluxes: np.ndarray  # per band, BANDS order


@dataclasses.dataclass(frozen=True)
class Simulation:
    """A simulated pair of observations and its truth.

    ``hst`` and ``hsc`` are keyword arguments of :class:`mobs_ppl.Observation`.
    """

    hst: dict
    hsc: dict
    galaxies: list  # (bulge, disk) per galaxy
    catalog: SkyCoord  # one position per galaxy (its bulge)
    true_shift: np.ndarray  # (dy, dx), native HSC pixels
    true_fluxes: np.ndarray  # (galaxies, bands)


def _draw(wcs, shape, scale, components, psf_sigma_px, band, shift=(0.0, 0.0)):
    img = np.zeros(shape)
    for comp in components:
        x, y = wcs.world_to_pixel(comp.coord)
        centre = (float(y) + shift[0], float(x) + shift[1])
        cov = ellipse_cov(comp.sigma_arcsec / scale, comp.q, comp.angle)
        img += gaussian_image(shape, centre, cov + psf_sigma_px**2 * np.eye(2), comp.fluxes[band])
    return img


def simulate(
    seed: int,
    n_galaxies: int = 2,
    hst_size: int = 72,
    hsc_size: int = 14,
    sigma_hst: float = 0.002,
    sigma_hsc=(0.004, 0.003, 0.0025, 0.003, 0.005),
    shift_sd: float = 0.3,
    noise: bool = True,
    noise_seed: int | None = None,
    colour_gradient: bool = True,
) -> Simulation:
    """Draw one scene: ``n_galaxies`` (1 or 2) bulge + disk galaxies and a random shift.

    Parameters
    ----------
    seed : int
        Seed of the scene (galaxies, shift, HSC pointing) and, unless ``noise_seed``
        is given, of the noise.
    n_galaxies : int
        1 (centred) or 2 (0.3" apart along each axis, overlapping disks).
    hst_size, hsc_size : int
        Image sizes, pixels.
    sigma_hst, sigma_hsc : float
        Noise sd per pixel (HST; HSC per band g..y).
    shift_sd : float
        sd of the true shift per axis, native HSC pixels.
    noise : bool
        Add Gaussian noise.
    noise_seed : int, optional
        Separate seed of the noise (replicates of one scene).
    colour_gradient : bool
        ``False``: the bulge has the disk's colours (no colour gradient).
    """
    rng = np.random.default_rng(seed)
    w_hst = tan_wcs(HST_SCALE, (hst_size, hst_size))
    w_hsc = tan_wcs(HSC_SCALE, (hsc_size, hsc_size), tuple(rng.uniform(-0.5, 0.5, 2)))
    centre = w_hst.pixel_to_world((hst_size - 1) / 2, (hst_size - 1) / 2)
    galaxies, catalog = [], []
    for g in range(n_galaxies):
        off = rng.normal(0, 0.05, 2)
        if n_galaxies > 1:
            off = off + np.array([0.2, -0.22]) * (1 if g == 0 else -1)
        bulge_c = centre.spherical_offsets_by(off[1] * u.arcsec, off[0] * u.arcsec)
        d = rng.normal(0, 0.05, 2)  # disk centre offset, arcsec
        disk_c = bulge_c.spherical_offsets_by(d[1] * u.arcsec, d[0] * u.arcsec)
        total = rng.uniform(0.6, 1.4)
        bulge_fraction = rng.uniform(0.3, 0.6)
        bulge = Component(
            bulge_c,
            rng.uniform(0.04, 0.07),
            rng.uniform(0.6, 1.0),
            rng.uniform(0, np.pi),
            total * bulge_fraction * (RED if colour_gradient else BLUE),
        )
        disk = Component(
            disk_c,
            rng.uniform(0.15, 0.22),
            rng.uniform(0.4, 0.9),
            rng.uniform(0, np.pi),
            total * (1 - bulge_fraction) * BLUE,
        )
        galaxies.append((bulge, disk))
        catalog.append(bulge_c)
    shift = rng.normal(0, shift_sd, 2)
    components = [c for galaxy in galaxies for c in galaxy]
    hst_psf_px = HST_FWHM * FWHM_TO_SIGMA / HST_SCALE
    hst_img = _draw(w_hst, (hst_size, hst_size), HST_SCALE, components, hst_psf_px, 0)[None]
    hsc_img = np.stack(
        [
            _draw(
                w_hsc,
                (hsc_size, hsc_size),
                HSC_SCALE,
                components,
                HSC_FWHM[b] * FWHM_TO_SIGMA / HSC_SCALE,
                1 + b,
                shift,
            )
            for b in range(5)
        ]
    )
    sigma_hsc = np.asarray(sigma_hsc, float)
    if noise_seed is not None:
        rng = np.random.default_rng(10_000 + noise_seed)
    if noise:
        hst_img = hst_img + rng.normal(0, sigma_hst, hst_img.shape)
        hsc_img = hsc_img + rng.normal(0, 1, hsc_img.shape) * sigma_hsc[:, None, None]
    psf_hst = gaussian_image((25, 25), (12, 12), hst_psf_px**2 * np.eye(2), 1.0)
    psf_hsc = np.stack(
        [
            gaussian_image(
                (31, 31), (15, 15), (f * FWHM_TO_SIGMA / HSC_SCALE) ** 2 * np.eye(2), 1.0
            )
            for f in HSC_FWHM
        ]
    )
    hst = dict(
        data=hst_img,
        weights=np.full(hst_img.shape, sigma_hst**-2.0),
        psf=psf_hst / psf_hst.sum(),
        wcs=w_hst,
        channels=[BANDS[0]],
        name="HST",
    )
    hsc = dict(
        data=hsc_img,
        weights=np.broadcast_to(sigma_hsc[:, None, None] ** -2.0, hsc_img.shape).copy(),
        psf=psf_hsc / psf_hsc.sum(axis=(1, 2), keepdims=True),
        wcs=w_hsc,
        channels=list(BANDS[1:]),
        name="HSC",
    )
    fluxes = np.array([b.fluxes + d.fluxes for b, d in galaxies])
    return Simulation(hst, hsc, galaxies, SkyCoord(catalog), shift, fluxes)


def default_model(sim: Simulation, cores: str = "auto"):
    """The default flow's model of a simulation: catalogue -> ``init`` -> forced photometry.

    HST is the reference; HSC enters resampled to the model frame with its exact
    correlated noise (``CorrelatedObservation.from_observation``) and a free shift of
    prior sd 0.1".
    """
    import warnings

    import mobs_ppl as mp

    hst, hsc = mp.Observation(**sim.hst), mp.Observation(**sim.hsc)
    frame = mp.Frame.from_observations([hst, hsc])
    resampled = mp.CorrelatedObservation.from_observation(hsc, resample_to_frame=frame)
    scene = mp.init.from_observation(hst, frame, catalog=sim.catalog, cores=cores)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mp.MobsPplWarning)
        scene = mp.measure.forced_photometry(scene, resampled)
    return mp.SceneModel(scene, [hst, resampled], shifts={"HSC": 0.1 * u.arcsec})


@dataclasses.dataclass(frozen=True)
class SceneResult:
    """The default flow on one simulation, against its truth.

    ``z_shift``: (fitted - true) / marginal sd of the HSC shift, native pixels;
    ``z_flux``: the same per galaxy and band, with the galaxies' total fluxes.
    """

    seed: int
    groups: tuple
    converged: bool
    decrement: float
    iterations: int
    refused: str
    shift: np.ndarray
    shift_sd: np.ndarray
    true_shift: np.ndarray
    z_shift: np.ndarray
    z_flux: np.ndarray
    seconds: float


def run_scene(seed: int, cores: str = "auto", noise: bool = True) -> SceneResult:
    """Simulate a two-galaxy blend and run ``fit_map`` then ``laplace`` with defaults."""
    import time
    import warnings

    import mobs_ppl as mp

    start = time.perf_counter()
    sim = simulate(seed, n_galaxies=2, noise=noise)
    model = default_model(sim, cores=cores)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mp.MobsPplWarning)
        fit = mp.fit_map(model)
        try:
            approx = mp.laplace(model, fit)
        except ValueError as error:
            approx, refused = None, str(error)
    nan = np.full(2, np.nan)
    if approx is None:
        shift = shift_sd = nan
        z_flux = np.full(sim.true_fluxes.shape, np.nan)
    else:
        refused = ""
        shift, shift_sd = fit.shift_native("HSC"), approx.sd("shift_native")[0]
        z_flux = (np.asarray(fit.scene.fluxes()) - sim.true_fluxes) / approx.sd("flux")
    return SceneResult(
        seed=seed,
        groups=tuple(model.scene.groups),
        converged=bool(fit.converged),
        decrement=float(fit.decrement),
        iterations=int(fit.iterations),
        refused=refused,
        shift=np.asarray(shift),
        shift_sd=np.asarray(shift_sd),
        true_shift=sim.true_shift,
        z_shift=(np.asarray(shift) - sim.true_shift) / np.asarray(shift_sd),
        z_flux=z_flux,
        seconds=time.perf_counter() - start,
    )


def _run_chunk(seeds, cores, noise):
    """Worker: x64 on (a spawned process starts without it), then the scenes in turn."""
    import jax

    jax.config.update("jax_enable_x64", True)
    return [run_scene(seed, cores, noise) for seed in seeds]


def run_batch(seeds, cores: str = "auto", noise: bool = True, workers: int = 1):
    """:func:`run_scene` over ``seeds``, shared out between ``workers`` spawned processes.

    Each process is replaced after every scene: every scene has its own box sizes, so
    its own compiled functions, which a longer-lived process would keep in memory (after
    three scenes a process held ~4 GB; with the suite's two workers beside it that went
    past the 24 GB of a CI machine).
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    seeds = list(seeds)
    chunks = [[seed] for seed in seeds]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, max_tasks_per_child=1) as pool:
        parts = list(pool.map(_run_chunk, chunks, [cores] * len(chunks), [noise] * len(chunks)))
    return sorted((r for part in parts for r in part), key=lambda r: r.seed)


def summary(results) -> dict:
    """Calibration numbers of a batch: z-score sd and extremes, flux coverage."""
    ok = [r for r in results if not r.refused]
    z_shift = np.array([r.z_shift for r in ok])
    z_flux = np.concatenate([np.ravel(r.z_flux) for r in ok])
    return {
        "scenes": len(results),
        "converged": sum(r.converged for r in results),
        "refused": len(results) - len(ok),
        "shift_z_mean": z_shift.mean(axis=0),
        "shift_z_sd": z_shift.std(axis=0),
        "shift_z_max": float(np.abs(z_shift).max()),
        "flux_cover_68": float(np.mean(np.abs(z_flux) < 0.9945)),
        "flux_cover_95": float(np.mean(np.abs(z_flux) < 1.96)),
    }
