"""Plots of observations, scenes and posteriors (matplotlib; corner and ArviZ for posteriors).

Conventions:

- Images are shown with the origin at the lower left, pixel ``(y, x)`` at position
  ``(x, y)``; each panel's axes say which pixel grid they count ("model frame px" or
  "<observation name> px").
- Stretch: :class:`AsinhAutomaticNorm` sets an asinh stretch per channel from the noise
  level (weights, else a robust sigma) and the brightest pixels, so the background
  noise is dark grey and the galaxies fill the rest of the range.
- Colour: one channel is grey; two or more are split, in their order (blue to red),
  into three groups shown as blue, green and red, each channel stretched on its own so
  that every band contributes (colours are not calibrated).
- Residuals are in units of the noise, ``(data - model) * sqrt(weight)``; several bands
  are combined as their sum over ``sqrt(bands)``, still of unit variance under the model.
- Figures are meant to be saved at 150 dpi or more (labels are 7 pt).
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import patheffects
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Polygon

from ._checks import check_positive
from .robust import robust_sigma

__all__ = [
    "AsinhStretch",
    "AsinhAutomaticNorm",
    "to_rgb",
    "observation",
    "scene",
    "corner",
    "rank",
    "trace",
]

#: Smallest softening, as a fraction of the upper limit: a noiseless image (a model)
#: keeps a linear range of 1e-3 of its brightest pixels instead of saturating every
#: non-zero pixel.
_MIN_SOFTENING = 1e-3

#: Label offsets tried around a marker, points (right-up first).
_OFFSETS = ((5, 5), (-5, 5), (5, -5), (-5, -5), (7, 0), (-7, 0), (0, 7), (0, -7))


class AsinhStretch(Normalize):
    """An asinh stretch onto ``[0, 1]`` with fixed limits (data units).

    ``f(v) = (asinh(v / s) - asinh(lo / s)) / (asinh(hi / s) - asinh(lo / s))``, clipped
    to ``[0, 1]``: linear within ``|v| < s``, logarithmic beyond.

    Parameters
    ----------
    softening : float
        ``s``, where the stretch turns from linear to logarithmic (data units, > 0).
    vmin, vmax : float
        Values shown as 0 and 1 (``vmin < vmax``).
    """

    def __init__(self, softening: float, vmin: float, vmax: float):
        self.softening = check_positive("softening", softening)
        if not vmin < vmax:
            raise ValueError(f"vmin must be below vmax; got vmin={vmin}, vmax={vmax}")
        super().__init__(vmin=float(vmin), vmax=float(vmax))

    def __call__(self, value, clip=None):
        """Map data values to ``[0, 1]``; non-finite values are masked."""
        value = np.asarray(value, float)
        s = self.softening
        lo, hi = np.arcsinh(self.vmin / s), np.arcsinh(self.vmax / s)
        scaled = (np.arcsinh(value / s) - lo) / (hi - lo)
        return np.ma.masked_invalid(np.clip(scaled, 0.0, 1.0))

    def inverse(self, value):
        """Data values of stretched values in ``[0, 1]``."""
        s = self.softening
        lo, hi = np.arcsinh(self.vmin / s), np.arcsinh(self.vmax / s)
        return s * np.sinh(lo + np.asarray(value, float) * (hi - lo))

    def channel(self, index: int) -> AsinhStretch:
        """The stretch of one channel (the same for every channel here)."""
        return self


class AsinhAutomaticNorm(AsinhStretch):
    """Asinh stretch per channel, set from an observation's noise and brightest pixels.

    For channel ``c`` with noise sd ``sigma_c`` (data units per pixel): softening
    ``noise_level * sigma_c``, lower limit ``-floor * sigma_c`` (the background is a dark
    grey, noise below it black) and upper limit the ``percentile`` of the channel's
    pixels (at least ``5 * sigma_c``). ``sigma_c`` is ``sqrt(median(1 / weight))`` over
    the pixels of non-zero weight where there are weights, else a robust sigma (1.4826
    MAD) of the data; the softening is at least ``1e-3`` of the upper limit, so a
    noiseless model image is stretched by its brightest pixels.

    Called on an image, the norm uses the channels' median noise and largest upper
    limit; :meth:`channel` gives one channel's own stretch (used by :func:`to_rgb`).

    Parameters
    ----------
    obs : Observation, CorrelatedObservation or array_like
        The data (``data`` and ``weights``), or a ``(channels, H, W)`` or ``(H, W)`` array.
    noise_level : float
        Softening in noise sigmas.
    percentile : float
        Upper limit at this percentile (0-100] of each channel's pixels.
    floor : float
        Lower limit, in noise sigmas below zero.

    Attributes
    ----------
    sigma : numpy.ndarray
        ``(channels,)`` noise sd, data units.
    upper : numpy.ndarray
        ``(channels,)`` upper limits, data units.
    """

    def __init__(self, obs, noise_level: float = 3.0, percentile: float = 99.9, floor: float = 1.0):
        noise_level = check_positive("noise_level", noise_level)
        floor = check_positive("floor", floor, allow_zero=True)
        percentile = check_positive("percentile", percentile)
        if percentile > 100:
            raise ValueError(f"percentile must be in (0, 100]; got {percentile}")
        data = np.asarray(getattr(obs, "data", obs), float)
        if data.ndim == 2:
            data = data[None]
        if data.ndim != 3 or data.size == 0:
            raise ValueError(f"obs must hold a (channels, H, W) image; got shape {data.shape}")
        weights = getattr(obs, "weights", None)
        weights = None if weights is None else np.broadcast_to(np.asarray(weights), data.shape)
        sigma, upper = [], []
        for c in range(data.shape[0]):
            valid = np.isfinite(data[c])
            if weights is not None:
                valid &= weights[c] > 0
            values = data[c][valid] if np.any(valid) else np.zeros(1)
            if weights is not None and np.any(valid):
                s = math.sqrt(float(np.median(1.0 / weights[c][valid])))
            else:
                s = robust_sigma(values)
            top = float(np.percentile(values, percentile))
            top = max(top, 5.0 * noise_level * s)
            if not top > 0:
                top = 1.0
            sigma.append(max(s, _MIN_SOFTENING * top / noise_level))
            upper.append(top)
        self._set(np.asarray(sigma), np.asarray(upper), noise_level, floor)

    def _set(self, sigma, upper, noise_level, floor) -> None:
        self.sigma, self.upper = sigma, upper
        self.noise_level, self.floor = noise_level, floor
        s = float(np.median(sigma))
        super().__init__(noise_level * s, -floor * s, float(np.max(upper)))

    def channel(self, index: int) -> AsinhStretch:
        """The stretch of channel ``index`` (its own noise and upper limit)."""
        if not -self.sigma.size <= index < self.sigma.size:
            raise ValueError(
                f"this norm was set on {self.sigma.size} channel(s); an image of more "
                f"channels needs a norm set on it (channel {index} asked)"
            )
        s = float(self.sigma[index])
        return AsinhStretch(self.noise_level * s, -self.floor * s, float(self.upper[index]))

    def scaled(self, factor: float, channels=None) -> AsinhAutomaticNorm:
        """The same stretch for data ``factor`` times these (e.g. other pixel units).

        ``channels`` picks and orders the channels of the new norm (all by default).
        """
        factor = check_positive("factor", factor)
        index = np.arange(self.sigma.size) if channels is None else np.asarray(channels, int)
        new = object.__new__(type(self))
        new._set(
            self.sigma[index] * factor, self.upper[index] * factor, self.noise_level, self.floor
        )
        return new


def _stretched(cube, norm) -> np.ndarray:
    """``(channels, H, W)`` values in ``[0, 1]``: each channel through its own stretch."""
    channel = getattr(norm, "channel", lambda index: norm)
    return np.stack(
        [np.ma.filled(np.ma.asarray(channel(c)(cube[c])), 0.0) for c in range(cube.shape[0])]
    )


def _colour_groups(n_channels: int) -> list[np.ndarray]:
    """Channel indices shown as blue, green and red (in channel order)."""
    if n_channels == 2:
        return [np.array([0]), np.array([0, 1]), np.array([1])]
    return np.array_split(np.arange(n_channels), 3)


def to_rgb(cube, norm=None) -> np.ndarray:
    """``(H, W, 3)`` image in ``[0, 1]`` of a ``(channels, H, W)`` (or ``(H, W)``) cube.

    One channel is grey. Several are stretched each by its own ``norm.channel(c)`` (where
    the norm has one; a plain matplotlib norm is used for all) and split in channel order
    into three groups shown as blue, green and red (the mean of each group); two
    channels give blue, their mean as green, and red.
    """
    cube = np.asarray(cube, float)
    if cube.ndim == 2:
        cube = cube[None]
    if cube.ndim != 3:
        raise ValueError(f"cube must be (channels, H, W) or (H, W); got shape {cube.shape}")
    norm = AsinhAutomaticNorm(cube) if norm is None else norm
    stretched = _stretched(cube, norm)
    if cube.shape[0] == 1:
        return np.repeat(stretched[0][..., None], 3, axis=-1)
    blue, green, red = (stretched[g].mean(axis=0) for g in _colour_groups(cube.shape[0]))
    return np.clip(np.stack([red, green, blue], axis=-1), 0.0, 1.0)


def _colour_legend(channels) -> str:
    """``"B: g+r  G: i+z  R: y"`` for the bands of a composite ('' for one band)."""
    if len(channels) < 2:
        return channels[0] if channels else ""
    groups = _colour_groups(len(channels))
    return "  ".join(
        f"{colour}: {'+'.join(channels[i] for i in g)}"
        for colour, g in zip("BGR", groups, strict=True)
    )


def _pixel_positions(coords, frame):
    """``(y, x)`` arrays in ``frame``'s pixels of a SkyCoord or ``(N, 2)`` pixel ``(y, x)``."""
    if coords is None:
        return None
    if hasattr(coords, "ra") or hasattr(coords, "frame"):
        y, x = frame.sky_to_pixel(coords)
        return np.atleast_1d(y), np.atleast_1d(x)
    arr = np.atleast_2d(np.asarray(coords, float))
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(
            f"add_peaks must be a SkyCoord or (N, 2) pixel (y, x); got shape {arr.shape}"
        )
    return arr[:, 0], arr[:, 1]


