"""Initial scenes: one non-parametric source per detection or catalogue entry.

From one observation (:func:`from_observation`) or from joint detection in several
(:func:`from_observations`). Wherever an observation is detected on, a sequence of
observations may stand for it: several epochs of the same bands, detected on jointly
on the first one's pixels (:func:`mobs_ppl.detection.detection_image`).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence

import astropy.units as u
import numpy as np
from scipy import ndimage

from . import sky
from ._warnings import MobsPplWarning
from .detection import detect_sources, detection_image, robust_sigma
from .envelope import PEAK, Envelope
from .frame import Frame
from .measure import forced_photometry
from .psf import psf_sigma
from .scene import Scene
from .sources import GaussianSource, Source

__all__ = ["from_observation", "from_observations"]

#: Morphology values are kept this far inside (0, 1), the support of their prior.
MORPHOLOGY_MARGIN = 1e-4

#: A source's light extends over the pixels where the smoothed S/N image exceeds this.
EXTENT_SNR = 2.0

#: Largest side of a morphology box, model pixels.
MAX_BOX = 201

#: ``cores="auto"``: a source gets a core component when its light as a whole (the
#: pixels of its extent) is detected at this signal-to-noise ratio or more ...
CORE_MIN_SNR = 20.0
#: ... and its envelope's half-light radius at least this many PSF widths (Gaussian
#: sigma) of the observation.
CORE_MIN_RADIUS = 2.0
#: Width of the LogNormal prior on a core's half-light radius about its initial value
#: (the PSF's size or one pixel).
CORE_RADIUS_PRIOR_WIDTH = 0.5


@dataclasses.dataclass(frozen=True, eq=False)
class _Epochs(Sequence):
    """Several observations (epochs of the same bands) detected on as one.

    A :class:`~collections.abc.Sequence` of its members, so that
    :func:`~mobs_ppl.detection.detect_sources` and
    :func:`~mobs_ppl.detection.detection_image` combine them on the first member's
    pixels; ``psf``, ``wcs``, ``frame``, ``shape`` and ``name`` are the first member's,
    so that boxes, cores and match radii are measured on those pixels.
    """

    members: tuple

    def __getitem__(self, index):
        return self.members[index]

    def __len__(self) -> int:
        return len(self.members)

    @property
    def psf(self):
        return self.members[0].psf

    @property
    def wcs(self):
        return self.members[0].wcs

    @property
    def frame(self):
        return self.members[0].frame

    @property
    def shape(self):
        return self.members[0].shape

    @property
    def name(self):
        return self.members[0].name

    @property
    def label(self) -> str:
        """The members' names joined by ``+``, for messages."""
        return "+".join(str(m.name) for m in self.members)


def _detection_entry(entry, where: str):
    """One observation, or a sequence of them as :class:`_Epochs` (one member: itself)."""
    if isinstance(entry, _Epochs) or not isinstance(entry, Sequence) or isinstance(entry, str):
        return entry
    members = tuple(entry)
    if not members:
        raise ValueError(f"{where} is an empty group of observations: give at least one")
    for member in members:
        if isinstance(member, Sequence):
            raise ValueError(
                f"{where} holds a sequence inside a group: a group holds observations only "
                "(epochs of the same bands)"
            )
    return members[0] if len(members) == 1 else _Epochs(members)


def _members(entry) -> list:
    """The observations an entry of :func:`_detection_entry` stands for."""
    return list(entry.members) if isinstance(entry, _Epochs) else [entry]


def _label(entry) -> str:
    return entry.label if isinstance(entry, _Epochs) else entry.name


def _catalog_pixels(catalog, observation, frame):
    y, x = observation.frame.sky_to_pixel(catalog)
    y, x = np.atleast_1d(y), np.atleast_1d(x)
    ym, xm = frame.sky_to_pixel(catalog)
    ym, xm = np.atleast_1d(ym), np.atleast_1d(xm)
    _, h, w = frame.shape
    _, ho, wo = observation.shape
    inside = (ym > -0.5) & (ym < h - 0.5) & (xm > -0.5) & (xm < w - 0.5)
    inside &= (y > -0.5) & (y < ho - 0.5) & (x > -0.5) & (x < wo - 0.5)
    if not np.all(inside):
        warnings.warn(
            f"catalogue entries {np.nonzero(~inside)[0].tolist()} lie outside the model frame "
            "or the observation and were skipped",
            MobsPplWarning,
            stacklevel=3,
        )
    if not np.any(inside):
        raise ValueError("no catalogue position lies inside both the observation and the frame")
    return y[inside], x[inside]


