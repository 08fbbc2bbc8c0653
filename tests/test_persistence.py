"""Round trips of scenes, MAP fits and posteriors through files (mobs_ppl.persistence).

A scene must come back bit for bit: the frame (shape, channels, WCS, model PSF) and
every source kind with all of its constructor values, so that it renders the same cube.
A fit comes back with the same parameters, loss history and convergence flag, for the
model the user builds again; a posterior comes back as the same ArviZ data (values,
dimensions, coordinates) from netCDF.
"""

from __future__ import annotations

import astropy.units as u
import numpy as np
import pytest
from astropy.wcs import WCS

import mobs_ppl as mp
from mobs_ppl.psf import gaussian_psf


def _wcs(scale, n, offset=(0.0, 0.0)):
    """TAN WCS with ``scale`` arcsec pixels, ``n x n`` pixels, tangent point near the centre."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.1, 2.2]
    w.wcs.cd = np.diag([-scale, scale]) / 3600.0
    w.wcs.crpix = [(n - 1) / 2 + offset[1] + 1, (n - 1) / 2 + offset[0] + 1]
    w.wcs.set()
    return w


@pytest.fixture(scope="module")
def setup():
    """Two small observations (24x24 fine, 8x8 coarse), the frame, a 2-source scene."""
    rng = np.random.default_rng(7)
    fine = mp.Observation(
        np.zeros((1, 24, 24)),
        weights=1.0,
        psf=gaussian_psf(1.1),
        wcs=_wcs(0.05, 24),
        channels=["A"],
        name="fine",
    )
    coarse = mp.Observation(
        np.zeros((2, 8, 8)),
        weights=1.0,
        psf=np.stack([gaussian_psf(1.0, 15), gaussian_psf(0.9, 15)]),
        wcs=_wcs(0.15, 8, (0.1, -0.1)),
        channels=["b", "c"],
        name="coarse",
    )
    frame = mp.Frame.from_observations([fine, coarse])
    cy, cx = (frame.shape[1] - 1) / 2, (frame.shape[2] - 1) / 2
    truth = mp.Scene(
        frame,
        [
            mp.GaussianSource((cy + 3, cx - 3), [20.0, 4.0, 5.0], 2.0, (0.1, -0.2), box_size=13),
            mp.PointSource((cy - 4.3, cx + 3.6), [10.0, 3.0, 2.0], box_size=9),
        ],
    )
    cube = truth.render()
    observations = []
    for obs, sigma in ((fine, 0.2), (coarse, 0.05)):
        matched = obs.match(frame)
        data = np.asarray(matched.render(cube)) + rng.normal(0, sigma, obs.shape)
        observations.append(
            mp.Observation(
                data,
                weights=sigma**-2,
                psf=np.asarray(obs.psf),
                wcs=obs.wcs,
                channels=list(obs.channels),
                name=obs.name,
            ).match(frame)
        )
    return frame, truth, observations


@pytest.fixture(scope="module")
def model(setup):
    frame, truth, observations = setup
    init = mp.Scene(
        frame,
        [
            truth.sources[0].with_spectrum([15.0, 3.0, 4.0]),
            truth.sources[1].with_spectrum([8.0, 2.0, 2.0]),
        ],
    )
    return mp.SceneModel(init, observations, shifts={"coarse": 0.05 * u.arcsec})


@pytest.fixture(scope="module")
def fit(model):
    return mp.fit_map(model, max_iter=100)


@pytest.fixture(scope="module")
def posterior(model, fit, tmp_path_factory):
    """NUTS started from a fit that went through a file (as when resuming work)."""
    path = tmp_path_factory.mktemp("fit") / "fit.npz"
    mp.save_fit(path, fit)
    loaded = mp.load_fit(path, model)
    return mp.sample(
        model,
        init=loaded,
        sites=["spectrum", "shift"],
        num_warmup=30,
        num_samples=20,
        num_chains=2,
    )


def _all_kinds_scene(frame):
    """A scene holding every source kind, with non-default values everywhere."""
    rng = np.random.default_rng(3)
    n = frame.n_channels
    cy, cx = (frame.shape[1] - 1) / 2, (frame.shape[2] - 1) / 2
    return mp.Scene(
        frame,
        [
            mp.Source((cy + 0.3, cx - 2.7), rng.uniform(1, 5, n), rng.uniform(0.01, 0.99, (7, 5))),
            mp.PointSource((cy - 3.21, cx + 1.7), rng.uniform(1, 5, n), box_size=11),
            mp.GaussianSource(
                (cy + 4.1, cx + 4.4), rng.uniform(1, 5, n), 1.7, (0.31, -0.17), 15, oversample=4
            ),
            mp.SersicSource(
                (cy - 5.5, cx - 4.9), rng.uniform(1, 5, n), 2.3, 2.7, (-0.2, 0.45), 17, 3
            ),
        ],
    )


def _assert_same_scene(a: mp.Scene, b: mp.Scene):
    assert a.frame.shape == b.frame.shape
    assert a.frame.channels == b.frame.channels
    if a.frame.psf is None:
        assert b.frame.psf is None
    else:
        np.testing.assert_array_equal(np.asarray(a.frame.psf), np.asarray(b.frame.psf))
    if a.frame.wcs is None:
        assert b.frame.wcs is None
    else:
        assert a.frame.wcs.to_header_string(relax=True) == b.frame.wcs.to_header_string(relax=True)
        ys, xs = np.mgrid[-3 : a.frame.shape[1] + 3 : 2.5, -3 : a.frame.shape[2] + 3 : 2.5]
        for got, want in zip(
            b.frame.wcs.pixel_to_world_values(xs, ys),
            a.frame.wcs.pixel_to_world_values(xs, ys),
            strict=True,
        ):
            np.testing.assert_array_equal(got, want)
    assert len(a.sources) == len(b.sources)
    for s, t in zip(a.sources, b.sources, strict=True):
        assert type(s) is type(t)
        assert s.box_shape == t.box_shape
        assert s.origin == t.origin
        np.testing.assert_array_equal(np.asarray(s.center), np.asarray(t.center))
        np.testing.assert_array_equal(np.asarray(s.spectrum), np.asarray(t.spectrum))
        params_s, params_t = s.parameters(), t.parameters()
        assert params_s.keys() == params_t.keys()
        for key in params_s:
            np.testing.assert_array_equal(np.asarray(params_s[key]), np.asarray(params_t[key]))
        assert getattr(s, "oversample", None) == getattr(t, "oversample", None)
        np.testing.assert_array_equal(np.asarray(s.image()), np.asarray(t.image()))
    np.testing.assert_array_equal(np.asarray(a.render()), np.asarray(b.render()))


# -- scenes ----------------------------------------------------------------------------


def test_scene_round_trip_all_source_kinds(setup, tmp_path):
    frame = setup[0]
    scene = _all_kinds_scene(frame)
    path = tmp_path / "scene.npz"
    mp.save_scene(path, scene)
    loaded = mp.load_scene(path)
    _assert_same_scene(scene, loaded)
    # the documented keys are there, and saving again gives the same content
    with np.load(path, allow_pickle=False) as archive:
        first = {k: archive[k] for k in archive.files}
    assert str(first["format"]) == "mobs_ppl.scene"
    assert [str(first[f"source_{i}_kind"]) for i in range(4)] == [
        "Source",
        "PointSource",
        "GaussianSource",
        "SersicSource",
    ]
    np.testing.assert_array_equal(first["source_2_ellipticity"], [0.31, -0.17])
    assert float(first["source_3_n"]) == 2.7
    assert int(first["source_3_box_size"]) == 17 and int(first["source_3_oversample"]) == 3
    mp.save_scene(tmp_path / "again.npz", loaded)
    with np.load(tmp_path / "again.npz", allow_pickle=False) as archive:
        assert archive.files == list(first)
        for key in archive.files:
            np.testing.assert_array_equal(archive[key], first[key])


def test_scene_round_trip_with_an_in_memory_wcs_is_exact(tmp_path):
    # 0.04 / 3600 has more digits than a FITS header keeps: the file restores them
    wcs = _wcs(0.04, 30)
    wcs.wcs.crval = [150.123456789012345, 2.21098765432109876]
    wcs.wcs.set()
    frame = mp.Frame((2, 30, 30), wcs=wcs, channels=["x", "y"], psf=gaussian_psf(0.83))
    scene = _all_kinds_scene(frame)
    mp.save_scene(tmp_path / "s.npz", scene)
    _assert_same_scene(scene, mp.load_scene(tmp_path / "s.npz"))


def test_scene_round_trip_without_wcs_or_psf(tmp_path):
    frame = mp.Frame((3, 20, 22))
    scene = mp.Scene(
        frame,
        [
            mp.PointSource((9.6, 10.2), [1.0, 2.0, 3.0], box_size=7),
            mp.GaussianSource((5.0, 6.0), [1.0, 1.0, 1.0], 1.2),
        ],
    )
    mp.save_scene(tmp_path / "plain.npz", scene)
    loaded = mp.load_scene(tmp_path / "plain.npz")
    assert loaded.frame.wcs is None and loaded.frame.psf is None
    _assert_same_scene(scene, loaded)


def test_loaded_scene_builds_the_same_model(model, tmp_path):
    mp.save_scene(tmp_path / "init.npz", model.scene)
    again = mp.SceneModel(
        mp.load_scene(tmp_path / "init.npz"),
        list(model.observations),
        shifts={"coarse": 0.05 * u.arcsec},
    )
    assert again.site_names == model.site_names
    for key, value in model.init_values().items():
        np.testing.assert_array_equal(np.asarray(again.init_values()[key]), np.asarray(value))


def test_save_scene_rejects_unknown_source_kind(setup, tmp_path):
    class Custom(mp.PointSource):
        pass

    frame = setup[0]
    scene = mp.Scene(frame, [Custom((10.0, 10.0), np.ones(frame.n_channels))])
    with pytest.raises(TypeError, match="Custom"):
        mp.save_scene(tmp_path / "x.npz", scene)
    with pytest.raises(TypeError, match="Scene"):
        mp.save_scene(tmp_path / "x.npz", "not a scene")


@pytest.mark.parametrize("missing", ["source_1_box_size", "source_3_n", "source_0_morphology"])
def test_load_scene_names_the_missing_entry_of_an_incomplete_file(setup, tmp_path, missing):
    mp.save_scene(tmp_path / "scene.npz", _all_kinds_scene(setup[0]))
    with np.load(tmp_path / "scene.npz", allow_pickle=False) as archive:
        full = {k: archive[k] for k in archive.files}
    np.savez(tmp_path / "cut.npz", **{k: v for k, v in full.items() if k != missing})
    with pytest.raises(ValueError, match=f"lacks the entry '{missing}'"):
        mp.load_scene(tmp_path / "cut.npz")
    np.savez(tmp_path / "odd.npz", **{**full, "source_2_kind": np.asarray("Spiral")})
    with pytest.raises(ValueError, match="unknown kind 'Spiral'"):
        mp.load_scene(tmp_path / "odd.npz")


def test_load_scene_rejects_other_files(fit, tmp_path):
    mp.save_fit(tmp_path / "fit.npz", fit)
    with pytest.raises(ValueError, match="mobs_ppl.scene"):
        mp.load_scene(tmp_path / "fit.npz")
    np.savez(tmp_path / "junk.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="format"):
        mp.load_scene(tmp_path / "junk.npz")


# -- fits ------------------------------------------------------------------------------


def test_fit_round_trip(model, fit, tmp_path):
    path = tmp_path / "fit.npz"
    mp.save_fit(path, fit)
    loaded = mp.load_fit(path, model)
    assert isinstance(loaded, mp.MAPResult)
    assert loaded.model is model
    assert loaded.params.keys() == fit.params.keys()
    for key, value in fit.params.items():
        np.testing.assert_array_equal(np.asarray(loaded.params[key]), np.asarray(value))
    np.testing.assert_array_equal(loaded.losses, fit.losses)
    assert loaded.best_iteration == fit.best_iteration
    assert loaded.converged == fit.converged
    assert loaded.svi_state is None and loaded.guide is None
    np.testing.assert_array_equal(loaded.shift("coarse"), fit.shift("coarse"))
    np.testing.assert_array_equal(loaded.shift_native("coarse"), fit.shift_native("coarse"))
    np.testing.assert_array_equal(np.asarray(loaded.scene.render()), np.asarray(fit.scene.render()))
    for key, value in fit.deterministic().items():
        np.testing.assert_array_equal(loaded.deterministic()[key], value)


def test_loaded_fit_initialises_sampling(posterior, fit):
    assert set(posterior.fixed) == set(fit.params) - {"spectrum", "shift"}
    for key, value in posterior.fixed.items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(fit.params[key]))
    assert np.all(np.isfinite(posterior.samples()["spectrum"]))


def test_load_fit_rejects_another_model(setup, model, fit, tmp_path):
    mp.save_fit(tmp_path / "fit.npz", fit)
    frame, truth, observations = setup
    unshifted = mp.SceneModel(model.scene, observations)  # no "shift" site
    with pytest.raises(ValueError, match="another model"):
        mp.load_fit(tmp_path / "fit.npz", unshifted)
    other = mp.SceneModel(
        mp.Scene(
            frame,
            [
                mp.Source(model.scene.sources[0].center, [1.0, 1.0, 1.0], np.full((5, 5), 0.5)),
                model.scene.sources[1],
            ],
        ),
        observations,
        shifts={"coarse": 0.05 * u.arcsec},
    )
    with pytest.raises(ValueError, match="another model"):
        mp.load_fit(tmp_path / "fit.npz", other)
    mp.save_scene(tmp_path / "scene.npz", model.scene)
    with pytest.raises(ValueError, match="mobs_ppl.fit"):
        mp.load_fit(tmp_path / "scene.npz", model)


def test_load_fit_rejects_wrong_shapes(model, fit, tmp_path):
    mp.save_fit(tmp_path / "fit.npz", fit)
    with np.load(tmp_path / "fit.npz") as archive:
        content = {k: archive[k] for k in archive.files}
    content["param_spectrum"] = content["param_spectrum"][:1]
    np.savez(tmp_path / "bad.npz", **content)
    with pytest.raises(ValueError, match="shape"):
        mp.load_fit(tmp_path / "bad.npz", model)


# -- posteriors ------------------------------------------------------------------------


def _groups(idata):
    return set(idata.groups())


@pytest.mark.parametrize("what", ["result", "idata"])
def test_posterior_round_trip(posterior, tmp_path, what):
    idata = posterior.to_arviz()
    path = tmp_path / "posterior.nc"
    mp.save_posterior(path, posterior if what == "result" else idata)
    loaded = mp.load_posterior(path)
    assert _groups(loaded) == _groups(idata)
    assert {"posterior", "sample_stats", "log_likelihood", "observed_data"} <= _groups(loaded)
    for group in _groups(idata):
        want, got = idata[group], loaded[group]
        assert set(got.data_vars) == set(want.data_vars), group
        for name in want.data_vars:
            assert got[name].dims == want[name].dims, (group, name)
            np.testing.assert_array_equal(got[name].values, want[name].values)
        for coord in want.coords:
            np.testing.assert_array_equal(got[coord].values, want[coord].values)
    assert list(loaded.posterior["channel"].values) == ["A", "b", "c"]
    assert list(loaded.posterior["observation"].values) == ["coarse"]
    assert loaded.sample_stats["diverging"].dtype == bool
    # the file is closed: it can be replaced right away
    mp.save_posterior(path, idata)


def test_save_posterior_rejects_other_objects(fit, tmp_path):
    with pytest.raises(TypeError, match="PosteriorResult"):
        mp.save_posterior(tmp_path / "p.nc", fit)
    with pytest.raises(FileNotFoundError):
        mp.load_posterior(tmp_path / "missing.nc")


def test_persistence_is_exported():
    for name in ("save_scene", "load_scene", "save_fit", "load_fit"):
        assert name in mp.__all__
        assert name in mp.persistence.__all__
    assert "save_posterior" in mp.__all__ and "load_posterior" in mp.__all__