def _label_points(ax, ys, xs, texts, shape, label_kwargs=None) -> None:
    """Small markers at ``(y, x)`` with labels offset so that neighbours do not overlap.

    Each label takes the offset (of eight around its marker) farthest from the markers
    and from the labels already placed. Points outside the ``(H, W)`` image are skipped.
    """
    height, width = shape
    inside = [
        (float(y), float(x), t)
        for y, x, t in zip(ys, xs, texts, strict=True)
        if -0.5 <= x <= width - 0.5 and -0.5 <= y <= height - 0.5
    ]
    if not inside:
        return
    # a dark outline keeps white labels readable on bright galaxies
    outline = [patheffects.withStroke(linewidth=1.5, foreground="black")]
    style = {"color": "white", "fontsize": 7, "path_effects": outline, **(label_kwargs or {})}
    ax.plot(
        [p[1] for p in inside], [p[0] for p in inside], ls="none", marker="+", ms=4,
        mew=0.8, color=style["color"], path_effects=style["path_effects"],
    )  # fmt: skip
    # data pixels per point of offset, from the axes' size on the figure (about 4 in)
    per_point = max(height, width) / (72.0 * 3.0)
    taken = [(y, x) for y, x, _ in inside]
    for y, x, text in inside:

        def clearance(offset, y=y, x=x):
            ly, lx = y + offset[1] * per_point * 1.6, x + offset[0] * per_point * 1.6
            # a label that would leave the image (over the title or the axis) comes last
            margin = 8 * per_point
            out = not (margin <= ly <= height - margin and margin <= lx <= width - margin)
            return min(math.hypot(ly - ty, lx - tx) for ty, tx in taken) - out * 1e6

        dx, dy = max(_OFFSETS, key=clearance)
        taken.append((y + dy * per_point * 1.6, x + dx * per_point * 1.6))
        ha = "left" if dx > 0 else "right" if dx < 0 else "center"
        va = "bottom" if dy > 0 else "top" if dy < 0 else "center"
        ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                    **style)  # fmt: skip


