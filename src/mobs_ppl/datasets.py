"""Example data sets: the COSMOS field seen by HST and HSC, and one HSC blend.

The field is a small public COSMOS cut-out imaged by HST ACS in F814W (0.03 arcsec
pixels) and by Subaru HSC in g, r, i, z, y (0.168 arcsec pixels), as redistributed in
the test data of the MIT-licensed scarlet repository. :func:`load_cosmos` turns the
four FITS files into two ready :class:`~mobs_ppl.Observation` objects.
:func:`load_hsc_blend` reads a single-instrument HSC blend of the same provenance (one
``.npz`` file in ``hsc_blends/``) into an observation and its catalogue.

Where the files are found, in this order:

1. the ``data_dir`` argument: a directory holding ``cosmos_hst_hsc/``, or that folder
   itself;
2. the environment variable ``MOBS_PPL_DATA_DIR`` (same two forms);
3. a user cache (``pooch.os_cache("mobs_ppl")``), into which the files are downloaded
   once, unless ``download=False``.

Wherever they come from, the files are checked against their known SHA-256 hashes
(:data:`COSMOS_FILES`) before they are read; a mismatch raises :class:`DataFileError`
naming the file and both hashes. Files of your own (another cut-out under the same
names) need the check turned off: ``verify=False``, or the environment variable
``MOBS_PPL_VERIFY_DATA=0``. A truncated or unreadable FITS file raises
:class:`DataFileError` naming it, checked or not.
"""

from __future__ import annotations

import logging
import os
import pathlib

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from .observation import Observation, estimate_weights
from .psf import psf_center

__all__ = [
    "COSMOS_FILES",
    "DATA_DIR_ENV",
    "VERIFY_ENV",
    "HSC_BLEND_FILE",
    "HSC_BLEND_MASK_BITS",
    "DataFileError",
    "cosmos_files",
    "load_cosmos",
    "load_hsc_blend",
]

logger = logging.getLogger(__name__)

#: Environment variable naming the data directory (the folder holding ``cosmos_hst_hsc/``).
DATA_DIR_ENV = "MOBS_PPL_DATA_DIR"

#: Environment variable that turns the hash check off when set to ``0`` (or ``false``,
#: ``no``, ``off``); the ``verify`` argument wins over it.
VERIFY_ENV = "MOBS_PPL_VERIFY_DATA"

#: Name of the folder that holds the COSMOS files.
COSMOS_FOLDER = "cosmos_hst_hsc"

#: The four COSMOS files and their SHA-256 hashes.
COSMOS_FILES = {
    "Cut_HSC.fits": "d54772cd0d3e79e794269e2cec7a6f5659d9295fc199328a125ebbc8b591fb2b",
    "Cut_HST.fits": "7d9cee2c99175489104567d4a52b8423b56ece3235ff8d9257008e502dfacbba",
    "PSF_HSC.fits": "de1206236ff9628829d26aa43eddf9aab49c0b3ff83eb689340d7aab43e1f454",
    "PSF_HST.fits": "8d3a000d6871c74b4124389738a2f70345fa7e4d4bd7099d73b0b6e4aa86b379",
}

#: Where the files are downloaded from (public, MIT-licensed scarlet repository).
COSMOS_URL = "https://github.com/pmelchior/scarlet/raw/master/data/test_resampling/"

#: Band names of the HSC cube, in the order of its first array axis.
HSC_BANDS = ("g", "r", "i", "z", "y")

_HOW_TO_PROVIDE = (
    f"pass data_dir=... (a directory holding {COSMOS_FOLDER}/, or that folder itself) "
    f"or set the environment variable {DATA_DIR_ENV} to such a directory"
)


class DataFileError(OSError, ValueError):
    """A data file is not the expected one: wrong content (hash) or unreadable FITS.

    Both an ``OSError`` (the file on disk is bad, like a failed download) and a
    ``ValueError``.
    """


def _verify_wanted(verify: bool | None) -> bool:
    """``verify`` if given, else whether ``MOBS_PPL_VERIFY_DATA`` leaves the check on."""
    if verify is not None:
        return bool(verify)
    return os.environ.get(VERIFY_ENV, "").strip().lower() not in {"0", "false", "no", "off"}