def smoothing_width(psf_sigma: float) -> float:
    """Width (Gaussian sigma, observed pixels) of the smoothing that finds a source's light."""
    return max(1.5, 1.5 * psf_sigma)


def _extent_regions(image, centers, psf_sigma):
    """Per source, the pixels of its light: a region of the smoothed S/N image.

    The image is smoothed by a Gaussian of ``max(1.5, 1.5 psf_sigma)`` pixels, so that
    faint outskirts (a disk one sigma per pixel) rise above the noise. Each source gets
    the part of the connected region above :data:`EXTENT_SNR` times the smoothed noise
    that contains its centre and is nearer to it than to any other source; ``None``
    where its centre is below that level.

    Returns
    -------
    regions : list of ndarray of bool or None
    smooth : ndarray
        The smoothed image, in units of its own noise.
    """
    sigma = smoothing_width(psf_sigma)
    smooth = ndimage.gaussian_filter(image, sigma)
    smooth = smooth / max(robust_sigma(smooth), 1e-300)
    yy, xx = np.indices(image.shape, dtype=float)
    centers = np.asarray(centers, float).reshape(-1, 2)
    distance2 = (yy[None] - centers[:, 0, None, None]) ** 2 + (
        xx[None] - centers[:, 1, None, None]
    ) ** 2
    nearest = np.argmin(distance2, axis=0)
    above = smooth > EXTENT_SNR
    regions = []
    for k, (cy, cx) in enumerate(centers):
        iy = int(np.clip(np.round(cy), 0, image.shape[0] - 1))
        ix = int(np.clip(np.round(cx), 0, image.shape[1] - 1))
        cell = above & (nearest == k)
        labels, _ = ndimage.label(cell, structure=np.ones((3, 3)))
        regions.append(labels == labels[iy, ix] if labels[iy, ix] > 0 else None)
    return regions, smooth


def _morphology(
    image,
    smooth,
    region,
    footprint,
    own,
    center_obs,
    observation,
    frame,
    growth,
    min_box,
):
    """Initial morphology and envelope on a box of model pixels around a source.

    The box spans the source's light (its extent region and detection footprint) grown
    by ``growth``. The values are the observation's image there, scaled so that the
    peak is the envelope's (:data:`mobs_ppl.envelope.PEAK`); the envelope has the
    moments of the smoothed light, and continues the morphology smoothly outside the
    region (no edges for the fit to undo).
    """
    light = own if region is None else (region | (own & footprint))
    ys, xs = np.nonzero(light)
    jac = (
        sky.local_jacobian(observation.wcs, frame.wcs, *center_obs)
        if observation.wcs is not None
        else np.eye(2)
    )
    scale = float(np.sqrt(abs(np.linalg.det(jac))))
    fy, fx = np.nonzero(footprint & own) if np.any(footprint & own) else (ys, xs)
    half = max(
        np.abs(ys - center_obs[0]).max(),
        np.abs(xs - center_obs[1]).max(),
        0.5 * (fy.max() - fy.min() + 1),
        0.5 * (fx.max() - fx.min() + 1),
    )
    size = min(max(2 * int(np.ceil(half * growth * scale)) + 1, min_box), MAX_BOX) | 1
    grown = ndimage.binary_dilation(light, iterations=2)
    # model-frame pixel positions of the box, mapped back into the observation
    if observation.wcs is not None:
        cy, cx = frame.sky_to_pixel(observation.frame.pixel_to_sky(*center_obs))
        cy, cx = float(cy), float(cx)
    else:
        cy, cx = center_obs
    y0, x0 = int(np.round(cy)) - size // 2, int(np.round(cx)) - size // 2
    yy, xx = np.mgrid[y0 : y0 + size, x0 : x0 + size].astype(float)
    if observation.wcs is not None:
        yo, xo = sky.pixel_to_pixel(frame.wcs, observation.wcs, yy.ravel(), xx.ravel())
    else:
        yo, xo = yy.ravel(), xx.ravel()

    def on_box(values):
        return ndimage.map_coordinates(values, [yo, xo], order=1, mode="constant").reshape(
            size, size
        )

    values = on_box(np.where(grown, np.clip(image, 0, None), 0.0))
    inside = on_box(grown.astype(float)) > 0.5
    peak = values.max()
    if not peak > 0:
        values = np.exp(-0.5 * ((yy - cy) ** 2 + (xx - cx) ** 2) / (2.0 * scale) ** 2)
        inside = np.ones_like(inside)
        peak = values.max()
    values = PEAK * values / peak
    envelope = _adaptive_envelope(on_box(np.clip(smooth, 0, None)), (y0, x0), (cy, cx))
    # the smoothing (Gaussian of smoothing_width observed pixels) and the observation's
    # PSF added their variances to the moments: take them out again, so the envelope
    # describes the morphology (a Gaussian's half-light radius is 1.1774 sigma)
    psf_width = _psf_width(observation)
    blur2 = (smoothing_width(psf_width) ** 2 + psf_width**2) * scale**2
    sigma2 = (float(envelope.radius) / 1.1774) ** 2 - blur2
    radius = 1.1774 * np.sqrt(max(sigma2, (0.5 * scale) ** 2, 0.25))
    envelope = Envelope.from_values((cy, cx), radius, tuple(np.asarray(envelope.ellipticity)), 1.0)
    smooth_part = np.asarray(envelope.image((y0, x0), (size, size)))
    if psf_width * scale > COARSE_PSF * _model_psf_width(frame):
        # a coarse image shows its PSF more than the galaxy: start from the envelope,
        # on a box of COARSE_BOX_RADII half-light radii (its light's region there is the
        # PSF's extent, not the galaxy's)
        morphology = smooth_part
        new_size = max(2 * int(np.ceil(COARSE_BOX_RADII * radius)) + 1, min_box) | 1
        if new_size < size:
            cut = (size - new_size) // 2
            morphology = morphology[cut : cut + new_size, cut : cut + new_size]
            y0, x0 = y0 + cut, x0 + cut
    else:
        morphology = np.where(inside, np.maximum(values, 0.3 * smooth_part), smooth_part)
    return np.clip(morphology, MORPHOLOGY_MARGIN * PEAK, 1 - MORPHOLOGY_MARGIN), envelope, (cy, cx)


