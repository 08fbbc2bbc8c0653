"""Plots of observations, scenes and posteriors (matplotlib; corner for posteriors).

Images are shown with the origin at the lower left, pixel ``(y, x)`` at position
``(x, y)``; colour composites map the last three channels to red, green and blue.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import Normalize
from matplotlib.patches import Rectangle

from .robust import robust_sigma

__all__ = ["AsinhAutomaticNorm", "observation", "scene", "corner", "to_rgb"]


class AsinhAutomaticNorm(Normalize):
    """Asinh stretch with limits chosen from an observation's noise and brightest pixels.

    Parameters
    ----------
    obs : Observation, CorrelatedObservation or array
        Data (or ``(channels, H, W)`` array) that sets the limits.
    noise_level : float
        The stretch turns from linear to logarithmic at this many noise sigmas.
    percentile : float
        Upper limit at this percentile of the data.
    """

    def __init__(self, obs, noise_level: float = 3.0, percentile: float = 99.5):
        data = np.asarray(getattr(obs, "data", obs), float)
        weights = getattr(obs, "weights", None)
        if weights is not None:
            w = np.asarray(weights)
            sigma = np.sqrt(np.median(1.0 / w[w > 0])) if np.any(w > 0) else 1.0
        else:
            sigma = robust_sigma(data)
        self.softening = max(noise_level * sigma, 1e-30)
        vmax = float(np.percentile(data, percentile))
        super().__init__(vmin=-self.softening, vmax=max(vmax, 2 * self.softening))

    def __call__(self, value, clip=None):
        """Map data values to [0, 1] through the asinh stretch."""
        value = np.asarray(value, float)
        scaled = np.arcsinh(value / self.softening)
        lo = np.arcsinh(self.vmin / self.softening)
        hi = np.arcsinh(self.vmax / self.softening)
        return np.ma.masked_invalid(np.clip((scaled - lo) / (hi - lo), 0, 1))


def to_rgb(cube, norm=None) -> np.ndarray:
    """``(H, W, 3)`` image of a cube: one channel grey, otherwise the last three as RGB."""
    cube = np.asarray(cube, float)
    if cube.ndim == 2:
        cube = cube[None]
    norm = norm or AsinhAutomaticNorm(cube)
    if cube.shape[0] == 1:
        grey = np.asarray(norm(cube[0]))
        return np.stack([grey] * 3, axis=-1)
    if cube.shape[0] == 2:
        cube = np.concatenate([cube, cube[-1:]])
    rgb = np.stack([np.asarray(norm(cube[c])) for c in (-1, -2, -3)], axis=-1)
    return np.clip(rgb, 0, 1)


def _pixel_positions(coords, frame):
    if coords is None:
        return None
    if hasattr(coords, "ra") or hasattr(coords, "frame"):
        y, x = frame.sky_to_pixel(coords)
        return np.atleast_1d(y), np.atleast_1d(x)
    arr = np.atleast_2d(np.asarray(coords, float))
    return arr[:, 0], arr[:, 1]


def observation(obs, norm=None, add_peaks=None, show_psf: bool = False, label_kwargs=None, ax=None):
    """Show an observation's data (and its PSF), with optional marked positions.

    Parameters
    ----------
    obs : Observation or CorrelatedObservation
        The data.
    norm : Normalize, optional
        Colour normalisation (default :class:`AsinhAutomaticNorm`).
    add_peaks : SkyCoord or array_like, optional
        Positions to mark: sky coordinates, or ``(N, 2)`` pixel ``(y, x)``.
    show_psf : bool
        Add a panel with the PSF of the middle channel.
    label_kwargs : dict, optional
        Matplotlib text options for the labels.

    Returns
    -------
    matplotlib.figure.Figure
    """
    norm = norm or AsinhAutomaticNorm(obs)
    panels = 2 if show_psf and obs.psf is not None else 1
    if ax is None:
        fig, axes = plt.subplots(1, panels, figsize=(4 * panels, 4), squeeze=False)
        axes = axes[0]
    else:
        axes, fig = [ax], ax.figure
    axes[0].imshow(to_rgb(obs.data, norm), origin="lower")
    axes[0].set_title(obs.name)
    positions = _pixel_positions(add_peaks, obs.frame)
    if positions is not None:
        kwargs = {"color": "white", **(label_kwargs or {})}
        for k, (y, x) in enumerate(zip(*positions, strict=True)):
            axes[0].text(x, y, str(k), ha="center", va="center", **kwargs)
    if panels == 2:
        psf = np.asarray(obs.psf)
        axes[1].imshow(psf[psf.shape[0] // 2], origin="lower", cmap="magma")
        axes[1].set_title("PSF")
    return fig


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
):
    """Panels of a scene: model, rendered into an observation, data, residuals.

    Parameters
    ----------
    scene : Scene
        The scene.
    observation : Observation or CorrelatedObservation, optional
        Needed for rendered, observed and residual panels (bound here if needed).
    shift : array_like, optional
        ``(dy, dx)`` of the observation in its own pixels (for a native observation
        fitted directly or through a resampled one: ``fit.shift_native(name)``).
    norm : Normalize, optional
        Colour normalisation of the data-like panels.

    Returns
    -------
    matplotlib.figure.Figure
    """
    model = np.asarray(scene.render())
    panels = [("Model", model, scene.frame)] if show_model else []
    if observation is not None:
        obs = observation.bound_to(scene.frame)
        rendered = np.asarray(obs.render(scene.render(), shift))
        data = np.asarray(obs.data)
        norm = norm or AsinhAutomaticNorm(obs)
        if show_rendered:
            panels.append(("Rendered", rendered, obs.frame))
        if show_observed:
            panels.append(("Observed", data, obs.frame))
        if show_residual:
            panels.append(("Residual", data - rendered, obs.frame))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False)
    for ax, (title, image, frame) in zip(axes[0], panels, strict=True):
        if title == "Residual":
            channel_sum = image.sum(axis=0)
            limit = np.percentile(np.abs(channel_sum), 99) or 1.0
            ax.imshow(channel_sum, origin="lower", cmap="RdBu_r", vmin=-limit, vmax=limit)
        else:
            ax.imshow(to_rgb(image, norm if title != "Model" else None), origin="lower")
        ax.set_title(title)
        _annotate(ax, scene, frame, add_labels, add_boxes, box_kwargs, label_kwargs)
    return fig


def _annotate(ax, scene, frame, add_labels, add_boxes, box_kwargs, label_kwargs):
    same = frame.shape[1:] == scene.frame.shape[1:] and (
        frame.wcs is None or scene.frame.wcs is None
    )
    for k, source in enumerate(scene.sources):
        y, x = np.asarray(source.center, float)
        if not same and frame.wcs is not None and scene.frame.wcs is not None:
            y, x = frame.sky_to_pixel(scene.frame.pixel_to_sky(y, x))
            y, x = float(y), float(x)
        if add_labels:
            ax.text(
                x, y, str(k), ha="center", va="center", **{"color": "white", **(label_kwargs or {})}
            )
        if add_boxes and (same or frame.wcs is scene.frame.wcs):
            y0, x0 = source.origin
            h, w = source.box_shape
            style = {"edgecolor": "white", "facecolor": "none", **(box_kwargs or {})}
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), w, h, **style))


def corner(idata, var_names=None, **kwargs):
    """Corner plot of posterior samples (``corner.corner``) with ArviZ variable labels.

    Parameters
    ----------
    idata : InferenceData or DataTree
        Output of ``post.to_arviz()``.
    var_names : sequence of str, optional
        Posterior variables to include (all by default); each element of a
        multi-dimensional variable becomes one axis, labelled with its coordinates.
    kwargs :
        Passed to ``corner.corner``.
    """
    import corner as corner_lib

    posterior = idata["posterior"] if not hasattr(idata, "posterior") else idata.posterior
    names = list(var_names) if var_names is not None else list(posterior.data_vars)
    columns, labels = [], []
    for name in names:
        if name not in posterior:
            raise KeyError(
                f"{name!r} is not a posterior variable; have {list(posterior.data_vars)}"
            )
        var = posterior[name]
        stacked = var.stack(sample=("chain", "draw"))
        other = [d for d in stacked.dims if d != "sample"]
        if other:
            flat = stacked.stack(element=other).transpose("sample", "element")
            for k in range(flat.sizes["element"]):
                columns.append(np.asarray(flat.isel(element=k)))
                index = flat["element"].values[k]
                index = index if isinstance(index, tuple) else (index,)
                labels.append(f"{name}[{', '.join(str(i) for i in index)}]")
        else:
            columns.append(np.asarray(stacked))
            labels.append(name)
    samples = np.stack(columns, axis=1)
    return corner_lib.corner(samples, labels=labels, **kwargs)
