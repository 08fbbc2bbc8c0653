"""A simulated HST + HSC field with known truth, for the demo when no data is at hand.

:func:`simulated_field` draws a small blended field as a sharp single-band space image
(0.03 arcsec pixels, F814W-like) and a coarse five-band ground image (0.168 arcsec
pixels, HSC g..y-like) whose sources appear displaced by a known astrometric shift.
It needs neither files nor network, so ``mobs-ppl demo`` can run anywhere.

The images are drawn with numpy alone, not with the package's renderer: each galaxy is
a red Sersic-4 bulge plus a bluer exponential disk (so colours vary inside galaxies),
evaluated on a grid 5 times finer than the pixels, convolved by FFT with a Moffat
(ground) or Gaussian (space) PSF sampled on the same fine grid, and summed into
pixels. The PSF handed to the observation is the same fine PSF summed into native
pixels, so pixel integration is consistent between data and model.

Geometry: both images use TAN WCS sharing one tangent point with ``cd = diag(-s, s)``
(east to the left). A source at sky position ``c`` is drawn at the pixel that the
coarse image's WCS gives for ``c`` plus the shift ``(dy, dx)`` in native coarse pixels:
where sources appear minus where the WCS puts them, the convention of
:meth:`mobs_ppl.MAPResult.shift_native`.
"""

from __future__ import annotations

import dataclasses

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.wcs import WCS

from .observation import Observation

__all__ = ["SimulatedField", "simulated_field"]

_SUPERSAMPLE = 5
_TANGENT_POINT = (150.12, 2.21)  # deg; an arbitrary COSMOS-like position
_SPACE_SCALE, _GROUND_SCALE = 0.03, 0.168  # arcsec per pixel
_SPACE_FWHM = 0.09  # arcsec, Gaussian
_GROUND_FWHM = (0.80, 0.74, 0.64, 0.68, 0.76)  # arcsec per band g..y, Moffat beta = 3
_GROUND_BANDS = ("g", "r", "i", "z", "y")
# relative flux per band (F814W, g, r, i, z, y) of an old bulge and a star-forming disk
_BULGE_SED = np.array([1.0, 0.12, 0.33, 0.75, 1.0, 1.1])
_DISK_SED = np.array([1.0, 0.8, 0.9, 1.0, 1.0, 0.95])


@dataclasses.dataclass(frozen=True)
class SimulatedField:
    """A simulated pair of observations and the truth they were drawn from.

    Attributes
    ----------
    hst : Observation
        Name ``"HST"``, channel ``"F814W"``: the astrometric reference.
    hsc : Observation
        Name ``"HSC"``, channels ``"g", "r", "i", "z", "y"``.
    positions : SkyCoord
        Bulge centre of each galaxy (the disk centre is offset by up to 0.05 arcsec).
    fluxes : numpy.ndarray
        ``(galaxies, 6)`` total flux per band, order F814W, g, r, i, z, y, in data units
        summed over all pixels.
    true_shift_native : numpy.ndarray
        ``(dy, dx)`` shift of the HSC image, native HSC pixels.
    """

    hst: Observation
    hsc: Observation
    positions: SkyCoord
    fluxes: np.ndarray
    true_shift_native: np.ndarray


def _tan_wcs(scale_arcsec: float, shape: tuple[int, int], centre_offset_px) -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = list(_TANGENT_POINT)
    wcs.wcs.cd = np.diag([-scale_arcsec, scale_arcsec]) / 3600.0
    # FITS pixels are 1-based: the tangent point sits at the 0-based array centre + offset
    wcs.wcs.crpix = [
        (shape[1] - 1) / 2 + centre_offset_px[1] + 1,
        (shape[0] - 1) / 2 + centre_offset_px[0] + 1,
    ]
    wcs.wcs.set()
    return wcs


def _fine_axis(n_pixels: int) -> np.ndarray:
    """Sub-pixel centres of a fine grid, in native 0-based pixel coordinates."""
    return (np.arange(n_pixels * _SUPERSAMPLE) + 0.5) / _SUPERSAMPLE - 0.5


def _bin(fine: np.ndarray) -> np.ndarray:
    """Sum a fine image into native pixels (flux is conserved)."""
    h, w = fine.shape[0] // _SUPERSAMPLE, fine.shape[1] // _SUPERSAMPLE
    return fine.reshape(h, _SUPERSAMPLE, w, _SUPERSAMPLE).sum(axis=(1, 3))


