"""Plots draw what they claim: panels, labels, stretches that show the data, residuals in sigmas.

Each figure is drawn to PNG with Agg. The stretch is checked on the pixel histogram of the
stretched image (neither blank nor saturated); the residual against data made here as a
model plus Gaussian noise of known sigma.
"""

import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from astropy.wcs import WCS  # noqa: E402

import mobs_ppl as mp  # noqa: E402
from mobs_ppl.psf import gaussian_psf  # noqa: E402


def _wcs(scale, shape):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.cd = np.diag([-scale, scale]) / 3600
    w.wcs.crpix = [(shape[1] - 1) / 2 + 1, (shape[0] - 1) / 2 + 1]
    return w


def _png(fig) -> np.ndarray:
    """Draw to PNG with Agg and read it back (fails if anything cannot be drawn)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=60)
    buffer.seek(0)
    image = plt.imread(buffer)
    plt.close(fig)
    return image


def _mad_sd(values) -> float:
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    return 1.4826 * float(np.median(np.abs(values - np.median(values))))


# sigmas of the noise drawn below (data units per pixel), one per band
HST_SIGMA = 0.1
HSC_SIGMA = np.array([0.3, 0.2, 0.1])


@pytest.fixture(scope="module")
def setup():
    """A scene of two galaxies and HST-like / HSC-like data = its rendering + known noise."""
    rng = np.random.default_rng(3)
    hst = mp.Observation(
        np.zeros((1, 40, 40)),
        weights=1 / HST_SIGMA**2,
        psf=gaussian_psf(1.2),
        wcs=_wcs(0.03, (40, 40)),
        channels=["F814W"],
        name="HST",
    )
    hsc = mp.Observation(
        np.zeros((3, 12, 12)),
        weights=(1 / HSC_SIGMA**2)[:, None, None] * np.ones((3, 12, 12)),
        psf=gaussian_psf(1.5, 15),
        wcs=_wcs(0.12, (12, 12)),
        channels=["g", "r", "i"],
        name="HSC",
    )
    frame = mp.Frame.from_observations([hst, hsc])
    sources = [
        mp.GaussianSource((20.0, 21.0), np.array([40.0, 20.0, 30.0, 40.0]), 3.0),
        mp.GaussianSource((12.0, 14.0), np.array([20.0, 15.0, 10.0, 5.0]), 2.0),
    ]
    scene = mp.Scene(frame, sources)
    model = scene.render()
    hsc_shift = np.array([1.0, -0.8])  # HSC pixels
    hst_data = np.asarray(hst.match(frame).render(model))
    hsc_data = np.asarray(hsc.match(frame).render(model, hsc_shift))
    hst = mp.Observation(
        hst_data + rng.normal(0, HST_SIGMA, hst_data.shape),
        weights=1 / HST_SIGMA**2,
        psf=gaussian_psf(1.2),
        wcs=_wcs(0.03, (40, 40)),
        channels=["F814W"],
        name="HST",
    )
    hsc = mp.Observation(
        hsc_data + rng.normal(0, 1, hsc_data.shape) * HSC_SIGMA[:, None, None],
        weights=(1 / HSC_SIGMA**2)[:, None, None] * np.ones((3, 12, 12)),
        psf=gaussian_psf(1.5, 15),
        wcs=_wcs(0.12, (12, 12)),
        channels=["g", "r", "i"],
        name="HSC",
    )
    return hst, hsc, frame, scene, hsc_shift


def _assert_shows_data(rgb, name):
    """Neither blank nor saturated: a spread of values, few pixels clipped at 0 or 1."""
    values = np.asarray(rgb, float).ravel()
    # an image that shows noise and galaxies: under 25% black (the floor is 1 sigma
    # below zero, so about 16% of pure-noise pixels are black) and under 2% white (the
    # upper limit is the 99.9th percentile of each band)
    assert np.mean(values <= 0.0) < 0.25, name
    assert np.mean(values >= 1.0) < 0.02, name
    # a spread: the inter-decile range covers over a tenth of the output range
    assert np.percentile(values, 90) - np.percentile(values, 10) > 0.1, name


# -- the norm ---------------------------------------------------------------------------
def test_norm_noise_from_weights_and_robust_sigma():
    rng = np.random.default_rng(0)
    sigma = np.array([0.5, 2.0])
    data = rng.normal(0, 1, (2, 80, 80)) * sigma[:, None, None]
    weights = np.ones_like(data) / sigma[:, None, None] ** 2
    weights[0, :10] = 0.0  # masked rows do not count
    obs = mp.Observation(data, weights=weights)
    np.testing.assert_allclose(mp.plot.AsinhAutomaticNorm(obs).sigma, sigma, rtol=1e-12)
    # no weights: robust sigma of the pixels; 6400 draws give ~1.2% (1 sd) error on it
    np.testing.assert_allclose(mp.plot.AsinhAutomaticNorm(data).sigma, sigma, rtol=0.06)


def test_norm_is_monotone_asinh_into_unit_interval():
    norm = mp.plot.AsinhStretch(softening=2.0, vmin=-1.0, vmax=50.0)
    v = np.linspace(-10, 100, 200)
    out = np.asarray(norm(v))
    assert out.min() == 0 and out.max() == 1 and np.all(np.diff(out) >= 0)
    inside = (v > -1) & (v < 50)
    # the analytic stretch, written out here
    lo, hi = np.arcsinh(-0.5), np.arcsinh(25.0)
    np.testing.assert_allclose(out[inside], (np.arcsinh(v[inside] / 2) - lo) / (hi - lo))
    np.testing.assert_allclose(norm.inverse(out[inside]), v[inside], rtol=1e-9, atol=1e-9)


def test_norm_per_channel_and_scaled():
    data = np.random.default_rng(1).normal(0, 0.01, (2, 20, 20))
    data[:, 10, 10] = [1.0, 100.0]
    norm = mp.plot.AsinhAutomaticNorm(data, percentile=100)
    np.testing.assert_allclose(norm.upper, [1.0, 100.0])
    # each channel's brightest pixel reaches 1: every band contributes to a composite
    assert float(norm.channel(0)(1.0)) == pytest.approx(1.0)
    assert float(norm.channel(1)(1.0)) < 0.6
    scaled = norm.scaled(10.0, channels=[1])
    np.testing.assert_allclose(scaled.upper, [1000.0])
    np.testing.assert_allclose(scaled.sigma, 10 * norm.sigma[1:])
    with pytest.raises(ValueError, match="channel"):
        mp.plot.to_rgb(np.ones((3, 4, 4)), norm)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"percentile": 0}, ValueError),
        ({"percentile": 101}, ValueError),
        ({"noise_level": -1}, ValueError),
        ({"floor": "a"}, TypeError),
    ],
)
def test_norm_bad_arguments(kwargs, error):
    with pytest.raises(error, match=next(iter(kwargs))):
        mp.plot.AsinhAutomaticNorm(np.ones((4, 4)), **kwargs)


def test_stretch_shows_simulated_field():
    field = mp.synthetic.simulated_field(0)
    for obs in (field.hst, field.hsc):
        rgb = mp.plot.to_rgb(np.asarray(obs.data), mp.plot.AsinhAutomaticNorm(obs))
        _assert_shows_data(rgb, obs.name)
        # the galaxies stand out: the pixels at the true positions are brighter than
        # 90% of the image
        y, x = obs.frame.sky_to_pixel(field.positions)
        at_sources = rgb[np.round(y).astype(int), np.round(x).astype(int)].mean(axis=-1)
        assert np.median(at_sources) > np.percentile(rgb.mean(axis=-1), 90), obs.name


def test_rgb_takes_every_band():
    # each band lit in its own third of the image: each appears in its own colour
    cube = np.zeros((3, 9, 9))
    for c in range(3):
        cube[c, :, 3 * c : 3 * c + 3] = 10.0
    rgb = mp.plot.to_rgb(cube, mp.plot.AsinhStretch(1.0, 0.0, 10.0))
    # band 0 (bluest) -> blue, band 2 (reddest) -> red
    np.testing.assert_allclose(rgb[4, 1], [0, 0, 1])
    np.testing.assert_allclose(rgb[4, 4], [0, 1, 0])
    np.testing.assert_allclose(rgb[4, 7], [1, 0, 0])
    grey = mp.plot.to_rgb(cube[:1], mp.plot.AsinhStretch(1.0, 0.0, 10.0))
    np.testing.assert_allclose(grey[..., 0], grey[..., 2])


# -- observation ------------------------------------------------------------------------
def test_observation_panels_psf_inset_and_labels(setup):
    hst, hsc, *_ = setup
    fig = mp.plot.observation(hst, add_peaks=[[10.0, 12.0], [20.0, 5.0]])
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.texts] == ["0", "1"]
    assert ax.get_xlabel() == "x [HST px]" and ax.get_ylabel() == "y [HST px]"
    assert [a.get_title() for a in ax.child_axes] == ["PSF"]
    _assert_shows_data(ax.images[0].get_array(), "HST")
    _png(fig)
    fig = mp.plot.observation(hsc, show_psf=False)
    assert not fig.axes[0].child_axes
    assert "B: g" in fig.axes[0].get_title() and "R: i" in fig.axes[0].get_title()
    assert fig.axes[0].images[0].get_array().shape == (12, 12, 3)
    _png(fig)


def test_observation_peaks_on_the_sky(setup):
    hst, _, frame, scene, _ = setup
    centres = np.array([s.center for s in scene.sources])
    sky = frame.pixel_to_sky(centres[:, 0], centres[:, 1])
    fig = mp.plot.observation(hst, add_peaks=sky)
    (markers,) = fig.axes[0].lines
    # the frame is built around HST's grid: the same pixel positions, within 1e-6 px
    y, x = hst.frame.sky_to_pixel(sky)
    np.testing.assert_allclose(markers.get_xdata(), x, atol=1e-6)
    np.testing.assert_allclose(markers.get_ydata(), y, atol=1e-6)
    plt.close(fig)
    with pytest.raises(ValueError, match="add_peaks"):
        mp.plot.observation(hst, add_peaks=[1.0, 2.0, 3.0])


def test_labels_of_close_peaks_do_not_overlap(setup):
    hst, *_ = setup
    # four peaks within 0.4 pixels of each other on a 40-pixel image (one label height
    # is about a pixel here): labels at one fixed offset would overlap
    peaks = [[20.0, 20.0], [20.2, 20.3], [20.3, 20.0], [19.9, 20.2]]
    fig = mp.plot.observation(hst, add_peaks=peaks, show_psf=False)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in fig.axes[0].texts]
    assert len(boxes) == 4
    for i in range(4):
        for j in range(i + 1, 4):
            overlap = boxes[i].intersection(boxes[i], boxes[j])
            area = 0.0 if overlap is None else max(overlap.width, 0) * max(overlap.height, 0)
            # less than a fifth of a label's area in common
            assert area < 0.2 * boxes[i].width * boxes[i].height, (i, j)
    plt.close(fig)
    # a peak on the top edge keeps its label inside the image (not over the title)
    fig = mp.plot.observation(hst, add_peaks=[[39.4, 20.0]], show_psf=False)
    fig.canvas.draw()
    (text,) = fig.axes[0].texts
    label, image = text.get_window_extent(renderer=None), fig.axes[0].get_window_extent()
    assert label.y1 <= image.y1 and label.y0 >= image.y0
    plt.close(fig)


# -- scene ------------------------------------------------------------------------------
def test_scene_panels_axes_colour_bar(setup):
    _, hsc, frame, scene, shift = setup
    fig = mp.plot.scene(
        scene,
        observation=hsc,
        shift=shift,
        norm=mp.plot.AsinhAutomaticNorm(hsc),
        show_rendered=True,
        show_observed=True,
        show_residual=True,
        add_labels=True,
        add_boxes=True,
    )
    panels, colour_bar = fig.axes[:4], fig.axes[4:]
    assert [a.get_title() for a in panels] == ["Model", "Rendered", "Observed", "Residual"]
    assert panels[0].get_xlabel() == "x [model frame px]"
    assert all(a.get_xlabel() == "x [HSC px]" for a in panels[1:])
    assert all(a.get_ylabel() == "y [HSC px]" for a in panels[1:])
    assert len(colour_bar) == 1 and colour_bar[0].get_ylabel() == "(data - model) / sigma"
    # symmetric colour bar
    lo, hi = panels[3].images[0].get_clim()
    assert lo == -hi
    assert len(panels[0].patches) == len(scene.sources)  # the boxes on the Model panel
    # model panel in the observation's bands and stretch: not saturated, boxes not lit
    model_rgb = np.asarray(panels[0].images[0].get_array())
    # the model's cores are sharper than the data's (the model PSF is narrower), so a
    # few core pixels saturate in the data's stretch: under 5%
    assert np.mean(model_rgb >= 1.0) < 0.05
    outside = np.ones(frame.shape[1:], bool)
    for source in scene.sources:
        (y0, x0), (h, w) = source.origin, source.box_shape
        outside[max(y0, 0) : y0 + h, max(x0, 0) : x0 + w] = False
    inside_boxes = model_rgb[~outside].mean(axis=-1)
    # the box's outer ring is as dark as the outside background (no bright squares):
    # its median within 0.05 of the background's level
    ring = np.zeros_like(outside)
    y0, x0 = scene.sources[0].origin
    h, w = scene.sources[0].box_shape
    ring[y0, x0 : x0 + w] = True
    background = np.median(model_rgb[outside].mean(axis=-1))
    assert abs(np.median(model_rgb[ring].mean(axis=-1)) - background) < 0.05
    assert inside_boxes.max() > background + 0.3  # the galaxies are visible
    for ax in panels[1:3]:
        _assert_shows_data(ax.images[0].get_array(), ax.get_title())
    _png(fig)


def test_residual_of_true_model_is_unit_normal(setup):
    """Data = model + noise of known sigma: the residual panel has sd 1 with the right
    shift (native HSC pixels, three bands combined), more without it."""
    _, hsc, _, scene, shift = setup
    fig = mp.plot.scene(scene, observation=hsc, shift=shift, show_model=False, show_residual=True)
    residual = np.asarray(fig.axes[0].images[0].get_array())
    plt.close(fig)
    assert residual.shape == hsc.shape[1:]
    # 144 pixels: the MAD sd has ~9% (1 sd) error; tolerance 3 of those
    assert abs(_mad_sd(residual) - 1.0) < 0.27
    assert abs(np.nanmean(residual)) < 0.3  # 3 sd of a mean of 144 unit normals
    fig = mp.plot.scene(scene, observation=hsc, show_model=False, show_residual=True)
    unshifted = np.asarray(fig.axes[0].images[0].get_array())
    plt.close(fig)
    assert np.nanstd(unshifted) > 2.0 * np.nanstd(residual)


def test_residual_in_a_resampled_observation(setup):
    """The same for HSC resampled to the model frame, shift in model-frame pixels."""
    _, hsc, frame, scene, shift = setup
    resampled = mp.CorrelatedObservation.from_observation(hsc, resample_to_frame=frame)
    model_shift = np.asarray(hsc.match(frame).model_shift(shift))
    fig = mp.plot.scene(
        scene, observation=resampled, shift=model_shift, show_model=False, show_residual=True
    )
    ax = fig.axes[0]
    assert ax.get_xlabel() == "x [HSC resampled px]"
    residual = np.asarray(ax.images[0].get_array())
    plt.close(fig)
    # the resampled pixels are correlated (~ 16 model px per native px): the MAD sd
    # of the marginal chi scatters by ~ 4x the 9% of 144 independent ones; 0.4 allowed
    assert abs(_mad_sd(residual) - 1.0) < 0.4


def test_scene_alone_and_bad_arguments(setup):
    *_, scene, _ = setup
    fig = mp.plot.scene(scene)
    (ax,) = fig.axes
    assert ax.get_title() == "Model"
    assert np.mean(np.asarray(ax.images[0].get_array()) >= 1.0) < 0.02
    _png(fig)
    with pytest.raises(ValueError, match="observation"):
        mp.plot.scene(scene, show_residual=True)
    with pytest.raises(ValueError, match="no panel"):
        mp.plot.scene(scene, show_model=False)
    with pytest.raises(ValueError, match="residual_range"):
        mp.plot.scene(scene, residual_range=-1)


# -- posteriors -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def idata():
    import arviz as az
    import xarray as xr

    rng = np.random.default_rng(0)
    posterior = xr.Dataset(
        {
            "shift": (("chain", "draw", "observation", "axis"), rng.normal(size=(2, 50, 1, 2))),
            "flux": (("chain", "draw", "source"), 5 + rng.normal(size=(2, 50, 3))),
        },
        coords={"observation": ["HSC"], "axis": ["y", "x"], "source": [0, 1, 2]},
    )
    return az.InferenceData(posterior=posterior)


def _diagonal_truths(fig, n):
    """x of the vertical truth line on each diagonal panel of a corner plot."""
    axes = np.array(fig.axes).reshape(n, n)
    values = []
    for k in range(n):
        vertical = [
            line.get_xdata()[0]
            for line in axes[k, k].lines
            if len(set(np.ravel(line.get_xdata()))) == 1
        ]
        values.append(vertical[0] if vertical else None)
    return values


def test_corner_labels_and_truths_in_column_order(idata):
    fig = mp.plot.corner(
        idata, var_names=["shift", "flux"], truths={"flux": [4.0, 5.0, 6.0], "shift": [[1, 2]]}
    )
    labels = [a.get_xlabel() for a in fig.axes if a.get_xlabel()]
    assert "shift[HSC, x]" in labels and "flux[2]" in labels
    assert _diagonal_truths(fig, 5) == [1.0, 2.0, 4.0, 5.0, 6.0]
    _png(fig)
    fig = mp.plot.corner(idata, var_names=["flux"], truths=[None, 5.0, 6.0])
    assert _diagonal_truths(fig, 3) == [None, 5.0, 6.0]
    _png(fig)
    with pytest.raises(KeyError):
        mp.plot.corner(idata, var_names=["sky"])
    with pytest.raises(ValueError, match="truths"):
        mp.plot.corner(idata, var_names=["flux"], truths=[1.0, 2.0])
    with pytest.raises(ValueError, match="truths"):
        mp.plot.corner(idata, var_names=["flux"], truths={"shift": [0.0, 0.0]})
    with pytest.raises(ValueError, match="truths"):
        mp.plot.corner(idata, var_names=["flux"], truths={"flux": [0.0, 0.0]})


# ArviZ 0.23 calls a matplotlib helper deprecated in 3.11 (their code, not ours)
@pytest.mark.filterwarnings("ignore::matplotlib.MatplotlibDeprecationWarning")
@pytest.mark.parametrize("function", ["rank", "trace"])
def test_rank_and_trace_plots(idata, function):
    fig = getattr(mp.plot, function)(idata, var_names=["shift", "flux"])
    assert isinstance(fig, matplotlib.figure.Figure)
    # one rank panel per element (2 shifts + 3 fluxes); a trace row of two per variable
    drawn = [a for a in fig.axes if a.get_title()]
    assert len(drawn) == (5 if function == "rank" else 4)
    _png(fig)
    with pytest.raises(KeyError):
        getattr(mp.plot, function)(idata, var_names=["sky"])


# -- the real data ----------------------------------------------------------------------
@pytest.mark.data
def test_stretch_shows_cosmos(shared_data_dir):
    hst, hsc = mp.datasets.load_cosmos(shared_data_dir, download=False)
    for obs in (hst, hsc):
        fig = mp.plot.observation(obs, norm=mp.plot.AsinhAutomaticNorm(obs), show_psf=True)
        _assert_shows_data(fig.axes[0].images[0].get_array(), obs.name)
        _png(fig)