def _verify(paths: dict[str, pathlib.Path], source: str) -> dict[str, pathlib.Path]:
    """Raise :class:`DataFileError` unless every file has its known SHA-256 hash."""
    import pooch

    for name, path in paths.items():
        found = pooch.file_hash(str(path), alg="sha256")
        if found != COSMOS_FILES[name]:
            raise DataFileError(
                f"COSMOS file {str(path)!r} ({source}) is not the expected file: its SHA-256 "
                f"is {found}, expected {COSMOS_FILES[name]} (truncated, altered or another "
                "file). Replace it with the original (a cached copy: delete it and it is "
                f"downloaded again), or, for files of your own, turn the check off with "
                f"verify=False or {VERIFY_ENV}=0"
            )
    return paths


def _cache_dir() -> pathlib.Path:
    """Folder of the user cache that receives downloaded COSMOS files."""
    import pooch

    return pathlib.Path(pooch.os_cache("mobs_ppl")) / COSMOS_FOLDER


def _cosmos_folder(root: pathlib.Path, source: str) -> pathlib.Path:
    """The folder with the COSMOS files under ``root`` (``root/cosmos_hst_hsc`` or ``root``)."""
    root = pathlib.Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data directory {str(root)!r} ({source}) does not exist")
    nested = root / COSMOS_FOLDER
    return nested if nested.is_dir() else root


def _check_folder(folder: pathlib.Path, source: str) -> dict[str, pathlib.Path]:
    paths = {name: folder / name for name in COSMOS_FILES}
    for name, path in paths.items():
        if not path.is_file():
            raise FileNotFoundError(
                f"COSMOS file {name!r} not found in {str(folder)!r} ({source}); the folder "
                f"must hold {', '.join(COSMOS_FILES)}"
            )
    return paths


def _fetch(cache: pathlib.Path) -> dict[str, pathlib.Path]:
    """Download (or verify) the COSMOS files in ``cache``; pooch checks the hashes."""
    import pooch

    registry = {name: f"sha256:{digest}" for name, digest in COSMOS_FILES.items()}
    store = pooch.create(path=cache, base_url=COSMOS_URL, registry=registry)
    return {name: pathlib.Path(store.fetch(name)) for name in COSMOS_FILES}


def cosmos_files(
    data_dir=None, *, download: bool = True, verify: bool | None = None
) -> dict[str, pathlib.Path]:
    """Locate (or download) the four COSMOS FITS files.

    Parameters
    ----------
    data_dir : str or path-like, optional
        A directory holding ``cosmos_hst_hsc/``, or that folder itself. By default the
        environment variable ``MOBS_PPL_DATA_DIR`` is used when set, and otherwise the
        user cache ``pooch.os_cache("mobs_ppl")``.
    download : bool
        Whether files missing from the user cache may be downloaded (hash-checked).
        Files already in the cache are used either way; a given ``data_dir`` or
        ``MOBS_PPL_DATA_DIR`` is never downloaded into.
    verify : bool, optional
        Check every file against its known SHA-256 hash (:data:`COSMOS_FILES`). By
        default on, unless the environment variable ``MOBS_PPL_VERIFY_DATA`` is ``0``;
        turn it off for files of your own. Downloads are always checked (by pooch).

    Returns
    -------
    dict
        File name (``"Cut_HST.fits"``, ``"Cut_HSC.fits"``, ``"PSF_HST.fits"``,
        ``"PSF_HSC.fits"``) to absolute path.

    Raises
    ------
    FileNotFoundError
        If the given directory does not exist or lacks a file (the message names it),
        or if nothing is found and ``download`` is false.
    DataFileError
        If a file found locally does not have its known hash (and ``verify`` is on).
    OSError
        If the download fails (no network, server error, or a hash mismatch).
    """
    check = _verify if _verify_wanted(verify) else lambda paths, source: paths
    if data_dir is not None:
        folder = _cosmos_folder(pathlib.Path(data_dir), "data_dir argument")
        return check(_check_folder(folder, "data_dir argument"), "data_dir argument")
    env = os.environ.get(DATA_DIR_ENV, "").strip()
    if env:
        source = f"environment variable {DATA_DIR_ENV}"
        folder = _cosmos_folder(pathlib.Path(env), source)
        return check(_check_folder(folder, source), source)
    cache = _cache_dir()
    if not download:
        if all((cache / name).is_file() for name in COSMOS_FILES):
            return check({name: cache / name for name in COSMOS_FILES}, "user cache")
        raise FileNotFoundError(
            f"COSMOS data not found (no data_dir, {DATA_DIR_ENV} unset, nothing in the "
            f"cache {str(cache)!r}) and download=False: {_HOW_TO_PROVIDE}, or allow the "
            "download (download=True, needs network access)"
        )
    try:
        return _fetch(cache)
    except (OSError, ValueError) as err:  # requests' errors are OSErrors; bad hash: ValueError
        raise OSError(
            f"could not download the COSMOS data from {COSMOS_URL} into {str(cache)!r} "
            f"({type(err).__name__}: {err}); instead {_HOW_TO_PROVIDE}"
        ) from err