def _label_axes(ax, grid: str) -> None:
    ax.set_xlabel(f"x [{grid} px]")
    ax.set_ylabel(f"y [{grid} px]")


def _grid_name(obs) -> str:
    """What an observation's pixels are called on the axes."""
    return f"{obs.name} resampled" if getattr(obs, "is_resampled", False) else obs.name


def _psf_inset(ax, psf) -> None:
    """The PSF of the middle channel in the upper right corner of ``ax`` (own pixels)."""
    psf = np.asarray(psf, float)
    image = psf[psf.shape[0] // 2] if psf.ndim == 3 else psf
    peak = float(np.max(image)) or 1.0
    # crop to the part above 1e-3 of the peak: the core and first wings
    rows, cols = np.nonzero(image > 1e-3 * peak)
    cy, cx = np.array(image.shape) // 2
    half = int(max(np.abs(rows - cy).max(initial=2), np.abs(cols - cx).max(initial=2))) + 1
    image = image[max(cy - half, 0) : cy + half + 1, max(cx - half, 0) : cx + half + 1]
    inset = ax.inset_axes([0.7, 0.7, 0.28, 0.28])
    inset.imshow(image, origin="lower", cmap="magma", norm=AsinhStretch(1e-2 * peak, 0.0, peak))
    inset.set_xticks([])
    inset.set_yticks([])
    inset.set_title("PSF", fontsize=7, color="white", y=0.72)
    for spine in inset.spines.values():
        spine.set_edgecolor("white")


def observation(
    obs,
    norm=None,
    add_peaks=None,
    show_psf: bool = True,
    label_kwargs=None,
    ax=None,
) -> Figure:
    """Show an observation's data (RGB for several bands), its PSF and marked positions.

    Parameters
    ----------
    obs : Observation or CorrelatedObservation
        The data.
    norm : Normalize, optional
        Colour normalisation (default ``AsinhAutomaticNorm(obs)``, one stretch per band).
    add_peaks : SkyCoord or array_like, optional
        Positions to mark and number: sky coordinates, or ``(N, 2)`` pixel ``(y, x)`` of
        this observation.
    show_psf : bool
        Show the PSF (middle band, its own pixels, asinh stretch) in an inset in the
        upper right corner.
    label_kwargs : dict, optional
        Matplotlib text options for the labels (default white, 7 pt).
    ax : matplotlib.axes.Axes, optional
        Draw here instead of in a new figure.

    Returns
    -------
    matplotlib.figure.Figure
    """
    norm = AsinhAutomaticNorm(obs) if norm is None else norm
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.5, 4.5), layout="constrained")
    fig = ax.figure
    data = np.asarray(obs.data)
    ax.imshow(to_rgb(data, norm), origin="lower")
    ax.set_title(f"{obs.name}  ({_colour_legend(list(obs.channels))})", fontsize=9)
    _label_axes(ax, _grid_name(obs))
    positions = _pixel_positions(add_peaks, obs.frame)
    if positions is not None:
        texts = [str(k) for k in range(len(positions[0]))]
        _label_points(ax, *positions, texts, data.shape[1:], label_kwargs)
    if show_psf and obs.psf is not None:
        _psf_inset(ax, obs.psf)
    return fig