def _sersic_on_grid(yy, xx, centre, half_light_px, axis_ratio, angle, index) -> np.ndarray:
    """Unit-flux Sersic profile sampled at fine-grid points ``yy, xx`` (native px)."""
    b = 2.0 * index - 1.0 / 3.0 + 0.009876 / index  # Prugniel & Simien (1997)
    dy, dx = yy - centre[0], xx - centre[1]
    c, s = np.cos(angle), np.sin(angle)
    major, minor = c * dx + s * dy, -s * dx + c * dy
    radius = np.sqrt(axis_ratio * major**2 + minor**2 / axis_ratio) / half_light_px
    profile = np.exp(-b * (np.maximum(radius, 1e-3) ** (1.0 / index) - 1.0))
    return profile / profile.sum()


def _psf_fine(n_pixels: int, fwhm_px: float, moffat_beta: float | None) -> np.ndarray:
    """Unit-sum PSF on a fine grid of ``n_pixels`` native pixels, centred on its middle."""
    axis = _fine_axis(n_pixels) - (n_pixels - 1) / 2
    r2 = axis[:, None] ** 2 + axis[None, :] ** 2
    if moffat_beta is None:
        sigma = fwhm_px / (2.0 * np.sqrt(2.0 * np.log(2.0)))
        image = np.exp(-0.5 * r2 / sigma**2)
    else:
        alpha = fwhm_px / (2.0 * np.sqrt(2.0 ** (1.0 / moffat_beta) - 1.0))
        image = (1.0 + r2 / alpha**2) ** (-moffat_beta)
    return image / image.sum()


def _convolve(fine_image: np.ndarray, fine_psf: np.ndarray) -> np.ndarray:
    """Linear convolution by FFT, cropped to the image (the PSF centre is its middle)."""
    h, w = fine_image.shape
    ph, pw = fine_psf.shape
    shape = (h + ph, w + pw)
    product = np.fft.irfft2(np.fft.rfft2(fine_image, shape) * np.fft.rfft2(fine_psf, shape), shape)
    y0, x0 = ph // 2, pw // 2
    return product[y0 : y0 + h, x0 : x0 + w]


def _draw(wcs, shape, galaxies, band, fine_psf, shift_px=(0.0, 0.0)) -> np.ndarray:
    yy, xx = np.meshgrid(_fine_axis(shape[0]), _fine_axis(shape[1]), indexing="ij")
    scale = wcs.proj_plane_pixel_scales()[0].to_value(u.arcsec)
    fine = np.zeros(yy.shape)
    for galaxy in galaxies:
        for part in ("bulge", "disk"):
            x, y = wcs.world_to_pixel(galaxy[f"{part}_position"])
            centre = (float(y) + shift_px[0], float(x) + shift_px[1])
            fine += galaxy[f"{part}_flux"][band] * _sersic_on_grid(
                yy,
                xx,
                centre,
                galaxy[f"{part}_radius_arcsec"] / scale,
                galaxy[f"{part}_axis_ratio"],
                galaxy[f"{part}_angle"],
                4.0 if part == "bulge" else 1.0,
            )
    return _bin(_convolve(fine, fine_psf))


def _galaxies(rng: np.random.Generator, centre: SkyCoord, n_galaxies: int) -> list[dict]:
    """Draw galaxy parameters around ``centre``: positions within +-0.8 arcsec."""
    galaxies = []
    for index in range(n_galaxies):
        offset = rng.uniform(-0.8, 0.8, 2) if index else rng.normal(0.0, 0.1, 2)
        bulge = centre.spherical_offsets_by(offset[1] * u.arcsec, offset[0] * u.arcsec)
        disk_offset = rng.normal(0.0, 0.025, 2)
        disk = bulge.spherical_offsets_by(disk_offset[1] * u.arcsec, disk_offset[0] * u.arcsec)
        total = (8.0 if index == 0 else 3.0) * rng.uniform(0.6, 1.6)
        bulge_fraction = rng.uniform(0.2, 0.6)
        galaxies.append(
            {
                "bulge_position": bulge,
                "disk_position": disk,
                "bulge_flux": total * bulge_fraction * _BULGE_SED,
                "disk_flux": total * (1.0 - bulge_fraction) * _DISK_SED,
                "bulge_radius_arcsec": rng.uniform(0.04, 0.08),
                "disk_radius_arcsec": rng.uniform(0.15, 0.3) * (1.6 if index == 0 else 1.0),
                "bulge_axis_ratio": rng.uniform(0.7, 1.0),
                "disk_axis_ratio": rng.uniform(0.4, 0.9),
                "bulge_angle": rng.uniform(0.0, np.pi),
                "disk_angle": rng.uniform(0.0, np.pi),
            }
        )
    return galaxies


