"""Galaxies made of several components: grouped scenes, their fluxes, sites and files.

A galaxy with a colour gradient is modelled as several sources (e.g. a non-parametric
envelope and a compact core), each with its own spectrum, grouped into one galaxy:
``Scene(frame, sources, groups)``. Fluxes, the model's ``flux`` site, ArviZ dims and the
scene file treat each group as one source.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from astropy.wcs import WCS
from numpyro.infer import Predictive

import mobs_ppl as mp
from mobs_ppl.model import site_dims
from mobs_ppl.psf import gaussian_psf


def _frame(n=31):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.cd = np.diag([-0.05, 0.05]) / 3600.0
    w.wcs.crpix = [(n + 1) / 2, (n + 1) / 2]
    w.wcs.set()
    return mp.Frame((2, n, n), wcs=w, psf=gaussian_psf(1.0), channels=["a", "b"])


def _scene():
    frame = _frame()
    rng = np.random.default_rng(0)
    envelope = mp.Source((15.0, 15.0), [2.0, 1.0], rng.uniform(0.01, 0.2, (11, 11)))
    core = mp.GaussianSource((15.2, 14.9), [0.5, 1.5], 1.2, box_size=9)
    other = mp.GaussianSource((6.0, 24.0), [1.0, 1.0], 1.5, box_size=9)
    return mp.Scene(frame, [envelope, core, other], groups=[0, 0, 1])


def test_fluxes_sum_the_components_of_each_galaxy():
    scene = _scene()
    per_source = np.asarray(scene.source_fluxes())
    # direct: a non-parametric component's flux is its spectrum times the sum of its
    # morphology; a parametric profile has unit total flux (analytic, beyond its box)
    envelope, core, other = scene.sources
    direct = np.stack(
        [
            np.asarray(envelope.spectrum) * float(np.sum(envelope.morphology)),
            np.asarray(core.spectrum),
            np.asarray(other.spectrum),
        ]
    )
    np.testing.assert_allclose(per_source, direct, rtol=1e-12)
    np.testing.assert_allclose(scene.fluxes(), [direct[0] + direct[1], direct[2]], rtol=1e-12)
    assert scene.n_groups == 2
    assert scene.members(0) == (0, 1) and scene.members(1) == (2,)


@pytest.mark.parametrize(
    "groups, match",
    [([0, 1], "one integer per source"), ([1, 0, 0], "first appearance"), ([0, 2, 2], "order")],
)
def test_groups_are_validated(groups, match):
    scene = _scene()
    with pytest.raises(ValueError, match=match):
        mp.Scene(scene.frame, scene.sources, groups=groups)


def test_default_groups_are_one_per_source():
    scene = _scene()
    plain = mp.Scene(scene.frame, scene.sources)
    assert plain.groups == (0, 1, 2) and plain.n_groups == 3


def test_model_flux_site_is_per_galaxy_with_named_dims():
    scene = _scene()
    obs = mp.Observation(
        np.zeros((2, 31, 31)),
        weights=1e4,
        psf=gaussian_psf(1.0),
        wcs=scene.frame.wcs,
        channels=["a", "b"],
    )
    model = mp.SceneModel(scene, [obs])
    draws = Predictive(model, num_samples=3)(jax.random.PRNGKey(0), observed=False)
    assert draws["flux"].shape == (3, 2, 2)  # (draw, galaxy, channel)
    assert draws["spectrum"].shape == (3, 3, 2)  # (draw, component, channel)
    dims, coords = site_dims(model)
    assert dims["flux"] == ["source", "channel"]
    assert dims["spectrum"] == ["component", "channel"]
    assert coords["source"] == [0, 1] and coords["component"] == [0, 1, 2]


def test_grouped_scene_round_trips_through_its_file(tmp_path):
    scene = _scene()
    path = tmp_path / "scene.npz"
    mp.save_scene(path, scene)
    loaded = mp.load_scene(path)
    assert loaded.groups == scene.groups
    np.testing.assert_array_equal(loaded.fluxes(), scene.fluxes())
    a, b = scene.sources[0].envelope, loaded.sources[0].envelope
    np.testing.assert_array_equal(a.params, b.params)
    assert a.cv == b.cv