def _adaptive_envelope(image, origin, center, iterations: int = 20) -> Envelope:
    """Envelope of the Gaussian-weighted (adaptive) second moments of an image.

    Plain moments of a region's light are dominated by its outskirts, where noise that
    the region's threshold let in (and neighbours' light) inflate them; a Gaussian
    weight matched to the source (adaptive moments, as in Bernstein & Jarvis 2002)
    measures its core. For a Gaussian of ``sigma`` the weighted moments at the fixed
    point are ``sigma^2 / 2``, so the radius is scaled back by ``sqrt(2)``.
    """
    yy, xx = np.indices(image.shape, dtype=float)
    r2 = (yy + origin[0] - center[0]) ** 2 + (xx + origin[1] - center[1]) ** 2
    width2 = 4.0
    weighted = image
    for _ in range(iterations):
        weighted = image * np.exp(-0.5 * r2 / width2)
        if not weighted.sum() > 0:
            return Envelope.from_values(center, 1.1774 * np.sqrt(width2))
        moments = Envelope.from_image(weighted, origin)
        new = 2.0 * (float(moments.radius) / 1.1774) ** 2
        if abs(new - width2) < 1e-3 * width2:
            break
        width2 = min(new, 1e6)
    moments = Envelope.from_image(weighted, origin)
    return Envelope.from_values(
        center, float(moments.radius) * np.sqrt(2.0), tuple(np.asarray(moments.ellipticity))
    )


def _entries(observation, frame, catalog, image_type, n_sigma, min_area, split_peaks):
    """``(center, footprint, own)`` in the observation's pixels, one per source to make."""
    detections = detect_sources(observation, image_type, n_sigma, min_area, split_peaks=split_peaks)
    if catalog is None:
        if not detections:
            raise ValueError(
                f"no sources detected in {_label(observation)!r} at {n_sigma} sigma; lower "
                "n_sigma, or give a catalog"
            )
        return [(d.center, d.footprint, d.own) for d in detections]
    cat_y, cat_x = _catalog_pixels(catalog, observation, frame)
    radius = max(2.0 * _psf_width(observation), 2.0)
    entries = []
    for y, x in zip(cat_y, cat_x, strict=True):
        near = [d for d in detections if np.hypot(d.center[0] - y, d.center[1] - x) <= radius]
        if near:
            best = min(near, key=lambda d: np.hypot(d.center[0] - y, d.center[1] - x))
            footprint, own = best.footprint, best.own
        else:
            yy, xx = np.indices(observation.shape[1:])
            footprint = own = (yy - y) ** 2 + (xx - x) ** 2 <= (2 * radius) ** 2
        entries.append(((float(y), float(x)), footprint, own))
    return entries