def _read(path: pathlib.Path, hdu: int | None = 0) -> tuple[np.ndarray, fits.Header]:
    """One HDU of a FITS file as a native-endian float64 array, with its header.

    ``hdu`` is the HDU's index (default: the primary one), or ``None`` for the first
    HDU that holds an image. Raises :class:`DataFileError` naming the file if it is not
    FITS, has no such HDU or image, or is shorter than its header declares.
    """
    bad = f"{str(path)!r} is not a readable FITS image"
    try:
        with fits.open(path, memmap=False) as hdul:
            if hdu is None:
                hdu = next((i for i, h in enumerate(hdul) if h.data is not None), 0)
            if not 0 <= hdu < len(hdul):
                raise DataFileError(
                    f"{bad}: it has {len(hdul)} HDUs (0 to {len(hdul) - 1}), not HDU {hdu}"
                )
            needed = hdul.fileinfo(hdu)["datLoc"] + hdul[hdu].size
            size = os.path.getsize(path)
            if size < needed:
                raise DataFileError(
                    f"{bad}: the file is truncated ({size} bytes; its header declares "
                    f"{needed}). Replace it with a complete copy"
                )
            if hdul[hdu].data is None:
                where = "primary HDU" if hdu == 0 else f"HDU {hdu}"
                raise DataFileError(f"{bad}: its {where} holds no image")
            data = np.array(hdul[hdu].data, dtype=np.float64)
            header = hdul[hdu].header.copy()
    except DataFileError:
        raise
    except (OSError, ValueError, TypeError, IndexError) as err:
        raise DataFileError(f"{bad} ({type(err).__name__}: {err})") from None
    return data, header


def _prepare_psf(psf: np.ndarray, name: str) -> np.ndarray:
    """Normalise each PSF band to unit sum and roll its peak onto the array centre.

    The roll is by whole pixels and only where the peak is more than half a pixel from
    the centre ``((h - 1) / 2, (w - 1) / 2)``: the same rule as
    :func:`mobs_ppl.psf.check_psf`, so the result passes it silently.
    """
    stack = psf if psf.ndim == 3 else psf[None]
    out = []
    for c, image in enumerate(stack):
        image = image / image.sum()
        peak = np.array(np.unravel_index(np.argmax(image), image.shape), float)
        offset = peak - np.array(psf_center(image))
        roll = np.where(np.abs(offset) > 0.5 + 1e-9, np.round(offset), 0).astype(int)
        if np.any(roll != 0):
            logger.info("%s PSF band %d: peak rolled by %s pixels to the centre", name, c, -roll)
            image = np.roll(image, tuple(-roll), axis=(0, 1))
        out.append(image)
    return np.stack(out)


