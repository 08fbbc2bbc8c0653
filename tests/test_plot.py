"""Plots run on small synthetic data and draw what they claim."""

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


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(3)
    hst = mp.Observation(
        rng.normal(0, 0.1, (1, 40, 40)),
        weights=100.0,
        psf=gaussian_psf(1.2),
        wcs=_wcs(0.03, (40, 40)),
        channels=["F814W"],
        name="HST",
    )
    hsc = mp.Observation(
        rng.normal(0, 0.1, (3, 10, 10)),
        weights=100.0,
        psf=gaussian_psf(1.5, 15),
        wcs=_wcs(0.12, (10, 10)),
        channels=["g", "r", "i"],
        name="HSC",
    )
    frame = mp.Frame.from_observations([hst, hsc])
    scene = mp.Scene(frame, [mp.GaussianSource((20.0, 21.0), np.ones(4), 3.0)])
    return hst, hsc, frame, scene


def test_norm_maps_into_unit_interval(setup):
    hst, *_ = setup
    norm = mp.plot.AsinhAutomaticNorm(hst)
    values = np.asarray(norm(np.linspace(-10, 10, 50)))
    assert values.min() >= 0 and values.max() <= 1
    assert np.all(np.diff(values) >= 0)


def test_observation_plot_has_psf_panel_and_labels(setup):
    hst, *_ = setup
    fig = mp.plot.observation(hst, show_psf=True, add_peaks=[[10.0, 12.0], [20.0, 5.0]])
    assert len(fig.axes) == 2
    assert [t.get_text() for t in fig.axes[0].texts] == ["0", "1"]
    plt.close(fig)


def test_scene_plot_panels(setup):
    _, hsc, frame, scene = setup
    fig = mp.plot.scene(
        scene,
        observation=hsc,
        show_rendered=True,
        show_observed=True,
        show_residual=True,
        add_labels=True,
        add_boxes=True,
    )
    assert [a.get_title() for a in fig.axes] == ["Model", "Rendered", "Observed", "Residual"]
    assert fig.axes[0].patches  # the source box on the model panel
    plt.close(fig)


def test_corner_labels_follow_coordinates(setup):
    import arviz as az
    import xarray as xr

    posterior = xr.Dataset(
        {
            "shift": (
                ("chain", "draw", "observation", "axis"),
                np.random.default_rng(0).normal(size=(2, 50, 1, 2)),
            )
        },
        coords={"observation": ["HSC"], "axis": ["y", "x"]},
    )
    idata = az.InferenceData(posterior=posterior)
    fig = mp.plot.corner(idata, var_names=["shift"])
    labels = [a.get_xlabel() for a in fig.axes if a.get_xlabel()]
    assert "shift[HSC, x]" in labels
    plt.close(fig)
    with pytest.raises(KeyError):
        mp.plot.corner(idata, var_names=["flux"])