def _model_norm(scene, obs, norm):
    """The observation's stretch in model units, on the model channels of ``obs``.

    Model pixels hold flux per model pixel; the data hold flux per observation pixel,
    so the limits scale by the ratio of pixel areas.
    """
    channels = [c for c, _ in sorted(scene.frame.map_channels(obs.frame).items(),
                                     key=lambda item: item[1])]  # fmt: skip
    if scene.frame.wcs is not None and obs.frame.wcs is not None:
        ratio = float(scene.frame.pixel_scale / obs.frame.pixel_scale) ** 2
    else:
        ratio = 1.0
    if hasattr(norm, "scaled") and len(channels) == obs.shape[0]:
        return channels, norm.scaled(ratio)
    return channels, None


def _residual(obs, data, rendered) -> np.ndarray:
    """``(H, W)`` residual in noise sigmas, NaN where no band counts.

    Per band ``(data - model) sqrt(w)``, summed over the bands that count and divided by
    ``sqrt(their number)``.
    """
    weights = np.asarray(obs.counted_weights(), float)
    chi = (data - rendered) * np.sqrt(weights)
    counted = (weights > 0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counted > 0, chi.sum(axis=0) / np.sqrt(counted), np.nan)


def scene(
    scene,
    observation=None,
    shift=None,
    norm=None,
    show_model: bool = True,
    show_rendered: bool = False,
    show_observed: bool = False,
    show_residual: bool = False,
    add_labels: bool = True,
    add_boxes: bool = False,
    box_kwargs=None,
    label_kwargs=None,
    residual_range: float = 5.0,
) -> Figure:
    """Panels of a scene: model, rendered into an observation, data and residual.

    The Model panel counts model-frame pixels (the scene convolved with the model PSF,
    in the observation's bands); the others count the observation's pixels, as their
    axes say.

    Parameters
    ----------
    scene : Scene
        The scene.
    observation : Observation or CorrelatedObservation, optional
        Needed for the rendered, observed and residual panels (bound to the scene's
        frame here if it is not); native or resampled.
    shift : array_like, optional
        ``(dy, dx)`` of the observation in its own pixels: model-frame pixels for a
        resampled one, native pixels for a native one (``fit.shift_native(name)``).
        Labels and boxes on its panels move with it.
    norm : Normalize, optional
        Stretch of the observation's panels (default ``AsinhAutomaticNorm(observation)``);
        the Model panel uses it scaled to model pixels (:meth:`AsinhAutomaticNorm.scaled`),
        or, without an observation, a stretch from the model's own brightest pixels.
    show_model, show_rendered, show_observed, show_residual : bool
        Which panels to draw.
    add_labels, add_boxes : bool
        Number the sources; draw their boxes on the first panel (projected onto its
        grid when it is not the Model panel).
    box_kwargs, label_kwargs : dict, optional
        Matplotlib options of the boxes (``Polygon``) and labels (text).
    residual_range : float
        The residual colour bar spans ``+-residual_range`` sigmas.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        If no panel is asked for, or a panel needs an observation and none is given.
    """
    residual_range = check_positive("residual_range", residual_range)
    needs_obs = show_rendered or show_observed or show_residual
    if needs_obs and observation is None:
        raise ValueError("show_rendered, show_observed and show_residual need observation=...")
    if not (show_model or needs_obs):
        raise ValueError("no panel to draw: set show_model or give an observation and show_*")
    model = np.asarray(scene.render())
    panels = []  # (title, image, norm, frame, shift offset or None for model pixels)
    obs = None if observation is None else observation.bound_to(scene.frame)
    if obs is not None:
        norm = AsinhAutomaticNorm(obs) if norm is None else norm
        channels, model_norm = _model_norm(scene, obs, norm)
    if show_model:
        if obs is None or not channels:
            panels.append(("Model", model, AsinhAutomaticNorm(model), scene.frame, None))
        else:
            panels.append(("Model", model[channels], model_norm, scene.frame, None))
    if obs is not None:
        rendered = np.asarray(obs.render(model, shift))
        data = np.asarray(obs.data)
        offset = np.zeros(2) if shift is None else np.asarray(shift, float)
        if show_rendered:
            panels.append(("Rendered", rendered, norm, obs.frame, offset))
        if show_observed:
            panels.append(("Observed", data, norm, obs.frame, offset))
        if show_residual:
            panels.append(("Residual", _residual(obs, data, rendered), None, obs.frame, offset))
    fig, axes = plt.subplots(
        1, len(panels), figsize=(3.6 * len(panels), 3.6), squeeze=False, layout="constrained"
    )
    for ax, (title, image, panel_norm, frame, offset) in zip(axes[0], panels, strict=True):
        if title == "Residual":
            shown = ax.imshow(image, origin="lower", cmap="RdBu_r", vmin=-residual_range,
                              vmax=residual_range)  # fmt: skip
            fig.colorbar(shown, ax=ax, shrink=0.8, label="(data - model) / sigma")
        else:
            ax.imshow(to_rgb(image, panel_norm), origin="lower")
        ax.set_title(title)
        grid = "model frame" if offset is None else _grid_name(obs)
        _label_axes(ax, grid)
        # boxes on the first panel only (the model's, where they live): on every panel
        # they hide the data
        boxes = add_boxes and ax is axes[0][0]
        _annotate(ax, scene, frame, offset, add_labels, boxes, box_kwargs, label_kwargs)
    return fig