def load_cosmos(
    data_dir=None, *, download: bool = True, verify: bool | None = None
) -> tuple[Observation, Observation]:
    """The COSMOS field as two ready observations: HST F814W and HSC g, r, i, z, y.

    Parameters
    ----------
    data_dir : str or path-like, optional
        A directory holding ``cosmos_hst_hsc/`` (e.g. the shared ``data/`` folder), or
        that folder itself. By default ``MOBS_PPL_DATA_DIR``, then the user cache, into
        which the files are downloaded once (see :func:`cosmos_files`).
    download : bool
        Allow downloading the files (about 0.6 MB, SHA-256 checked) when they are not
        found locally.
    verify : bool, optional
        Check the files' SHA-256 hashes wherever they were found (default: on, unless
        ``MOBS_PPL_VERIFY_DATA=0``); see :func:`cosmos_files`.

    Returns
    -------
    hst : Observation
        Name ``"HST"``, channel ``"F814W"``, data ``(1, 250, 250)`` in the image's units
        (counts per 0.03 arcsec pixel), PSF ``(1, 179, 179)``.
    hsc : Observation
        Name ``"HSC"``, channels ``"g", "r", "i", "z", "y"``, data ``(5, 50, 50)`` in the
        image's units (counts per 0.168 arcsec pixel), PSF ``(5, 31, 31)``.

    Notes
    -----
    - Data are read as float64 (JAX keeps them float64 when ``jax_enable_x64`` is on and
      stores them as float32 otherwise); non-finite pixels are masked.
    - Weights are inverse variances, one per band, in 1 / data units squared, estimated
      from the background with :func:`mobs_ppl.estimate_weights` (clipped robust sigma;
      about 4.7 for HST and 0.89, 0.54, 0.23, 0.22, 0.39 for HSC g..y). No weight maps
      ship with the field; the HST image is a drizzled coadd whose pixel noise is
      correlated, which these independent-pixel weights do not describe.
    - PSFs are divided by their sum per band (the HSC ones sum to about 0.997) and the
      HST PSF, whose peak is one pixel off the array centre in both axes, is rolled by
      whole pixels so that its peak sits at the centre; no warning is emitted.
    - WCS come from the FITS headers; the HSC header describes a 3-D cube with two
      celestial axes, of which the celestial part is kept.

    Raises
    ------
    FileNotFoundError
        If the files cannot be found (the message says how to provide them).
    DataFileError
        If a file does not have its known hash (with ``verify``), or is not a readable
        FITS image (e.g. truncated).
    OSError
        If a download was needed and failed.
    """
    paths = cosmos_files(data_dir, download=download, verify=verify)
    observations = []
    for instrument, channels in (("HST", ("F814W",)), ("HSC", HSC_BANDS)):
        data, header = _read(paths[f"Cut_{instrument}.fits"])
        psf, _ = _read(paths[f"PSF_{instrument}.fits"])
        if data.ndim == 2:
            data = data[None]
        if data.shape[0] != len(channels):
            raise ValueError(
                f"{paths[f'Cut_{instrument}.fits']} has {data.shape[0]} bands, "
                f"expected {len(channels)} ({', '.join(channels)})"
            )
        bad = ~np.isfinite(data)
        observations.append(
            Observation(
                data,
                weights=estimate_weights(data),
                psf=_prepare_psf(psf, instrument),
                wcs=WCS(header).celestial,
                channels=list(channels),
                name=instrument,
                mask=bad if bad.any() else None,
            )
        )
    hst, hsc = observations
    return hst, hsc


#: Folder and name of the HSC blend file, and its SHA-256 hash.
HSC_BLEND_FOLDER = "hsc_blends"
HSC_BLEND_FILE = "hsc_cosmos_35.npz"
HSC_BLEND_SHA256 = "d829803f7896698e394cbc7ab78b54d8845587243154d09420c44bb1425c754e"

#: HSC pixel scale, arcsec per pixel.
HSC_PIXEL_SCALE = 0.168

#: Tangent point (RA, Dec in degrees) of the local WCS given to the HSC blend, which
#: ships without one: a nominal COSMOS position, not the blend's true one.
HSC_BLEND_TANGENT_POINT = (150.12, 2.21)

#: Mask planes of the HSC (LSST science pipelines) bit mask that mark unusable pixels:
#: ``{plane: bit}``. Pixels with any of these bits get zero weight. The other planes
#: present in the file (DETECTED, CROSSTALK and coadd book-keeping bits) are
#: informational and cover most pixels, sources included.
HSC_BLEND_MASK_BITS = {
    "BAD": 0,
    "SAT": 1,
    "INTRP": 2,
    "CR": 3,
    "EDGE": 4,
    "SUSPECT": 7,
    "NO_DATA": 8,
}


def _hsc_blend_path(data_dir, verify: bool | None) -> pathlib.Path:
    """The HSC blend file from ``data_dir`` or ``MOBS_PPL_DATA_DIR``, hash-checked."""
    if data_dir is not None:
        root, source = pathlib.Path(data_dir).expanduser(), "data_dir argument"
    else:
        env = os.environ.get(DATA_DIR_ENV, "").strip()
        if not env:
            raise FileNotFoundError(
                f"HSC blend data not found: pass data_dir=... (a directory holding "
                f"{HSC_BLEND_FOLDER}/{HSC_BLEND_FILE}, that folder, or the file itself) or "
                f"set the environment variable {DATA_DIR_ENV} to such a directory"
            )
        root, source = pathlib.Path(env).expanduser(), f"environment variable {DATA_DIR_ENV}"
    candidates = [root / HSC_BLEND_FOLDER / HSC_BLEND_FILE, root / HSC_BLEND_FILE, root]
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        raise FileNotFoundError(
            f"HSC blend file {HSC_BLEND_FILE!r} not found in {str(root)!r} ({source}); "
            f"expected {HSC_BLEND_FOLDER}/{HSC_BLEND_FILE} below it"
        )
    if _verify_wanted(verify):
        import pooch

        found = pooch.file_hash(str(path), alg="sha256")
        if found != HSC_BLEND_SHA256:
            raise DataFileError(
                f"HSC blend file {str(path)!r} ({source}) is not the expected file: its "
                f"SHA-256 is {found}, expected {HSC_BLEND_SHA256}. For files of your own, "
                f"turn the check off with verify=False or {VERIFY_ENV}=0"
            )
    return path


