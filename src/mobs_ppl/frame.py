"""Pixel grids on the sky: the ``Frame`` container and relations between frames.

A frame is a pixel grid ``(channels, height, width)`` with a celestial WCS, channel
names and a PSF image in its own pixels. Every observation has one (``obs.frame``);
the model frame on which scenes are described is built from several observations by
:meth:`Frame.from_observations`.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping, Sequence

import astropy.units as u
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from astropy.wcs import WCS

from . import fourier, sky
from ._checks import check_choice
from .psf import check_psf, gaussian_psf

__all__ = [
    "Frame",
    "relative_jacobian",
    "overlap_fraction",
    "centre_separation",
    "MIN_MODEL_PSF_SIGMA",
    "MAX_FRAME_PIXELS",
    "CHANNEL_MODES",
]

#: How :meth:`Frame.from_observations` joins the channels of several observations:
#: ``"separate"`` gives every observation's channels their own model channels (names
#: must then differ), ``"shared"`` lets the observations whose channel names match (after
#: ``channel_map``) see one model channel.
CHANNEL_MODES = ("separate", "shared")

#: Largest model frame (pixels per channel) that :meth:`Frame.from_observations` builds
#: unless asked for more: 10^4 x 10^4 pixels, a 5' field at HST's 0.03"/px, larger
#: than any scene a pixel-level joint fit models. One float64 channel of it is 0.8 GB,
#: the renderer's zero-padded complex spectrum as much again, and a gradient keeps
#: several such arrays per channel: a few bands fill the memory of one accelerator.
MAX_FRAME_PIXELS = 100_000_000


#: Smallest width (model pixels) of the Gaussian model PSF. Its Fourier amplitude at
#: the Nyquist frequency is exp(-pi^2 sigma^2 / 2) = 0.09 at sigma = 0.7: the model
#: is then band-limited to about 10% at Nyquist, so little aliasing enters the model.
MIN_MODEL_PSF_SIGMA = 0.7

#: Candidate widths (model pixels) tried for the model PSF, narrowest first.
_SIGMA_GRID = np.arange(MIN_MODEL_PSF_SIGMA, 3.0 + 1e-9, 0.05)


def _model_psf_sigma(frames, base_wcs) -> float:
    """Widest Gaussian (model pixels) that no observation's PSF is sharper than.

    For every observation and every frequency ``k`` it can see (its own band,
    ``|J^T k| <= 1/2``) the model PSF must satisfy ``|P_model(k)| >= |P_obs(k)|``: then
    the PSF-matching transfer ``P_obs / P_model`` never amplifies a frequency, and its
    gradients stay well conditioned. A narrower model PSF is always allowed, so the
    widest such Gaussian (but at least ``MIN_MODEL_PSF_SIGMA``) is chosen.
    """
    freq = np.fft.fftfreq(64)
    ky, kx = np.meshgrid(freq, freq, indexing="ij")
    ratios = []
    for f in frames:
        if f.psf is None:
            continue
        h, w = f.shape[1:]
        jac = sky.local_jacobian(f.wcs, base_wcs, (h - 1) / 2.0, (w - 1) / 2.0)
        band = (np.abs(jac[0, 0] * ky + jac[1, 0] * kx) <= 0.5) & (
            np.abs(jac[0, 1] * ky + jac[1, 1] * kx) <= 0.5
        )
        for image in np.asarray(f.psf):
            ratios.append((np.abs(fourier.image_transform(image, freq, freq, jac)), band))
    best = MIN_MODEL_PSF_SIGMA
    for sigma in _SIGMA_GRID:
        model = np.abs(fourier.image_transform(gaussian_psf(sigma), freq, freq))
        if all(np.all(p[band] <= model[band] * (1 + 1e-3) + 1e-6) for p, band in ratios):
            best = float(sigma)
        else:
            break
    return best


def overlap_fraction(frame_a: Frame, frame_b: Frame) -> float:
    """Fraction of ``frame_a``'s sky footprint that lies inside ``frame_b``'s.

    The outline of ``frame_a`` (its outer pixel edges, traced through the WCS) is mapped
    into ``frame_b``'s pixels and clipped to its grid; the ratio of the areas is returned.
    Zero means the two share no sky: an observation's astrometric shift is then not
    constrained by the others (nothing is seen by both).

    Parameters
    ----------
    frame_a, frame_b : Frame
        Frames (or anything with a ``frame``, e.g. observations) with a celestial WCS.

    Returns
    -------
    float
        In ``[0, 1]``.
    """
    frame_a, frame_b = getattr(frame_a, "frame", frame_a), getattr(frame_b, "frame", frame_b)
    ring_y, ring_x = sky.pixel_ring(*frame_a.shape[1:])
    y, x = sky.pixel_to_pixel(frame_a._require_wcs(), frame_b._require_wcs(), ring_y, ring_x)
    if not (np.all(np.isfinite(y)) and np.all(np.isfinite(x))):
        return 0.0  # part of it does not project onto frame_b's plane: far apart
    total = sky.polygon_area(y, x)
    if total == 0:
        return 0.0
    inside = sky.clip_to_grid(y, x, *frame_b.shape[1:])
    return float(min(sky.polygon_area(*inside) / total, 1.0))


def centre_separation(frame_a: Frame, frame_b: Frame) -> u.Quantity:
    """Angle on the sky between the centres of two frames (arcsec)."""
    frame_a, frame_b = getattr(frame_a, "frame", frame_a), getattr(frame_b, "frame", frame_b)
    a = frame_a.pixel_to_sky((frame_a.shape[1] - 1) / 2.0, (frame_a.shape[2] - 1) / 2.0)
    b = frame_b.pixel_to_sky((frame_b.shape[1] - 1) / 2.0, (frame_b.shape[2] - 1) / 2.0)
    return a.separation(b).to(u.arcsec)


def _unconnected(frames) -> list[int]:
    """Indices of the frames not joined to the first by a chain of shared sky."""
    joined, todo = {0}, [0]
    while todo:
        i = todo.pop()
        for j in range(len(frames)):
            if j not in joined and overlap_fraction(frames[i], frames[j]) > 0:
                joined.add(j)
                todo.append(j)
    return [j for j in range(len(frames)) if j not in joined]


def _apart_message(frames, names, lonely: list[int]) -> str:
    """Which observations share no sky with the others, and how far apart they lie."""
    others = [i for i in range(len(frames)) if i not in lonely]
    i = lonely[0]
    seps = [centre_separation(frames[i], frames[j]) for j in others]
    k = int(np.argmin([s.value for s in seps]))
    sep = seps[k]
    return (
        f"the observations do not overlap on the sky: {[names[j] for j in lonely]} "
        "share no sky with "
        f"{[names[j] for j in others]}: the centre of {names[i]} is "
        f"{sep.to_value(u.arcsec):.4g} arcsec ({sep.to_value(u.deg):.3g} deg) from that "
        f"of {names[others[k]]}"
    )


class Frame(eqx.Module):
    """A pixel grid on the sky with channels and a PSF.

    Parameters
    ----------
    shape : tuple of int
        ``(channels, height, width)``.
    wcs : astropy.wcs.WCS, optional
        Celestial WCS of the grid (a third, spectral axis is dropped). Needed whenever
        two frames are related.
    channels : sequence of str, optional
        Channel (band) names, unique; default ``("0", "1", ...)``.
    psf : array_like, optional
        PSF image ``(h, w)`` or ``(channels, h, w)`` in this frame's pixels, normalised
        to one and centred on the array centre (fixed with a warning otherwise).
        ``None`` means the images are not convolved beyond what the frame itself holds.
    channel_map : mapping, optional
        ``{observation channel name: channel of this frame}`` for observations whose
        bands carry other names than the model's (e.g. ``{"HSC-i": "i"}``): the one
        place where an observation's channel names are translated into the model's
        (:meth:`channel_of`, :meth:`channel_indices`, :meth:`map_channels`). Every
        target must be a channel of this frame; a name that is itself a channel of
        this frame cannot be mapped.
    """

    shape: tuple[int, int, int] = eqx.field(static=True)
    # compared by value (sky.WCSKey), so that equal frames reuse compiled functions
    wcs_key: sky.WCSKey | None = eqx.field(static=True)
    channels: tuple[str, ...] = eqx.field(static=True)
    psf: jax.Array | None
    # ((observation channel name, channel of this frame), ...), sorted
    channel_map: tuple[tuple[str, str], ...] = eqx.field(static=True)

    def __init__(self, shape, wcs=None, channels=None, psf=None, channel_map=None):
        shape = tuple(int(s) for s in shape)
        if len(shape) == 2:
            shape = (1, *shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"shape must be (channels, height, width); got {shape}")
        self.shape = shape
        wcs = sky.celestial_wcs(wcs)
        self.wcs_key = None if wcs is None else sky.WCSKey(wcs)
        if channels is None:
            channels = tuple(str(i) for i in range(shape[0]))
        if isinstance(channels, str):
            channels = (channels,)
        channels = tuple(str(c) for c in channels)
        if len(channels) != shape[0]:
            raise ValueError(
                f"{len(channels)} channel names {channels} for {shape[0]} channels of data"
            )
        if len(set(channels)) != len(channels):
            raise ValueError(f"channel names must be unique; got {channels}")
        self.channels = channels
        self.psf = None if psf is None else jnp.asarray(check_psf(psf, shape[0]))
        self.channel_map = _check_channel_map(channel_map, channels)

    @property
    def key(self) -> tuple:
        """What makes two frames the same grid to render into (hashable; set-up time).

        Shape, WCS (by value), channels and model PSF (by its bytes).
        """
        psf = None
        if self.psf is not None:
            array = np.ascontiguousarray(np.asarray(self.psf))
            psf = (array.shape, array.dtype.str, hashlib.sha1(array.tobytes()).hexdigest())
        return (self.shape, self.wcs_key, self.channels, self.channel_map, psf)

    @property
    def wcs(self) -> WCS | None:
        """Celestial WCS of the grid (``None`` when the frame has none)."""
        return None if self.wcs_key is None else self.wcs_key.wcs

    @property
    def n_channels(self) -> int:
        """Number of channels."""
        return self.shape[0]

    @property
    def pixel_scale(self) -> u.Quantity:
        """Mean pixel scale (arcsec per pixel); requires a WCS."""
        return sky.pixel_scale(self._require_wcs())

    def _require_wcs(self) -> WCS:
        if self.wcs is None:
            raise ValueError(
                "this frame has no WCS: give wcs=... to relate it to other frames or to the sky"
            )
        return self.wcs

    def channel_of(self, name: str) -> str:
        """The model channel that an observation's channel ``name`` is (by ``channel_map``)."""
        return dict(self.channel_map).get(name, name)

    def channel_indices(self, other: Frame) -> tuple[int, ...]:
        """Index in this frame of every channel of ``other`` (through ``channel_map``).

        Raises
        ------
        ValueError
            If a channel of ``other`` is not in this frame.
        """
        names = [self.channel_of(c) for c in other.channels]
        missing = [c for c, n in zip(other.channels, names, strict=True) if n not in self.channels]
        if missing:
            raise ValueError(
                f"channels {missing} of the observation are not in the model frame "
                f"{self.channels}; build the frame from this observation too (or map them "
                "to the model's channels with channel_map)"
            )
        return tuple(self.channels.index(n) for n in names)

    def map_channels(self, other: Frame) -> dict[int, int]:
        """Channels shared with another frame, by name (through ``channel_map``).

        Returns
        -------
        dict
            ``{index in this frame: index in other}`` for every channel of this frame
            that ``other`` also has (under its own or a mapped name).
        """
        out = {}
        for j, c in enumerate(other.channels):
            name = self.channel_of(c)
            if name in self.channels:
                out.setdefault(self.channels.index(name), j)
        return dict(sorted(out.items()))

    def pixel_to_sky(self, y, x):
        """Sky position (``SkyCoord``) of pixel coordinates ``(y, x)`` of this frame."""
        return self._require_wcs().pixel_to_world(np.asarray(x, float), np.asarray(y, float))

    def sky_to_pixel(self, coord) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates ``(y, x)`` of a ``SkyCoord`` in this frame."""
        x, y = self._require_wcs().world_to_pixel(coord)
        return np.asarray(y, float), np.asarray(x, float)

    def footprint(self, wcs: WCS) -> tuple[float, float, float, float]:
        """Bounding box ``(ymin, ymax, xmin, xmax)`` of this frame in pixels of ``wcs``.

        The box encloses the pixel edges (not only the centres) of this frame.
        """
        ys, xs = sky.pixel_edges(*self.shape[1:])
        yt, xt = sky.pixel_to_pixel(self._require_wcs(), wcs, ys, xs)
        return float(yt.min()), float(yt.max()), float(xt.min()), float(xt.max())

    @classmethod
    def from_observations(
        cls,
        observations: Sequence,
        coverage: str = "union",
        psf=None,
        max_pixels: int = MAX_FRAME_PIXELS,
        channels: str = "separate",
        channel_map: Mapping[str, str] | None = None,
    ) -> Frame:
        """Model frame for a set of observations.

        Parameters
        ----------
        observations : sequence of Observation (or Frame)
            Each must have a celestial WCS.
        coverage : {"union", "intersection"}
            The frame covers the bounding box of all footprints, or their common box.
        psf : array_like, optional
            Model PSF image in model pixels. By default a pixel-integrated circular
            Gaussian, the widest (at least 0.7 model pixels) whose Fourier amplitude
            is nowhere below that of any observation's PSF within the band that
            observation sees, so that PSF matching never amplifies noise.
        max_pixels : int
            Largest frame (pixels per channel) built; see :data:`MAX_FRAME_PIXELS`.
        channels : {"separate", "shared"}
            ``"separate"`` (default): the observations' channels are concatenated, and
            their names must differ. ``"shared"``: observations whose channel names
            match (after ``channel_map``) see one model channel, so one spectrum entry
            per source is constrained by all of them (several epochs of a survey, two
            visits of one camera). Sharing asserts that the bands are the same
            (bandpass and flux units up to a calibration, see ``calibrations`` of
            :class:`~mobs_ppl.SceneModel`), hence not the default.
        channel_map : mapping, optional
            With ``channels="shared"``: ``{observation channel name: model channel}``
            for bands named differently in different observations, e.g.
            ``{"HSC-i": "i"}`` when another observation names that band ``"i"``. Every
            target must be a channel name that some observation has unmapped.

        Returns
        -------
        Frame
            Pixels of the finest observation (its WCS orientation and grid, extended
            to the requested coverage); channels in order of first appearance (input
            order), with ``channel_map`` kept so that every observation finds its
            channels (:meth:`channel_indices`).

        Raises
        ------
        ValueError
            If the observations do not all share sky (each must overlap another, in a
            chain) for ``coverage="intersection"``, if the frame would have more
            than ``max_pixels`` pixels per channel, if channel names repeat with
            ``channels="separate"``, or if ``channel_map`` names a channel no
            observation has or maps to one that is not a model channel.

        Warns
        -----
        UserWarning
            For ``coverage="union"`` of observations that do not all share sky: the
            frame spans the gap between them, and their astrometric shifts are not
            constrained by each other (the message gives the separation).
        """
        frames = [getattr(o, "frame", o) for o in observations]
        names = [getattr(o, "name", None) or f"#{i}" for i, o in enumerate(observations)]
        # repeated names (e.g. the default "observation") get their position
        names = [f"{n} #{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]
        if not frames:
            raise ValueError("from_observations needs at least one observation")
        if coverage not in ("union", "intersection"):
            raise ValueError(f"coverage must be 'union' or 'intersection', got {coverage!r}")
        check_choice("channels", channels, CHANNEL_MODES)
        model_channels, kept_map = _joined_channels(frames, names, channels, channel_map)
        for f, name in zip(frames, names, strict=True):
            if f.wcs is None:
                raise ValueError(
                    f"observation {name} has no WCS: a model frame for several "
                    "observations needs each one's celestial WCS"
                )
        lonely = _unconnected(frames)
        if lonely and coverage == "intersection":
            raise ValueError(
                f"{_apart_message(frames, names, lonely)}, so their intersection is "
                "empty; give observations of the same field, or check their WCS"
            )
        if lonely:
            warnings.warn(
                f"{_apart_message(frames, names, lonely)}: the union frame spans the gap "
                "between them, and no source is seen by both (their shifts are "
                "unconstrained); model the fields separately, or check their WCS",
                UserWarning,
                stacklevel=2,
            )
        scales = [f.pixel_scale.to_value(u.arcsec) for f in frames]
        finest = frames[int(np.argmin(scales))]
        base = finest.wcs
        boxes = np.array([f.footprint(base) for f in frames])
        if coverage == "union":
            lo_y, hi_y = boxes[:, 0].min(), boxes[:, 1].max()
            lo_x, hi_x = boxes[:, 2].min(), boxes[:, 3].max()
        else:
            lo_y, hi_y = boxes[:, 0].max(), boxes[:, 1].min()
            lo_x, hi_x = boxes[:, 2].max(), boxes[:, 3].min()
        # pixel i spans [i - 0.5, i + 0.5]; keep pixels that overlap the box, ignoring
        # slivers below 1e-6 pixels that come from rounding in the WCS arithmetic
        eps = 1e-6
        y0, y1 = int(np.floor(lo_y + 0.5 + eps)), int(np.ceil(hi_y - 0.5 - eps))
        x0, x1 = int(np.floor(lo_x + 0.5 + eps)), int(np.ceil(hi_x - 0.5 - eps))
        if y1 < y0 or x1 < x0:
            raise ValueError(
                f"the observations {names} do not overlap on the sky, so their "
                "intersection is empty; use coverage='union' or check their WCS"
            )
        height, width = y1 - y0 + 1, x1 - x0 + 1
        if height * width > max_pixels:
            raise ValueError(
                f"the {coverage} frame of {names} would be {height} x {width} = "
                f"{height * width:.3g} pixels per channel at {min(scales):.3g} arcsec/px, "
                f"more than max_pixels={max_pixels:.3g} (a float64 channel of it alone is "
                f"{8 * height * width / 1e9:.2g} GB); cut the observations to the region "
                "to model, or pass a larger max_pixels"
            )
        wcs = sky.sub_grid_wcs(base, y0, x0)
        if psf is None:
            psf = gaussian_psf(_model_psf_sigma(frames, base))
        return cls(
            (len(model_channels), height, width),
            wcs=wcs,
            channels=model_channels,
            psf=psf,
            channel_map=kept_map,
        )


def _check_channel_map(channel_map, channels: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """``channel_map`` as sorted pairs, or an error naming the bad entry."""
    if channel_map is None:
        return ()
    if not isinstance(channel_map, Mapping):
        raise TypeError(
            "channel_map must be a mapping {observation channel name: model channel}, "
            f"e.g. {{'HSC-i': 'i'}}; got {channel_map!r}"
        )
    pairs = []
    for key, target in channel_map.items():
        if not (isinstance(key, str) and isinstance(target, str)):
            raise TypeError(f"channel_map must map names (str) to names; got {key!r}: {target!r}")
        if target not in channels:
            raise ValueError(
                f"channel_map maps {key!r} to {target!r}, which is not a model channel "
                f"{channels}; map it to one of those names"
            )
        if key in channels and key != target:
            raise ValueError(
                f"channel_map maps {key!r} to {target!r}, but {key!r} is itself a model "
                f"channel {channels}: a name can mean one channel only"
            )
        if key != target:
            pairs.append((key, target))
    return tuple(sorted(pairs))


def _joined_channels(frames, names, mode: str, channel_map):
    """Model channel names (first appearance) and the mapping the model frame keeps."""
    if mode == "separate":
        if channel_map:
            raise ValueError(
                "channel_map says which bands are the same, so it needs channels='shared'"
            )
        joined = tuple(c for f in frames for c in f.channels)
        if len(set(joined)) != len(joined):
            raise ValueError(
                f"channel names repeat across observations: {joined}; pass "
                "channels='shared' if the same names are the same bands (one model "
                "channel seen by every observation of it), else give each observation "
                "distinct channel names (e.g. 'HSC-g' and 'DECam-g')"
            )
        return joined, None
    if channel_map is not None and not isinstance(channel_map, Mapping):
        _check_channel_map(channel_map, ())  # raises the TypeError
    mapping = dict(channel_map or {})
    seen = {c for f in frames for c in f.channels}
    unknown = [k for k in mapping if k not in seen]
    if unknown:
        raise ValueError(
            f"channel_map names channels {unknown} that no observation has; the "
            f"observations' channels are {sorted(seen)}"
        )
    joined = []
    for f, name in zip(frames, names, strict=True):
        own = [mapping.get(c, c) for c in f.channels]
        if len(set(own)) != len(own):
            raise ValueError(
                f"observation {name} has channels {f.channels} that channel_map makes "
                f"{tuple(own)}: two of its channels would be one model channel"
            )
        joined.extend(c for c in own if c not in joined)
    targets = {c for f in frames for c in f.channels if mapping.get(c, c) == c}
    for key, target in mapping.items():
        if target not in targets:
            raise ValueError(
                f"channel_map maps {key!r} to {target!r}, which is not a channel of any "
                f"observation (unmapped: {sorted(targets)}); map it to one of those"
            )
    return tuple(joined), mapping


def relative_jacobian(frame_a: Frame, frame_b: Frame, method: str = "local") -> np.ndarray:
    """Matrix taking pixel offsets in ``frame_a`` to pixel offsets in ``frame_b``.

    Parameters
    ----------
    frame_a, frame_b : Frame
        Frames with celestial WCS.
    method : {"local", "linear"}
        ``"local"`` (default): the derivative of the exact pixel-to-pixel map at the
        centre of ``frame_a``, through both projections. ``"linear"``: the ratio of the
        linear parts of the two WCS (CD, or PC times CDELT), ignoring the projections;
        identical when both share a tangent point, and otherwise off by the relative
        rotation and scale of the two tangent planes at this position (for the COSMOS
        HST and HSC cut-outs, 0.2 deg from their tangent points: a rotation of 8.8e-5
        rad and scale differences of 1e-5).

    Returns
    -------
    ndarray
        ``(2, 2)`` matrix ``J`` in ``(y, x)`` order: an offset ``(dy, dx)`` in pixels of
        ``frame_a`` is ``J @ (dy, dx)`` in pixels of ``frame_b``.
    """
    wcs_a, wcs_b = frame_a._require_wcs(), frame_b._require_wcs()
    if method == "linear":
        # pixel_scale_matrix maps (x, y) pixel offsets to intermediate world offsets
        xy = np.linalg.solve(wcs_b.pixel_scale_matrix, wcs_a.pixel_scale_matrix)
        return xy[::-1, ::-1].copy()
    if method != "local":
        raise ValueError(f"method must be 'local' or 'linear'; got {method!r}")
    ya, xa = (frame_a.shape[1] - 1) / 2.0, (frame_a.shape[2] - 1) / 2.0
    return sky.local_jacobian(wcs_a, wcs_b, ya, xa)