def _to_frame(scene_frame, frame, ys, xs):
    """Model-frame pixel ``(y, x)`` in ``frame``'s pixels (through the sky where it can)."""
    if frame.wcs is not None and scene_frame.wcs is not None:
        y, x = frame.sky_to_pixel(scene_frame.pixel_to_sky(ys, xs))
        return np.atleast_1d(y), np.atleast_1d(x)
    if frame.shape[1:] == scene_frame.shape[1:]:
        return np.atleast_1d(ys), np.atleast_1d(xs)
    return None


def _annotate(ax, scene, frame, offset, add_labels, add_boxes, box_kwargs, label_kwargs):
    """Source numbers and boxes on a panel of ``frame`` (``offset``: the shift, its px)."""
    if not scene.sources:
        return
    offset = np.zeros(2) if offset is None else offset
    centres = np.array([np.asarray(s.center, float) for s in scene.sources])
    mapped = _to_frame(scene.frame, frame, centres[:, 0], centres[:, 1])
    if mapped is None:
        return
    ys, xs = mapped[0] + offset[0], mapped[1] + offset[1]
    if add_boxes:
        style = {"edgecolor": "white", "facecolor": "none", "lw": 0.6, "alpha": 0.7,
                 **(box_kwargs or {})}  # fmt: skip
        for source in scene.sources:
            y0, x0 = np.asarray(source.origin, float) - 0.5
            h, w = source.box_shape
            corner_y = np.array([y0, y0, y0 + h, y0 + h])
            corner_x = np.array([x0, x0 + w, x0 + w, x0])
            cy, cx = _to_frame(scene.frame, frame, corner_y, corner_x)
            ax.add_patch(Polygon(np.c_[cx + offset[1], cy + offset[0]], closed=True, **style))
        height, width = frame.shape[1:]
        ax.set_xlim(-0.5, width - 0.5)
        ax.set_ylim(-0.5, height - 0.5)
    if add_labels:
        texts = [str(k) for k in range(len(scene.sources))]
        _label_points(ax, ys, xs, texts, frame.shape[1:], label_kwargs)