def _local_wcs(shape: tuple[int, int]) -> WCS:
    """North-up, east-left TAN WCS at the HSC pixel scale, centred on the image."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = list(HSC_BLEND_TANGENT_POINT)
    wcs.wcs.cd = np.diag([-HSC_PIXEL_SCALE, HSC_PIXEL_SCALE]) / 3600.0
    wcs.wcs.crpix = [(shape[1] + 1) / 2, (shape[0] + 1) / 2]  # FITS pixels start at 1
    wcs.wcs.set()
    return wcs


def load_hsc_blend(
    data_dir=None,
    *,
    mask_planes=tuple(HSC_BLEND_MASK_BITS),
    verify: bool | None = None,
):
    """One HSC blend (g, r, i, z, y) as an observation, with its catalogue of sources.

    Parameters
    ----------
    data_dir : str or path-like, optional
        A directory holding ``hsc_blends/hsc_cosmos_35.npz`` (e.g. the shared
        ``data/`` folder), that folder, or the file itself. By default the environment
        variable ``MOBS_PPL_DATA_DIR``. Nothing is downloaded.
    mask_planes : sequence of str
        Planes of the HSC bit mask (keys of :data:`HSC_BLEND_MASK_BITS`) whose pixels
        get zero weight; by default all of them (here: cosmic-ray tracks interpolated
        over, INTRP and CR, a few percent of the pixels per band). ``()`` uses every
        pixel.
    verify : bool, optional
        Check the file's SHA-256 hash (default: on, unless ``MOBS_PPL_VERIFY_DATA=0``).

    Returns
    -------
    observation : Observation
        Name ``"HSC"``, channels ``"g", "r", "i", "z", "y"``, data ``(5, 58, 48)`` in
        the file's units (per 0.168 arcsec pixel), weights ``1 / variance`` from the
        file's variance maps (zero where masked or where the variance is not positive),
        PSF ``(5, 43, 43)``.
    catalog : astropy.coordinates.SkyCoord
        The file's 7 catalogue positions (pixel ``x``, ``y`` = array column, row),
        through the observation's WCS: ``observation.frame.sky_to_pixel(catalog)``
        gives them back as ``(y, x)``.

    Notes
    -----
    The file carries no WCS. The observation gets a local, north-up TAN WCS at the
    HSC pixel scale, centred on the image at the nominal position
    :data:`HSC_BLEND_TANGENT_POINT`: sky positions are right *relative* to each other
    (frames, catalogues, plots), not for matching against other surveys. The mask
    planes are read with the standard bit layout of the LSST/HSC pipelines
    (:data:`HSC_BLEND_MASK_BITS`).

    Raises
    ------
    FileNotFoundError
        If the file is not found (the message says where it was looked for).
    DataFileError
        If the file does not have its known hash (with ``verify``).
    KeyError
        For an unknown mask plane.
    """
    from astropy.coordinates import SkyCoord

    path = _hsc_blend_path(data_dir, verify)
    with np.load(path) as npz:
        images = np.asarray(npz["images"], float)
        variance = np.asarray(npz["variance"], float)
        bits = np.asarray(npz["mask"], np.int64)
        psfs = np.asarray(npz["psfs"], float)
        channels = [str(band) for band in npz["filters"]]
        catalog = npz["catalog"]
    unknown = set(mask_planes) - set(HSC_BLEND_MASK_BITS)
    if unknown:
        raise KeyError(f"unknown mask planes {sorted(unknown)}; known: {list(HSC_BLEND_MASK_BITS)}")
    flags = sum(1 << HSC_BLEND_MASK_BITS[plane] for plane in mask_planes)
    good = np.isfinite(variance) & (variance > 0)
    weights = np.where(good, 1.0 / np.where(good, variance, 1.0), 0.0)
    wcs = _local_wcs(images.shape[1:])
    observation = Observation(
        images,
        weights=weights,
        psf=_prepare_psf(psfs, "HSC"),
        wcs=wcs,
        channels=channels,
        name="HSC",
        mask=((bits & flags) != 0) | ~np.isfinite(images),
    )
    coords = SkyCoord(wcs.pixel_to_world(catalog["x"], catalog["y"]))
    return observation, coords