#: An observation whose PSF is this many times wider than the model frame's (Gaussian
#: sigma) initialises morphologies from the envelope alone, not from its image.
COARSE_PSF = 2.0

#: Half-width of the box of a source initialised from a coarse image, in half-light
#: radii of its envelope (an exponential holds 99.97% of its light within 8).
COARSE_BOX_RADII = 8.0


def _model_psf_width(frame) -> float:
    """The model PSF's Gaussian-equivalent width, model pixels (0.5 without one)."""
    return psf_sigma(np.asarray(frame.psf)[0]) if frame.psf is not None else 0.5


def _psf_width(observation) -> float:
    """Gaussian-equivalent PSF width, the observation's pixels (1 without a PSF)."""
    return psf_sigma(np.asarray(observation.psf)) if observation.psf is not None else 1.0


def _make_sources(entries, observation, frame, box_growth, min_box) -> list[Source]:
    if not entries:
        return []
    image = detection_image(observation)
    regions, smooth = _extent_regions(image, [c for c, _, _ in entries], _psf_width(observation))
    sources = []
    for (center_obs, footprint, own), region in zip(entries, regions, strict=True):
        morph, envelope, center = _morphology(
            image,
            smooth,
            region,
            footprint,
            own,
            center_obs,
            observation,
            frame,
            box_growth,
            min_box,
        )
        sources.append(Source(np.array(center), np.ones(frame.n_channels), morph, envelope))
    return sources


def _with_cores(sources, observation, frame, cores):
    """Give resolved, bright sources a compact core component of their own colour.

    A galaxy whose colour changes across it (a red bulge in a blue disk, offset from
    its centre) cannot be one morphology times one spectrum: the fit then moves the
    shared morphology, or the astrometric shift of a coarse observation, to follow the
    colour gradient. A core component -- a compact :class:`~mobs_ppl.GaussianSource`
    at the peak, with its own spectrum -- beside the non-parametric morphology lets
    the colours differ between centre and outskirts. ``cores="auto"`` adds one where the
    data resolve a galaxy: its envelope's half-light radius is at least
    :data:`CORE_MIN_RADIUS` PSF widths and its light is detected at a signal-to-noise
    ratio of at least :data:`CORE_MIN_SNR` (measured: see ``docs/inference.md``).

    Returns
    -------
    sources : list
        The sources, each followed by its core.
    groups : list of int
        The galaxy of each source.
    """
    if cores not in ("auto", "none"):
        raise ValueError(f"cores must be 'auto' or 'none'; got {cores!r}")
    if cores == "none":
        return sources, list(range(len(sources)))
    image = detection_image(observation)
    psf_width = _psf_width(observation)
    centers = []
    for source in sources:
        center = np.asarray(source.center)
        if observation.wcs is not None:
            yo, xo = sky.pixel_to_pixel(frame.wcs, observation.wcs, center[:1], center[1:])
            centers.append((float(yo[0]), float(xo[0])))
        else:
            centers.append((float(center[0]), float(center[1])))
    regions, _ = _extent_regions(image, centers, psf_width)
    out, groups = [], []
    for g, (source, region, (yo, xo)) in enumerate(zip(sources, regions, centers, strict=True)):
        out.append(source)
        groups.append(g)
        jac = (
            sky.local_jacobian(observation.wcs, frame.wcs, yo, xo)
            if observation.wcs is not None
            else np.eye(2)
        )
        scale = float(np.sqrt(abs(np.linalg.det(jac))))  # model pixels per observed pixel
        # S/N of the source's light as a whole, as a matched filter would measure it:
        # sqrt(sum of the squared S/N per pixel), less the noise's own share (one per
        # pixel), so that it does not depend on how many pixels the region holds
        snr = 0.0
        if region is not None:
            snr = float(np.sqrt(max(np.sum(image[region] ** 2) - region.sum(), 0.0)))
        radius = float(source.envelope.radius) / scale  # observed pixels
        if snr < CORE_MIN_SNR or radius < CORE_MIN_RADIUS * psf_width:
            continue
        center = np.asarray(source.center)
        core_radius = max(1.2 * psf_width, 1.0) * scale  # half-light radius, model pixels
        out.append(
            GaussianSource(
                center,
                np.asarray(source.spectrum),
                core_radius,
                box_size=2 * int(np.ceil(6 * core_radius)) + 1,
                radius_prior_width=CORE_RADIUS_PRIOR_WIDTH,
            )
        )
        groups.append(g)
    return out, groups