def simulated_field(
    seed: int = 0,
    *,
    n_galaxies: int = 4,
    space_pixels: int = 100,
    ground_pixels: int = 22,
    space_noise: float = 0.004,
    ground_noise=(0.008, 0.006, 0.005, 0.006, 0.01),
    shift_sd_native: float = 0.3,
) -> SimulatedField:
    """Draw a blended field seen by a sharp space and a coarse ground instrument.

    Parameters
    ----------
    seed : int
        Seed of everything random: galaxies, the ground pointing, the shift and the noise.
    n_galaxies : int
        Galaxies in the field; the first is bright and near the centre, the others are
        fainter and within 0.8 arcsec of it (per axis) (so that several blend).
    space_pixels, ground_pixels : int
        Side of the square images, native pixels (0.03 and 0.168 arcsec).
    space_noise : float
        Gaussian noise sd per space pixel, data units.
    ground_noise : sequence of 5 float
        Gaussian noise sd per ground pixel in g, r, i, z, y, data units.
    shift_sd_native : float
        sd per axis of the true ground-image shift, native ground pixels.

    Returns
    -------
    SimulatedField
        The two observations (exact inverse-variance weights, unit-sum PSFs, WCS) and
        the truth.
    """
    rng = np.random.default_rng(seed)
    ground_noise = np.asarray(ground_noise, float)
    if ground_noise.shape != (len(_GROUND_BANDS),):
        raise ValueError(f"ground_noise needs one sd per band {_GROUND_BANDS}")
    space_shape = (space_pixels, space_pixels)
    ground_shape = (ground_pixels, ground_pixels)
    space_wcs = _tan_wcs(_SPACE_SCALE, space_shape, (0.0, 0.0))
    ground_wcs = _tan_wcs(_GROUND_SCALE, ground_shape, tuple(rng.uniform(-0.5, 0.5, 2)))
    centre = SkyCoord(*_TANGENT_POINT, unit="deg")
    galaxies = _galaxies(rng, centre, n_galaxies)
    shift = rng.normal(0.0, shift_sd_native, 2)

    space_psf = _psf_fine(25, _SPACE_FWHM / _SPACE_SCALE, None)
    space_image = _draw(space_wcs, space_shape, galaxies, 0, space_psf)
    space_image = space_image + rng.normal(0.0, space_noise, space_shape)
    ground_psfs = [_psf_fine(31, fwhm / _GROUND_SCALE, 3.0) for fwhm in _GROUND_FWHM]
    ground_images = np.stack(
        [
            _draw(ground_wcs, ground_shape, galaxies, 1 + band, psf, shift)
            for band, psf in enumerate(ground_psfs)
        ]
    )
    ground_images = (
        ground_images + rng.normal(0.0, 1.0, ground_images.shape) * ground_noise[:, None, None]
    )
    hst = Observation(
        space_image[None],
        weights=np.full((1, *space_shape), space_noise**-2.0),
        psf=_bin(space_psf)[None],
        wcs=space_wcs,
        channels=["F814W"],
        name="HST",
    )
    hsc = Observation(
        ground_images,
        weights=np.broadcast_to(ground_noise[:, None, None] ** -2.0, ground_images.shape),
        psf=np.stack([_bin(psf) for psf in ground_psfs]),
        wcs=ground_wcs,
        channels=list(_GROUND_BANDS),
        name="HSC",
    )
    positions = SkyCoord([g["bulge_position"] for g in galaxies])
    fluxes = np.stack([g["bulge_flux"] + g["disk_flux"] for g in galaxies])
    return SimulatedField(hst, hsc, positions, fluxes, shift)