def _posterior(idata):
    return idata["posterior"] if not hasattr(idata, "posterior") else idata.posterior


def _columns(posterior, names):
    """Flattened posterior columns, their labels and the variable each belongs to."""
    columns, labels, owners = [], [], []
    for name in names:
        if name not in posterior:
            raise KeyError(
                f"{name!r} is not a posterior variable; have {list(posterior.data_vars)}"
            )
        stacked = posterior[name].stack(sample=("chain", "draw"))
        other = [d for d in stacked.dims if d != "sample"]
        if other:
            # C order over the variable's own dims: the order of np.ravel of one draw
            flat = stacked.stack(element=other).transpose("sample", "element")
            for k in range(flat.sizes["element"]):
                columns.append(np.asarray(flat.isel(element=k)))
                index = flat["element"].values[k]
                index = index if isinstance(index, tuple) else (index,)
                labels.append(f"{name}[{', '.join(str(i) for i in index)}]")
                owners.append(name)
        else:
            columns.append(np.asarray(stacked))
            labels.append(name)
            owners.append(name)
    return columns, labels, owners


def _flat_truths(truths, names, owners):
    """Truths in column order from a dict by variable name or a flat sequence."""
    if truths is None:
        return None
    if isinstance(truths, dict):
        unknown = set(truths) - set(names)
        if unknown:
            raise ValueError(f"truths has variables not plotted: {sorted(unknown)}; have {names}")
        flat = []
        for name in names:
            count = owners.count(name)
            if name not in truths or truths[name] is None:
                flat.extend([None] * count)
                continue
            values = np.ravel(np.asarray(truths[name], float))
            if values.size != count:
                raise ValueError(
                    f"truths[{name!r}] has {values.size} values; the variable has {count}"
                )
            flat.extend(float(v) for v in values)
        return flat
    flat = [None if v is None else float(v) for v in truths]
    if len(flat) != len(owners):
        raise ValueError(f"truths has {len(flat)} values; the plot has {len(owners)} columns")
    return flat