def _measure_spectra(scene: Scene, observations) -> Scene:
    """Spectra by forced photometry in every observation, in turn.

    Each observation fills its own channels of the sources it sees; channels that no
    observation measured for a source get a small positive placeholder, 1e-3 of the
    channel's median measured amplitude (of all measured amplitudes for a channel no
    observation has), because spectra must stay positive.
    """
    measured = np.zeros((len(scene.sources), scene.frame.n_channels), bool)
    for observation in observations:
        mapping = scene.frame.map_channels(observation.frame)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MobsPplWarning)
            scene, amplitudes, _ = forced_photometry(scene, observation, return_covariance=True)
        seen = np.all(np.isfinite(amplitudes), axis=1)
        measured[np.ix_(seen, list(mapping))] = True
    spectra = np.stack([np.asarray(s.spectrum) for s in scene.sources])
    if np.all(measured):
        return scene
    overall = np.median(spectra[measured])
    placeholder = [
        1e-3 * (np.median(column[seen]) if np.any(seen) else overall)
        for column, seen in zip(spectra.T, measured.T, strict=True)
    ]
    spectra = np.where(measured, spectra, np.array(placeholder)[None, :])
    return scene.replace_sources(
        [s.with_spectrum(spectrum) for s, spectrum in zip(scene.sources, spectra, strict=True)]
    )


def from_observation(
    observation,
    frame: Frame,
    catalog=None,
    image_type: str = "space",
    n_sigma: float = 5.0,
    min_area: int = 4,
    split_peaks: bool = False,
    box_growth: float = 1.5,
    min_box: int = 11,
    cores: str = "auto",
) -> Scene:
    """A scene with one source per detection (or per catalogue entry) in an observation.

    Parameters
    ----------
    observation : Observation or CorrelatedObservation, or a sequence of them
        Data to detect on (typically the sharpest, e.g. HST). A sequence (several
        epochs of the same bands, each with a WCS) is detected on jointly, on the first
        member's pixels (:func:`mobs_ppl.detection.detection_image`); the first
        member's PSF and pixels give the morphologies, boxes and cores, and every
        member measures the spectra (as in :func:`from_observations`).
    frame : Frame
        The model frame.
    catalog : SkyCoord, optional
        Known source positions: one source per entry inside the frame, with the
        footprint of the nearest detection within two PSF widths, or a compact one
        where nothing was detected.
    image_type : {"space", "ground"}
        Wavelet scales adapted to the PSF (see :mod:`mobs_ppl.detection`).
    n_sigma, min_area, split_peaks :
        Detection settings (see :func:`mobs_ppl.detection.detect_sources`).
    box_growth : float
        Morphology boxes are this many times the footprint's extent, so that the fit
        can reach the faint outskirts that deeper data show.
    min_box : int
        Smallest box side, model pixels.
    cores : {"auto", "none"}
        ``"auto"``: resolved, bright galaxies get a compact core component with a
        spectrum of its own, beside their non-parametric morphology, so that colour
        gradients do not bias the fit (see :func:`_with_cores`); ``"none"``: one
        source per galaxy.

    Returns
    -------
    Scene
        Centres from the peaks, morphologies from the detection footprints and the
        extent of the light (values strictly inside (0, 1), drawn about an envelope:
        :mod:`mobs_ppl.envelope`), spectra from forced photometry in the
        observation's channels and a small positive placeholder in the frame's other
        channels (fill those with :func:`mobs_ppl.measure.forced_photometry`). A galaxy
        with a core is a group of two sources (``scene.groups``).

    See Also
    --------
    from_observations : sources from several observations (those only coarser data see).
    """
    observation = _detection_entry(observation, "observation")
    entries = _entries(observation, frame, catalog, image_type, n_sigma, min_area, split_peaks)
    sources = _make_sources(entries, observation, frame, box_growth, min_box)
    sources, groups = _with_cores(sources, observation, frame, cores)
    return _measure_spectra(Scene(frame, sources, groups), _members(observation))


