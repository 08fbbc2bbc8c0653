"""Simulated HST + HSC scenes for the inference tests and the calibration benchmark.

Two kinds of simulation live here.

* :func:`simulate_galsim_scene` draws a blend of galaxies directly with GalSim, an
  independent renderer: one HST-like band (0.03"/px, narrow Gaussian PSF) and five
  HSC-like bands (0.168"/px, Moffat PSFs), the HSC image displaced by a known shift.
  The model is then only approximately right (its own pixel integration, boxes and
  PSF matching), which is what a recovery test should face.
* :class:`CalibrationProblem` simulates from the package's own forward model, the
  NumPyro program itself with ``observed=False``: the likelihood is then exactly
  right, so the coverage of posterior intervals tests the sampler and the priors
  alone. Its scenes share one structure (only data and true values change), so every
  step is compiled once and reused for all scenes.

Geometry (both kinds): astropy TAN WCS sharing a tangent point, ``cd = diag(-s, s)``
(east to the left, so pixel ``x`` grows westward), the tangent point at pixel
``centre + offset`` (0-based ``(y, x)``). A GalSim image of ``n x n`` pixels with
``scale=s`` puts a profile at its true centre ``((n - 1) / 2, (n - 1) / 2)`` (0-based)
plus ``offset=(x_off, y_off)``; we draw every galaxy at the pixel that the astropy WCS
gives for its sky position, plus the shift for HSC, so the two conventions cannot
disagree (``test_galsim_point_source_lands_on_the_wcs_position`` checks it). Shifts are
``(dy, dx)`` in native pixels: where sources appear minus where the WCS puts them.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

import astropy.units as u
import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import numpyro.handlers as handlers
from astropy.wcs import WCS
from numpyro.distributions import constraints
from numpyro.infer import MCMC, NUTS
from numpyro.infer.util import log_density

import mobs_ppl as mp
from mobs_ppl.curvature import inverse_metric
from mobs_ppl.psf import gaussian_psf

HST_SCALE = 0.03  # arcsec per pixel
HSC_SCALE = 0.168
HST_BAND = "F814W"
HSC_BANDS = ("g", "r", "i", "z", "y")
BANDS = (HST_BAND, *HSC_BANDS)
CRVAL = (150.0, 2.2)  # tangent point (deg)
HST_PSF_FWHM = 0.08  # arcsec, Gaussian
HSC_PSF_FWHM = (0.76, 0.72, 0.64, 0.68, 0.74)  # arcsec, Moffat, g..y
MOFFAT_BETA = 3.5
MOFFAT_TRUNC = 2.4  # arcsec: inside the 31-pixel HSC PSF stamp
HST_PSF_SIZE = 25
HSC_PSF_SIZE = 31


def tan_wcs(scale: float, shape: Sequence[int], offset=(0.0, 0.0)) -> WCS:
    """TAN WCS of a ``shape = (height, width)`` grid, north up and east left.

    The tangent point (``CRVAL``) sits at 0-based pixel ``((h - 1) / 2 + offset[0],
    (w - 1) / 2 + offset[1])``.
    """
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = list(CRVAL)
    wcs.wcs.cd = np.diag([-scale, scale]) / 3600.0
    wcs.wcs.crpix = [(shape[1] - 1) / 2 + offset[1] + 1, (shape[0] - 1) / 2 + offset[0] + 1]
    wcs.wcs.set()
    return wcs


# -- GalSim scenes ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Galaxy:
    """A galaxy of the GalSim simulation.

    Attributes
    ----------
    hst_yx : (float, float)
        Position ``(y, x)`` in pixels of the HST image (0-based); the sky position is
        what the HST WCS gives for it.
    fluxes : tuple of float
        Total flux per band, in the order of :data:`BANDS`.
    hlr : float
        Half-light radius, arcsec.
    shear : (float, float)
        GalSim reduced shear ``(g1, g2)`` in the image's ``(x, y)`` axes.
    sersic_n : float or None
        Sérsic index; ``None`` for a Gaussian.
    """

    hst_yx: tuple[float, float]
    fluxes: tuple[float, ...]
    hlr: float
    shear: tuple[float, float] = (0.0, 0.0)
    sersic_n: float | None = None

    def profile(self, flux: float):
        """The GalSim profile (before any PSF) with a given total flux."""
        import galsim

        if self.sersic_n is None:
            prof = galsim.Gaussian(half_light_radius=self.hlr, flux=flux)
        else:
            prof = galsim.Sersic(n=self.sersic_n, half_light_radius=self.hlr, flux=flux)
        return prof.shear(g1=self.shear[0], g2=self.shear[1])

    @property
    def model_ellipticity(self) -> tuple[float, float]:
        """The shear in the convention of ``mp.GaussianSource`` (same axes, opposite sign).

        Our sources distort coordinates by the inverse of the shear matrix of ``g`` in
        ``(x, y)``, which stretches along ``y`` for ``g1 > 0``; GalSim's ``g1 > 0``
        stretches along ``x``. Both frames have ``x`` along columns and ``y`` along rows.
        """
        return (-self.shear[0], -self.shear[1])


#: Three blended galaxies around the centre of a 100 x 100 HST image (3" x 3").
DEFAULT_GALAXIES = (
    Galaxy((46.0, 42.0), (60.0, 6.0, 9.0, 12.0, 14.0, 13.0), 0.15, (0.15, -0.1), 1.0),
    Galaxy((55.0, 58.5), (40.0, 2.0, 3.5, 5.0, 7.0, 8.0), 0.12, (-0.1, 0.15)),
    Galaxy((61.5, 41.0), (30.0, 5.0, 5.0, 4.0, 4.0, 3.0), 0.10, (0.05, 0.2)),
)


def hst_psf_profile():
    """GalSim HST-like PSF: Gaussian of FWHM :data:`HST_PSF_FWHM`."""
    import galsim

    return galsim.Gaussian(fwhm=HST_PSF_FWHM)


def hsc_psf_profile(band: int):
    """GalSim HSC-like PSF of band index ``band`` (0 = g): a truncated Moffat."""
    import galsim

    return galsim.Moffat(beta=MOFFAT_BETA, fwhm=HSC_PSF_FWHM[band], trunc=MOFFAT_TRUNC)


def psf_image(profile, scale: float, size: int) -> np.ndarray:
    """PSF image (pixel-integrated, as GalSim draws galaxies) centred on the stamp."""
    return profile.drawImage(nx=size, ny=size, scale=scale).array.copy()


def galsim_pixel_position(wcs: WCS, coord, shift=(0.0, 0.0)) -> tuple[float, float]:
    """0-based pixel ``(y, x)`` where a sky position is drawn, shift included."""
    x, y = wcs.world_to_pixel(coord)
    return float(y) + shift[0], float(x) + shift[1]


def draw_galsim(profiles, coords, wcs, shape, scale, psf, shift=(0.0, 0.0)) -> np.ndarray:
    """Image of profiles at sky positions, each convolved with ``psf``, drawn by GalSim.

    Parameters
    ----------
    profiles : sequence of galsim.GSObject
        Profiles before the PSF (arcsec units).
    coords : sequence of SkyCoord
        Their sky positions.
    wcs : WCS
        The image's astropy WCS (its pixel scale must be ``scale``, axes unrotated).
    shape : (int, int)
        Image shape ``(height, width)``.
    scale : float
        Pixel scale, arcsec.
    psf : galsim.GSObject
        The PSF.
    shift : (float, float)
        ``(dy, dx)`` pixels added to every WCS position.
    """
    import galsim

    image = galsim.ImageD(shape[1], shape[0], scale=scale)
    centre_x, centre_y = (shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0
    for profile, coord in zip(profiles, coords, strict=True):
        y, x = galsim_pixel_position(wcs, coord, shift)
        galsim.Convolve(profile, psf).drawImage(
            image=image, offset=(x - centre_x, y - centre_y), add_to_image=True
        )
    return image.array.copy()


@dataclasses.dataclass(frozen=True)
class GalSimScene:
    """A simulated HST + HSC blend and its truth.

    Attributes
    ----------
    hst, hsc : mp.Observation
        The observations (data, weights, PSF images, WCS).
    galaxies : tuple of Galaxy
        The truth.
    coords : list of SkyCoord
        Sky position of every galaxy.
    true_shift : ndarray
        ``(dy, dx)`` of the HSC image, HSC pixels.
    sigma_hst, sigma_hsc : float
        Noise standard deviations.
    """

    hst: mp.Observation
    hsc: mp.Observation
    galaxies: tuple
    coords: list
    true_shift: np.ndarray
    sigma_hst: float
    sigma_hsc: float

    @property
    def true_fluxes(self) -> np.ndarray:
        """``(galaxies, bands)`` true total fluxes, in the order of :data:`BANDS`."""
        return np.array([g.fluxes for g in self.galaxies], float)

    def scaled_hst(self, factor: float) -> GalSimScene:
        """The same scene with the HST data in other units (data x factor, weights / f^2)."""
        hst = mp.Observation(
            np.asarray(self.hst.data) * factor,
            weights=np.asarray(self.hst.weights) / factor**2,
            psf=np.asarray(self.hst.psf),
            wcs=self.hst.wcs,
            channels=self.hst.channels,
            name=self.hst.name,
        )
        return dataclasses.replace(self, hst=hst, sigma_hst=self.sigma_hst * factor)


def simulate_galsim_scene(
    seed: int = 0,
    galaxies: Sequence[Galaxy] = DEFAULT_GALAXIES,
    hst_size: int = 100,
    hsc_size: int = 18,
    true_shift=(0.3, -0.2),
    hsc_offset=(0.13, -0.21),
    sigma_hst: float = 0.02,
    sigma_hsc: float = 0.006,
) -> GalSimScene:
    """Draw the HST and HSC images of ``galaxies`` with GalSim and add Gaussian noise.

    Parameters
    ----------
    seed : int
        Seed of the noise.
    galaxies : sequence of Galaxy
        The truth (positions in HST pixels).
    hst_size, hsc_size : int
        Square image sizes, pixels.
    true_shift : (float, float)
        ``(dy, dx)`` displacement of the HSC image, HSC pixels.
    hsc_offset : (float, float)
        Sub-pixel offset of the HSC tangent point from its image centre, HSC pixels,
        so that the two grids are not aligned.
    sigma_hst, sigma_hsc : float
        Noise standard deviation per pixel (weights are ``sigma ** -2``).
    """
    rng = np.random.default_rng(seed)
    w_hst = tan_wcs(HST_SCALE, (hst_size, hst_size))
    w_hsc = tan_wcs(HSC_SCALE, (hsc_size, hsc_size), hsc_offset)
    coords = [w_hst.pixel_to_world(g.hst_yx[1], g.hst_yx[0]) for g in galaxies]
    shift = tuple(float(s) for s in true_shift)

    hst_clean = draw_galsim(
        [g.profile(g.fluxes[0]) for g in galaxies],
        coords,
        w_hst,
        (hst_size, hst_size),
        HST_SCALE,
        hst_psf_profile(),
    )[None]
    hsc_clean = np.stack(
        [
            draw_galsim(
                [g.profile(g.fluxes[1 + b]) for g in galaxies],
                coords,
                w_hsc,
                (hsc_size, hsc_size),
                HSC_SCALE,
                hsc_psf_profile(b),
                shift,
            )
            for b in range(len(HSC_BANDS))
        ]
    )
    hst = mp.Observation(
        hst_clean + rng.normal(0.0, sigma_hst, hst_clean.shape),
        weights=sigma_hst**-2,
        psf=psf_image(hst_psf_profile(), HST_SCALE, HST_PSF_SIZE),
        wcs=w_hst,
        channels=[HST_BAND],
        name="HST",
    )
    hsc = mp.Observation(
        hsc_clean + rng.normal(0.0, sigma_hsc, hsc_clean.shape),
        weights=sigma_hsc**-2,
        psf=np.stack([psf_image(hsc_psf_profile(b), HSC_SCALE, HSC_PSF_SIZE) for b in range(5)]),
        wcs=w_hsc,
        channels=list(HSC_BANDS),
        name="HSC",
    )
    return GalSimScene(
        hst=hst,
        hsc=hsc,
        galaxies=tuple(galaxies),
        coords=coords,
        true_shift=np.array(shift),
        sigma_hst=sigma_hst,
        sigma_hsc=sigma_hsc,
    )


def initial_sources(sim: GalSimScene, frame: mp.Frame, seed: int = 1):
    """Model sources started a little off the truth, with placeholder spectra.

    Centres move by ~0.5 model pixel, radii by 10% and ellipticities shrink by a third;
    Gaussians are modelled by :class:`mp.GaussianSource`, Sérsic profiles by
    :class:`mp.SersicSource` (index started 10% off). The spectra are ones: they are
    measured from the data by :func:`initial_scene`.
    """
    rng = np.random.default_rng(seed)
    sources = []
    ones = np.ones(len(BANDS))
    for galaxy, coord in zip(sim.galaxies, sim.coords, strict=True):
        y, x = frame.sky_to_pixel(coord)
        center = (float(y) + rng.normal(0.0, 0.5), float(x) + rng.normal(0.0, 0.5))
        radius = galaxy.hlr / HST_SCALE * 1.1
        ellipticity = tuple(2.0 / 3.0 * np.asarray(galaxy.model_ellipticity))
        if galaxy.sersic_n is None:
            sources.append(mp.GaussianSource(center, ones, radius, ellipticity))
        else:
            sources.append(
                mp.SersicSource(
                    center, ones, radius, galaxy.sersic_n * 1.1, ellipticity, oversample=3
                )
            )
    return sources


def initial_scene(sim: GalSimScene, frame: mp.Frame, observations, seed: int = 1) -> mp.Scene:
    """Initial scene: :func:`initial_sources` with spectra measured from the data.

    The spectra are the forced photometry (:func:`mp.measure.forced_photometry`) of the
    initial morphologies in every observation, so they are in the data's own units:
    nothing is rescaled by hand whatever units the data come in. (Aperture sums, which
    blending inflates up to 3x here, leave ``fit_map`` short of the MAP after 1000
    steps; the forced photometry is within 40% of the truth.)
    """
    scene = mp.Scene(frame, initial_sources(sim, frame, seed))
    for obs in observations:
        scene = mp.measure.forced_photometry(scene, obs)
    return scene


def build_model(sim: GalSimScene, shift_prior=0.1 * u.arcsec, seed: int = 1) -> mp.SceneModel:
    """The model of a GalSim scene: plain HST, resampled (correlated) HSC, HSC shifted."""
    frame = mp.Frame.from_observations([sim.hst, sim.hsc])
    hsc = mp.CorrelatedObservation.from_observation(sim.hsc, resample_to_frame=frame)
    scene = initial_scene(sim, frame, [sim.hst, hsc], seed)
    return mp.SceneModel(scene, [sim.hst, hsc], shifts={"HSC": shift_prior})


# -- Laplace approximation -------------------------------------------------------------


def laplace_covariance(model: mp.SceneModel, params: dict, sites: Sequence[str], rel_step=1e-5):
    """Covariance of ``sites`` from the curvature of the log posterior at ``params``.

    The other sites are held at their values in ``params``. The Hessian is taken in the
    constrained space (fluxes, not log-fluxes), by central differences of the exact
    gradient: second derivatives through the Sérsic ``b_n`` (the regularised incomplete
    gamma function) are not implemented in JAX, so ``jax.hessian`` cannot be used.

    Returns
    -------
    dict
        ``{site: (value, covariance block)}``, blocks of size ``value.size`` squared.
    """
    fixed = {k: v for k, v in params.items() if k not in sites}
    conditioned = handlers.condition(model, data=fixed)
    values = {k: jnp.asarray(params[k]) for k in sites}
    flat, unravel = jax.flatten_util.ravel_pytree(values)

    def neg_log_post(z):
        return -log_density(conditioned, (), {}, unravel(z))[0]

    steps = rel_step * jnp.maximum(jnp.abs(flat), 1.0)
    basis = jnp.diag(steps)
    points = jnp.concatenate([flat + basis, flat - basis])
    grads = np.asarray(jax.jit(jax.vmap(jax.grad(neg_log_post)))(points))
    n = flat.size
    hessian = (grads[:n] - grads[n:]) / (2 * np.asarray(steps)[:, None])
    hessian = 0.5 * (hessian + hessian.T)
    cov = np.linalg.inv(hessian)
    out = {}
    start = 0
    for k in sorted(values):  # the order of ravel_pytree
        size = values[k].size
        out[k] = (np.asarray(values[k]), cov[start : start + size, start : start + size])
        start += size
    return out


def laplace_sd(model: mp.SceneModel, params: dict, sites: Sequence[str]) -> dict:
    """Posterior standard deviation of every element of ``sites`` (Laplace)."""
    cov = laplace_covariance(model, params, sites)
    return {k: np.sqrt(np.diag(c)).reshape(v.shape) for k, (v, c) in cov.items()}


# -- Calibration on the model's own forward model ----------------------------------------


@dataclasses.dataclass(frozen=True)
class SceneResult:
    """Posterior summary of one calibration scene.

    Attributes
    ----------
    truth : dict
        True ``flux`` ``(sources, channels)`` and ``shift_native`` ``(2,)``.
    quantiles : dict
        Per parameter, posterior quantiles at :data:`QUANTILE_LEVELS` (leading axis).
    ranks : dict
        Per parameter, the fraction of posterior draws below the truth.
    r_hat : float
        Largest split R-hat over the sampled parameters.
    divergences : int
        Divergent transitions after warm-up.
    seed : int
        The scene's seed.
    seconds : float
        Wall-clock time of the scene (simulation, MAP and NUTS).
    """

    truth: dict
    quantiles: dict
    ranks: dict
    r_hat: float
    divergences: int
    seed: int = -1
    seconds: float = float("nan")


#: Lower/upper posterior quantiles of the central 68% and 95% intervals.
QUANTILE_LEVELS = (0.025, 0.16, 0.84, 0.975)
INTERVALS = {0.68: (1, 2), 0.95: (0, 3)}


def _tree_set(template, where, values):
    return eqx.tree_at(where, template, values)


class CalibrationProblem:
    """Repeated simulate-and-sample of small HST + HSC scenes from the model itself.

    The scene: a fine one-band image (``fine_size`` pixels of 0.03") and a coarse
    five-band image (``coarse_size`` pixels of 0.168", Gaussian PSFs of 0.64"-0.76"
    FWHM), resampled onto the model frame (:class:`mp.CorrelatedObservation`), with
    ``n_sources`` blended Gaussian galaxies. For every scene:

    1. the truth: the spectrum and the HSC shift are drawn from the model's own priors
       (``SceneModel.default_priors``), the morphologies (centre, radius, shape) at
       random near the nominal ones; they are held fixed at their true values;
    2. the data: a draw of the observed sites of the NumPyro program at the truth
       (``observed=False``), i.e. of the exact likelihood;
    3. the MAP of spectrum and shift (Levenberg-Marquardt on the NUTS potential, from
       the nominal values, so it does not know the truth);
    4. NUTS on spectrum and shift, started at the MAP, as :func:`mp.sample` does it by
       default: the morphologies conditioned, the metric the Laplace covariance at the
       MAP, held fixed while the step size adapts. Here the metric enters as a
       whitening, ``z = z_map + L u`` with ``L L^T`` the inverse Hessian of the
       potential at the MAP, and NUTS runs on ``u`` with a unit metric: the same
       sampler (NUTS is invariant under this linear map together with its metric), but
       ``z_map`` and ``L`` are arguments of one compiled program instead of constants
       of a new kernel per scene. Chains run one after the other
       (``chain_method="sequential"``).

    Simulation, MAP and NUTS are compiled once with the data and the true
    morphologies as arguments (``MCMC(jit_model_args=True)``), so only the first scene
    pays for compilation. Sources are drawn on small boxes without sub-pixel
    integration (``box_size``, ``oversample``): the data come from the same model, so
    this costs no accuracy, only time.
    """

    def __init__(
        self,
        n_sources: int = 2,
        fine_size: int = 36,
        coarse_size: int = 7,
        sigma_fine: float = 0.02,
        sigma_coarse: float = 0.01,
        num_warmup: int = 200,
        num_samples: int = 300,
        num_chains: int = 2,
        chain_method: str = "sequential",
        box_size: int | None = 21,
        oversample: int = 1,
        _verbose: bool = False,
    ):
        if n_sources not in (1, 2, 3):
            raise ValueError("n_sources must be 1, 2 or 3")
        w_fine = tan_wcs(HST_SCALE, (fine_size, fine_size))
        w_coarse = tan_wcs(HSC_SCALE, (coarse_size, coarse_size), (0.1, -0.2))
        fine_psf = gaussian_psf(HST_PSF_FWHM / 2.3548 / HST_SCALE, HST_PSF_SIZE)
        coarse_psf = np.stack([gaussian_psf(f / 2.3548 / HSC_SCALE, 15) for f in HSC_PSF_FWHM])
        self.sigma_fine, self.sigma_coarse = sigma_fine, sigma_coarse
        hst = mp.Observation(
            np.zeros((1, fine_size, fine_size)),
            weights=sigma_fine**-2,
            psf=fine_psf,
            wcs=w_fine,
            channels=[HST_BAND],
            name="HST",
        )
        hsc = mp.Observation(
            np.zeros((len(HSC_BANDS), coarse_size, coarse_size)),
            weights=sigma_coarse**-2,
            psf=coarse_psf,
            wcs=w_coarse,
            channels=list(HSC_BANDS),
            name="HSC",
        )
        frame = mp.Frame.from_observations([hst, hsc])
        cy, cx = (frame.shape[1] - 1) / 2.0, (frame.shape[2] - 1) / 2.0
        nominal = [
            ((cy + 4.0, cx - 8.0), (3.0, 0.3, 0.4, 0.5, 0.6, 0.6), 4.0),
            ((cy - 5.0, cx + 8.0), (2.0, 0.5, 0.5, 0.4, 0.3, 0.3), 3.0),
            ((cy + 10.0, cx + 9.0), (1.5, 0.2, 0.3, 0.3, 0.4, 0.4), 3.0),
        ][:n_sources]
        sources = [
            mp.GaussianSource(c, s, r, box_size=box_size, oversample=oversample)
            for c, s, r in nominal
        ]
        correlated = mp.CorrelatedObservation.from_observation(hsc, resample_to_frame=frame)
        self.template = mp.SceneModel(
            mp.Scene(frame, sources), [hst, correlated], shifts={"HSC": 0.1 * u.arcsec}
        )
        self.frame = frame
        self.n_sources = n_sources
        self.sites = ("spectrum", "shift")
        self.to_native = np.asarray(self.template.to_native["HSC"])
        self.num_chains = num_chains
        self.map_iterations = 60
        self._morph_sites = [
            f"{name}_{i}" for i in range(n_sources) for name in ("center", "radius", "shape")
        ]
        self._nominal = self.template.init_values()
        self._simulate = jax.jit(self._simulate_impl)
        self._map = jax.jit(self._map_impl)
        self._unravel = jax.flatten_util.ravel_pytree({k: self._nominal[k] for k in self.sites})[1]
        kernel = NUTS(self._whitened_model, target_accept_prob=0.8, adapt_mass_matrix=False)
        self._mcmc = MCMC(
            kernel,
            num_warmup=num_warmup,
            num_samples=num_samples,
            num_chains=num_chains,
            chain_method=chain_method,
            progress_bar=False,
            jit_model_args=True,
        )

    # -- the model with data and fixed morphologies as arguments -----------------------
    def model_with_data(self, hst_data, hsc_data) -> mp.SceneModel:
        """The template model holding other data (same observations otherwise)."""
        hsc = self.template.observations[1]
        return _tree_set(
            self.template,
            lambda m: (
                m.observations[0].data,
                m.observations[1].native.data,
                m.observations[1].data,
            ),
            (hst_data, hsc_data, hsc.resampler(hsc_data)),
        )

    def _conditioned_model(self, hst_data, hsc_data, fixed):
        model = self.model_with_data(hst_data, hsc_data)
        return handlers.condition(model, data=fixed)()

    def _simulate_impl(self, key, truth):
        model = handlers.seed(handlers.condition(self.template, data=truth), key)
        trace = handlers.trace(model).get_trace(observed=False)
        return trace["obs_HST"]["value"], trace["obs_HSC"]["value"]

    def _potential(self, z, hst_data, hsc_data, fixed):
        """Negative log density of the unconstrained ``(log spectrum, shift)``."""
        values = self._unravel(z)
        constrained = {"spectrum": jnp.exp(values["spectrum"]), "shift": values["shift"]}
        log_joint, _ = log_density(
            self._conditioned_model, (hst_data, hsc_data, fixed), {}, constrained
        )
        # log-Jacobian of spectrum = exp(z): NUTS works on this same density
        return -(log_joint + jnp.sum(values["spectrum"]))

    def _whitened_model(self, hst_data, hsc_data, fixed, location, chol):
        """NumPyro model of ``u``, with ``z = location + chol @ u`` the unconstrained
        ``(log spectrum, shift)``: the density of NUTS in ``z`` (its potential, log-Jacobian
        included), moved to ``u`` (a linear map: a constant Jacobian)."""
        n = location.shape[0]
        u = numpyro.sample("u", dist.ImproperUniform(constraints.real, (), (n,)))
        z = location + chol @ u
        values = self._unravel(z)
        constrained = {"spectrum": jnp.exp(values["spectrum"]), "shift": values["shift"]}
        with handlers.block():  # the inner program's sites stay hidden from NUTS
            log_joint, trace = log_density(
                self._conditioned_model, (hst_data, hsc_data, fixed), {}, constrained
            )
        numpyro.factor("log_density", log_joint + jnp.sum(values["spectrum"]))
        numpyro.deterministic("flux", trace["flux"]["value"])
        numpyro.deterministic("shift_native", trace["shift_native"]["value"])

    def _map_impl(self, hst_data, hsc_data, fixed):
        """Levenberg-Marquardt on the potential, from the nominal values (compiled once).

        The potential is that of NUTS (unconstrained space, log-Jacobian included), so
        this is the mode NUTS starts from; a step is kept only if it lowers the
        potential, and no step moves a log-flux or a shift by more than 2. As in the
        package's own flow (forced photometry, then the joint fit), the spectra are
        first solved for by linear least squares with the shift at zero, then
        everything is fitted together: started from spectra far from the data's, the
        joint iteration can otherwise pair the coarse image's light with the wrong
        source through a shift of a source separation, or walk a faint flux's
        logarithm towards minus infinity, and stop at a saddle point.

        Returns the MAP (flat unconstrained vector) and the Hessian of the potential.
        """

        def f(z):
            return self._potential(z, hst_data, hsc_data, fixed)

        def iterate(z0, iterations):
            def body(_, carry):
                z, fz, lam = carry
                grad = jax.grad(f)(z)
                hess = jax.hessian(f)(z)
                scale = jnp.abs(jnp.diag(hess)) + 1e-8
                step = jnp.linalg.solve(hess + lam * jnp.diag(scale), grad)
                step = step * jnp.minimum(1.0, 2.0 / (jnp.max(jnp.abs(step)) + 1e-300))
                z_new = z - step
                f_new = f(z_new)
                better = jnp.isfinite(f_new) & (f_new < fz)
                return (
                    jnp.where(better, z_new, z),
                    jnp.where(better, f_new, fz),
                    jnp.where(better, lam / 3.0, lam * 4.0),
                )

            return jax.lax.fori_loop(0, iterations, body, (z0, f(z0), 1.0))[0]

        # 1. spectra by linear least squares at zero shift (one Newton step on a
        #    quadratic), raised to half their standard error where that is below
        nominal = self._nominal["spectrum"]
        zero_shift = jnp.zeros_like(self._nominal["shift"])

        def neg_log_joint(flat_spectrum):
            values = {"spectrum": flat_spectrum.reshape(nominal.shape), "shift": zero_shift}
            log_joint, _ = log_density(
                self._conditioned_model, (hst_data, hsc_data, fixed), {}, values
            )
            return -log_joint

        f0 = nominal.ravel()
        curvature = jax.hessian(neg_log_joint)(f0)
        solution = f0 - jnp.linalg.solve(curvature, jax.grad(neg_log_joint)(f0))
        error = jnp.sqrt(jnp.diag(jnp.linalg.inv(curvature)))
        spectrum = jnp.maximum(solution, 0.5 * error).reshape(nominal.shape)
        # 2. everything together
        z0, _ = jax.flatten_util.ravel_pytree({"spectrum": jnp.log(spectrum), "shift": zero_shift})
        z = iterate(z0, self.map_iterations)
        return z, jax.hessian(f)(z)

    # -- truth, data, posterior ---------------------------------------------------------
    def draw_truth(self, rng: np.random.Generator) -> dict:
        """True values: spectrum and shift from the priors, morphologies near nominal."""
        key = jax.random.PRNGKey(int(rng.integers(2**31)))
        priors = self.template.default_priors()
        k1, k2 = jax.random.split(key)
        truth = {
            "spectrum": np.asarray(priors["spectrum"].sample(k1)),
            "shift": np.asarray(priors["shift"].sample(k2)),
        }
        for i, source in enumerate(self.template.scene.sources):
            truth[f"center_{i}"] = np.asarray(source.center) + rng.uniform(-0.5, 0.5, 2)
            truth[f"radius_{i}"] = np.asarray(float(source.radius) * rng.uniform(0.8, 1.25))
            truth[f"shape_{i}"] = rng.normal(0.0, 0.2, 2)
        return truth

    def simulate(self, truth: dict, seed: int):
        """Data ``(fine (1, h, w), coarse native (5, h, w))`` for a truth."""
        truth = {k: jnp.asarray(v) for k, v in truth.items()}
        hst, hsc = self._simulate(jax.random.PRNGKey(seed), truth)
        return np.asarray(hst), np.asarray(hsc)

    def fixed_values(self, truth: dict) -> dict:
        """The sites held at their true values (morphologies)."""
        return {k: jnp.asarray(truth[k]) for k in self._morph_sites}

    def map_estimate(self, hst_data, hsc_data, fixed) -> tuple[dict, np.ndarray]:
        """MAP of spectrum and shift (constrained values) and the Hessian of the potential."""
        z, hess = self._map(jnp.asarray(hst_data), jnp.asarray(hsc_data), fixed)
        values = self._unravel(z)
        return {"spectrum": jnp.exp(values["spectrum"]), "shift": values["shift"]}, np.asarray(hess)

    def sample(self, hst_data, hsc_data, fixed, start: dict, hess, seed: int) -> dict:
        """NUTS draws ``{site: (chains, draws, ...)}`` and the divergence count.

        ``start`` is the MAP, ``hess`` the Hessian of the potential there; the metric is
        its (positive-definite) inverse, as in :func:`mp.sample`.
        """
        location, _ = jax.flatten_util.ravel_pytree(
            {"spectrum": jnp.log(jnp.asarray(start["spectrum"])), "shift": start["shift"]}
        )
        chol = jnp.asarray(np.linalg.cholesky(inverse_metric(hess)))
        init = {"u": jnp.zeros(location.shape)}
        if self.num_chains > 1:
            init = {"u": jnp.zeros((self.num_chains, *location.shape))}
        self._mcmc.run(
            jax.random.PRNGKey(seed),
            jnp.asarray(hst_data),
            jnp.asarray(hsc_data),
            fixed,
            location,
            chol,
            init_params=init,
            extra_fields=("diverging", "num_steps"),
        )
        draws = {k: np.asarray(v) for k, v in self._mcmc.get_samples(group_by_chain=True).items()}
        diverging = int(np.sum(self._mcmc.get_extra_fields()["diverging"]))
        return draws, diverging

    def run_scene(self, seed: int) -> SceneResult:
        """Truth, data, MAP and posterior of scene number ``seed``; its summary."""
        start_time = time.perf_counter()
        rng = np.random.default_rng(seed)
        truth = self.draw_truth(rng)
        hst_data, hsc_data = self.simulate(truth, seed)
        fixed = self.fixed_values(truth)
        start, hess = self.map_estimate(hst_data, hsc_data, fixed)
        draws, divergences = self.sample(hst_data, hsc_data, fixed, start, hess, seed)
        result = summarise(
            {
                "flux": np.asarray(truth["spectrum"]),
                "shift_native": self.to_native @ np.asarray(truth["shift"])[0],
            },
            {"flux": draws["flux"], "shift_native": draws["shift_native"][:, :, 0]},
            divergences,
        )
        return dataclasses.replace(result, seed=seed, seconds=time.perf_counter() - start_time)


def split_r_hat(draws: np.ndarray) -> np.ndarray:
    """Split R-hat of ``(chains, draws, ...)`` samples, element-wise."""
    chains, n = draws.shape[:2]
    half = n // 2
    parts = np.concatenate([draws[:, :half], draws[:, half : 2 * half]], axis=0)
    means = parts.mean(axis=1)
    within = parts.var(axis=1, ddof=1).mean(axis=0)
    between = half * means.var(axis=0, ddof=1)
    var = (half - 1) / half * within + between / half
    return np.sqrt(var / np.maximum(within, 1e-300))


def summarise(truth: dict, draws: dict, divergences: int) -> SceneResult:
    """Quantiles, ranks and R-hat of ``draws`` ``{name: (chains, draws, ...)}``."""
    quantiles, ranks, r_hats = {}, {}, []
    for name, value in draws.items():
        flat = value.reshape((-1, *value.shape[2:]))
        quantiles[name] = np.quantile(flat, QUANTILE_LEVELS, axis=0)
        ranks[name] = np.mean(flat < truth[name], axis=0)
        r_hats.append(np.max(split_r_hat(value)))
    return SceneResult(
        truth=truth,
        quantiles=quantiles,
        ranks=ranks,
        r_hat=float(max(r_hats)),
        divergences=divergences,
    )


@dataclasses.dataclass(frozen=True)
class CoverageRow:
    """Coverage of one group of parameters at one interval level."""

    group: str
    level: float
    covered: int
    total: int

    @property
    def fraction(self) -> float:
        """Fraction of intervals that hold the truth."""
        return self.covered / self.total


def _groups(result: SceneResult):
    """``(group name, inside-interval booleans per level)`` of one scene."""
    out = []
    for name, q in result.quantiles.items():
        t = result.truth[name]
        inside = {level: (q[lo] <= t) & (t <= q[hi]) for level, (lo, hi) in INTERVALS.items()}
        if name == "flux":
            out.append(("flux HST", {lv: v[:, :1] for lv, v in inside.items()}))
            out.append(("flux HSC", {lv: v[:, 1:] for lv, v in inside.items()}))
        else:
            out.append(("shift HSC", inside))
    return out


def coverage(results: Sequence[SceneResult]) -> list[CoverageRow]:
    """Coverage per parameter group and pooled, at every level of :data:`INTERVALS`."""
    counts: dict = {}
    for result in results:
        for group, inside in _groups(result):
            for level, flags in inside.items():
                for key in (group, "all"):
                    c, n = counts.get((key, level), (0, 0))
                    counts[(key, level)] = (c + int(np.sum(flags)), n + int(np.size(flags)))
    order = ["flux HST", "flux HSC", "shift HSC", "all"]
    return [
        CoverageRow(g, lv, *counts[(g, lv)]) for lv in INTERVALS for g in order if (g, lv) in counts
    ]


def coverage_table(rows: Sequence[CoverageRow]) -> str:
    """Markdown table of coverage rows."""
    lines = ["| parameters | interval | covered | checks | coverage |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.group} | {r.level:.0%} | {r.covered} | {r.total} | {r.fraction:.1%} |")
    return "\n".join(lines)


def pooled(rows: Sequence[CoverageRow], level: float) -> CoverageRow:
    """The pooled (all parameters) row at ``level``."""
    return next(r for r in rows if r.group == "all" and r.level == level)


def binomial_halfwidth(level: float, n: int, n_sd: float) -> float:
    """``n_sd`` binomial standard deviations of a coverage fraction at ``level``."""
    return n_sd * float(np.sqrt(level * (1 - level) / n))


def _run_chunk(seeds: Sequence[int], config: dict) -> list[SceneResult]:
    """Worker: build a problem and run some scenes (x64 on: a spawned process has none)."""
    jax.config.update("jax_enable_x64", True)
    problem = CalibrationProblem(**config)
    out = []
    for seed in seeds:
        out.append(problem.run_scene(seed))
        if config.get("_verbose"):
            r = out[-1]
            print(f"  scene {seed}: {r.seconds:.1f} s, R-hat {r.r_hat:.3f}", flush=True)
    return out


def run_calibration(
    n_scenes: int,
    first_seed: int = 0,
    workers: int = 1,
    verbose: bool = False,
    problem: CalibrationProblem | None = None,
    **config,
):
    """Run ``n_scenes`` scenes (seeds ``first_seed, ...``) of a :class:`CalibrationProblem`.

    Scenes are independent: with ``workers > 1`` they are shared out between that many
    spawned processes (one per core), each compiling its own problem once. With one
    worker, ``problem`` (already compiled) may be given instead of ``config``.

    Returns
    -------
    results : list of SceneResult
        Ordered by seed.
    rows : list of CoverageRow
        :func:`coverage` of the results.
    """
    seeds = list(range(first_seed, first_seed + n_scenes))
    config = {**config, "_verbose": verbose}
    if problem is not None:
        if workers > 1 or len(config) > 1:
            raise ValueError("a given problem runs in this process, with its own settings")
        results = [problem.run_scene(seed) for seed in seeds]
    elif workers <= 1:
        results = _run_chunk(seeds, config)
    else:
        chunks = [seeds[i::workers] for i in range(workers)]
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            parts = list(pool.map(_run_chunk, chunks, [config] * workers))
        results = sorted((r for part in parts for r in part), key=lambda r: r.seed)
    return results, coverage(results)


__all__ = [
    "BANDS",
    "CalibrationProblem",
    "CoverageRow",
    "DEFAULT_GALAXIES",
    "Galaxy",
    "GalSimScene",
    "HSC_BANDS",
    "HSC_SCALE",
    "HST_BAND",
    "HST_SCALE",
    "SceneResult",
    "binomial_halfwidth",
    "build_model",
    "coverage",
    "coverage_table",
    "draw_galsim",
    "galsim_pixel_position",
    "initial_scene",
    "initial_sources",
    "laplace_covariance",
    "laplace_sd",
    "pooled",
    "run_calibration",
    "simulate_galsim_scene",
    "summarise",
    "tan_wcs",
]