def corner(idata, var_names=None, truths=None, **kwargs) -> Figure:
    """Corner plot of posterior samples (``corner.corner``) with ArviZ variable labels.

    Parameters
    ----------
    idata : InferenceData or DataTree
        Output of ``post.to_arviz()``.
    var_names : sequence of str, optional
        Posterior variables to include (all by default); each element of a
        multi-dimensional variable becomes one axis, labelled with its coordinates
        (``shift_native[HSC, y]``), in C order of the variable's dims.
    truths : dict or sequence, optional
        True values: a dict from variable name to an array shaped like one draw of it
        (variables left out get no line), or a flat sequence with one value (or
        ``None``) per axis in the order above.
    kwargs :
        Passed to ``corner.corner``.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    KeyError
        If a variable is not in the posterior.
    ValueError
        If ``truths`` does not match the plotted axes.
    """
    import corner as corner_lib

    posterior = _posterior(idata)
    names = list(var_names) if var_names is not None else list(posterior.data_vars)
    columns, labels, owners = _columns(posterior, names)
    flat_truths = _flat_truths(truths, names, owners)
    samples = np.stack(columns, axis=1)
    return corner_lib.corner(samples, labels=labels, truths=flat_truths, **kwargs)


def _figure_of(axes) -> Figure:
    return np.ravel(np.asarray(axes, dtype=object))[0].figure


def rank(idata, var_names=None, **kwargs) -> Figure:
    """Rank plots (``arviz.plot_rank``) of posterior variables, e.g. shifts and fluxes.

    Uniform ranks across chains mean the chains sample the same distribution.
    ``kwargs`` go to ``arviz.plot_rank``; returns its figure.
    """
    import arviz as az

    _columns(_posterior(idata), list(var_names or []))  # same KeyError as corner
    return _figure_of(az.plot_rank(idata, var_names=var_names, **kwargs))


def trace(idata, var_names=None, **kwargs) -> Figure:
    """Trace plots (``arviz.plot_trace``) of posterior variables, e.g. shifts and fluxes.

    ``kwargs`` go to ``arviz.plot_trace``; returns its figure.
    """
    import arviz as az

    _columns(_posterior(idata), list(var_names or []))
    return _figure_of(az.plot_trace(idata, var_names=var_names, **kwargs))