def from_observations(
    observations,
    frame: Frame,
    image_types,
    catalog=None,
    match_radius=None,
    n_sigma: float = 5.0,
    min_area: int = 4,
    split_peaks: bool = False,
    box_growth: float = 1.5,
    min_box: int = 11,
    cores: str = "auto",
) -> Scene:
    """A scene from joint detection in several observations.

    The first observation (typically the sharpest) gives the sources as in
    :func:`from_observation`; each later one adds the sources it detects farther than
    ``match_radius`` from every source so far -- galaxies outside the first image, or
    too faint or too diffuse in it -- with morphologies from its own image. Spectra come
    from forced photometry in every observation (each fills its own channels, blended
    sources solved together); a source an observation does not see keeps a small
    positive placeholder there.

    An entry may be a group of observations (several epochs of the same bands, e.g.
    ``[hst, [hsc1, hsc2]]``): it is detected on jointly, on the pixels of its first
    member, where the weighted sums of all its members add up
    (:func:`mobs_ppl.detection.detection_image`), so that sources too faint for any one
    epoch are found. The first member stands for the group otherwise (its PSF, WCS
    and pixels give morphologies, boxes, cores and the match radius); every member
    measures the spectra in its channels, in turn, as a separate entry would (with
    shared channels the last member's amplitudes remain).

    Parameters
    ----------
    observations : sequence of (Observation, CorrelatedObservation, or a sequence of them)
        Data to detect on, each with a WCS; native (not resampled) observations detect
        best. A group (list or tuple) of one observation is that observation.
    frame : Frame
        The model frame.
    image_types : str or sequence of {"space", "ground"}
        Wavelet scales of each entry's detection (one value for all, or one per entry of
        ``observations``, group or not), e.g. ``["space", "ground"]`` for HST then HSC;
        a group's scales follow its first member's PSF.
    catalog : SkyCoord, optional
        Known positions, used on the first entry (see :func:`from_observation`).
    match_radius : astropy Quantity (angle), optional
        A later detection within this distance of an existing source is the same
        source. Default: two PSF widths (Gaussian sigma) of that later entry (of its
        first member, on its pixels).
    n_sigma, min_area, split_peaks, box_growth, min_box, cores :
        As in :func:`from_observation`, for every entry.

    Returns
    -------
    Scene
        The first entry's sources, then the added ones in entry order.

    Raises
    ------
    ValueError
        For no entries, an empty group, a group inside a group, a number of
        ``image_types`` other than one or one per entry, or an observation without a WCS.
    """
    observations = [
        _detection_entry(entry, f"observations[{k}]") for k, entry in enumerate(observations)
    ]
    if not observations:
        raise ValueError("from_observations needs at least one observation")
    if isinstance(image_types, str):
        image_types = [image_types] * len(observations)
    image_types = list(image_types)
    if len(image_types) != len(observations):
        raise ValueError(
            f"{len(image_types)} image_types for {len(observations)} observations: give one "
            "per observation, or a single value"
        )
    for observation in (m for entry in observations for m in _members(entry)):
        if observation.wcs is None:
            raise ValueError(
                f"observation {observation.name!r} has no WCS: joint detection places the "
                "sources of different observations on the sky"
            )
    first = observations[0]
    entries = _entries(first, frame, catalog, image_types[0], n_sigma, min_area, split_peaks)
    sources = _make_sources(entries, first, frame, box_growth, min_box)
    origin = [first] * len(sources)
    _, height, width = frame.shape
    for observation, image_type in zip(observations[1:], image_types[1:], strict=True):
        if match_radius is None:
            scale = observation.frame.pixel_scale.to_value(u.arcsec)
            radius = 2.0 * _psf_width(observation) * scale
        else:
            radius = u.Quantity(match_radius).to_value(u.arcsec)
        known = frame.pixel_to_sky(*np.array([np.asarray(s.center) for s in sources]).T)
        detections = detect_sources(
            observation, image_type, n_sigma, min_area, split_peaks=split_peaks
        )
        new = []
        for d in detections:
            position = observation.frame.pixel_to_sky(*d.center)
            if np.min(position.separation(known).to_value(u.arcsec)) <= radius:
                continue
            y, x = frame.sky_to_pixel(position)
            if not (-0.5 <= float(y) < height - 0.5 and -0.5 <= float(x) < width - 0.5):
                continue
            new.append((d.center, d.footprint, d.own))
        added = _make_sources(new, observation, frame, box_growth, min_box)
        sources += added
        origin += [observation] * len(added)
    components, groups = [], []
    for g, (source, observation) in enumerate(zip(sources, origin, strict=True)):
        parts, _ = _with_cores([source], observation, frame, cores)
        components += parts
        groups += [g] * len(parts)
    every = [m for entry in observations for m in _members(entry)]
    return _measure_spectra(Scene(frame, components, groups), every)
