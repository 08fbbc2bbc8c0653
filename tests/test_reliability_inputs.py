"""Bad arguments and inputs give a clear error (type, argument, value, fix), or a right result.

One tiny field (a single 16 x 16 pixel band, one Gaussian galaxy, plus a second
observation that can be shifted) keeps every fit here to a fraction of a second.
"""

from __future__ import annotations

import astropy.units as u
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from astropy.wcs import WCS

import mobs_ppl as mp
from mobs_ppl import cli, inference
from mobs_ppl.psf import gaussian_psf

SIZE = 16
SIGMA = 0.1  # noise per pixel


def _wcs(scale=0.2, n=SIZE):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.cd = np.diag([-scale, scale]) / 3600.0
    w.wcs.crpix = [(n + 1) / 2, (n + 1) / 2]
    w.wcs.set()
    return w


def _observation(data, name, band, **kwargs):
    kwargs.setdefault("weights", SIGMA**-2)
    return mp.Observation(
        data, psf=gaussian_psf(1.0, 11), wcs=_wcs(), channels=[band], name=name, **kwargs
    )


@pytest.fixture(scope="module")
def tiny():
    """``(model, frame)``: one galaxy seen in two bands by two observations ("A", "B")."""
    rng = np.random.default_rng(1)
    blank = [_observation(np.zeros((SIZE, SIZE)), n, b) for n, b in (("A", "a"), ("B", "b"))]
    frame = mp.Frame.from_observations(blank)
    c = (SIZE - 1) / 2
    truth = mp.Scene(frame, [mp.GaussianSource((c, c), [20.0, 10.0], 2.0, box_size=11)])
    cube = truth.render()
    observations = []
    for obs in blank:
        data = np.array(obs.match(frame).render(cube)) + rng.normal(0, SIGMA, (1, SIZE, SIZE))
        observations.append(_observation(data, obs.name, obs.channels[0]).match(frame))
    start = mp.Scene(frame, [mp.GaussianSource((c + 0.3, c - 0.2), [15.0, 8.0], 2.3, box_size=11)])
    return mp.SceneModel(start, observations, shifts={"B": 0.5 * u.pix}), frame


# -- fit_map ----------------------------------------------------------------------------


@pytest.fixture
def no_decrement(monkeypatch):
    """fit_map(method="adam") without its closing Newton decrement (~20 s to compile).

    The step counts tested with it do not depend on the decrement (it only decides
    ``converged``): infinite, the fit reports itself unconverged.
    """
    monkeypatch.setattr(inference, "newton_decrement", lambda problem, z, seed=0: np.inf)


def test_adam_runs_exactly_max_iter_steps(tiny, no_decrement):
    # 30 is no multiple of check_every=25: it used to run 50 steps
    model, _ = tiny
    with pytest.warns(mp.MobsPplWarning, match="stopped after 30 steps"):
        fit = mp.fit_map(model, method="adam", max_iter=30, e_rel=0.0)
    assert fit.iterations == 30
    assert fit.losses.shape == (30,)


def test_adam_max_iter_below_check_every_as_a_whole_float(tiny, no_decrement):
    # fewer steps than one chunk; a whole number held by a float (as read from a
    # config file) is still a count
    model, _ = tiny
    with pytest.warns(mp.MobsPplWarning, match="stopped after 7 steps"):
        fit = mp.fit_map(model, method="adam", max_iter=7.0, e_rel=0.0)
    assert fit.losses.shape == (7,)


@pytest.mark.slow  # compiles the Newton step (~20 s)
def test_newton_runs_at_most_max_iter_steps(tiny):
    model, _ = tiny
    with pytest.warns(mp.MobsPplWarning, match="stopped after 2 steps"):
        fit = mp.fit_map(model, max_iter=2, tol=1e-12)
    assert fit.iterations == 2
    assert fit.losses.size <= 3  # the start and at most one accepted step per iteration


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"max_iter": 0}, ValueError, "max_iter must be at least 1; got 0"),
        ({"max_iter": -3, "method": "adam"}, ValueError, "max_iter must be at least 1"),
        ({"max_iter": 2.5}, TypeError, "max_iter must be a whole number .*2.5"),
        ({"max_iter": True}, TypeError, "max_iter must be a whole number"),
        ({"max_iter": "10"}, TypeError, "max_iter must be a whole number .*'10'"),
        ({"check_every": 0, "method": "adam"}, ValueError, "check_every must be at least 1"),
        ({"check_every": 2.5, "method": "adam"}, TypeError, "check_every must be a whole"),
        ({"tol": 0.0}, ValueError, "tol must be positive and finite; got 0.0"),
        ({"tol": float("nan")}, ValueError, "tol must be positive and finite; got nan"),
        ({"tol": float("inf")}, ValueError, "tol must be positive and finite; got inf"),
        ({"e_rel": -1e-4, "method": "adam"}, ValueError, "e_rel must be zero or positive"),
        ({"e_rel": float("nan")}, ValueError, "e_rel must be zero or positive and finite"),
        ({"seed": 1.5}, TypeError, "seed must be a whole number"),
        ({"method": "bfgs"}, ValueError, "method must be one of 'newton', 'adam'; got 'bfgs'"),
        ({"sites": []}, ValueError, "sites is empty.*sites=None"),
        ({"sites": ["spectrum", 3]}, TypeError, "sites must hold site names .*3"),
        ({"sites": 3}, TypeError, "sites must be a site name.*got 3"),
        ({"sites": ["spectra"]}, ValueError, "unknown site 'spectra'; sites are"),
        ({"init": [1.0]}, TypeError, "init must be a fit .*got list"),
        (
            {"init": {"center_0": jnp.zeros(3)}},
            ValueError,
            r"initial value of 'center_0' has shape \(3,\); the site's values have shape \(2,\)",
        ),
        (
            {"method": "adam", "step_sizes": {"spectra": 0.1}},
            ValueError,
            r"unknown kind of site 'spectra'; kinds: \[.*'spectrum'",
        ),
        (
            {"method": "adam", "step_sizes": {"spectrum": -0.1}},
            ValueError,
            r"step_sizes\['spectrum'\] must be positive",
        ),
        ({"method": "adam", "step_sizes": [0.1]}, TypeError, "step_sizes must be a mapping"),
        ({"step_sizes": {"spectrum": 0.1}}, ValueError, "step_sizes are Adam's.*method='adam'"),
    ],
)
def test_fit_map_rejects_bad_arguments(tiny, kwargs, error, message):
    model, _ = tiny
    with pytest.raises(error, match=message):
        mp.fit_map(model, **kwargs)


def test_newton_optimiser_checks_its_counts(tiny):
    from mobs_ppl.newton import PosteriorProblem, levenberg_marquardt
    from mobs_ppl.sites import split_sites

    model, _ = tiny
    problem = PosteriorProblem.build(model, *split_sites(model, None, None))
    with pytest.raises(ValueError, match="cg_max_steps must be at least 1; got 0"):
        levenberg_marquardt(problem, cg_max_steps=0)
    with pytest.raises(ValueError, match="n_projections must be at least 1"):
        levenberg_marquardt(problem, n_projections=0)
    with pytest.raises(TypeError, match="max_iter must be a whole number"):
        levenberg_marquardt(problem, max_iter=1.5)


# -- sample and laplace -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"num_chains": 0}, ValueError, "num_chains must be at least 1; got 0"),
        ({"num_samples": 0}, ValueError, "num_samples must be at least 1; got 0"),
        ({"num_samples": 10.5}, TypeError, "num_samples must be a whole number .*10.5"),
        ({"num_warmup": -1}, ValueError, "num_warmup must be at least 0; got -1"),
        ({"num_warmup": "100"}, TypeError, "num_warmup must be a whole number"),
        ({"sites": []}, ValueError, "sites is empty"),
        ({"sites": ["fluxes"]}, ValueError, "unknown site 'fluxes'"),
        ({"mass_matrix": "dense"}, ValueError, "mass_matrix must be one of 'laplace'.*'dense'"),
        ({"chain_method": "threads"}, ValueError, "chain_method must be one of .*'threads'"),
        ({"target_accept_prob": 1.0}, ValueError, "target_accept_prob must lie strictly"),
        ({"target_accept_prob": 0.0}, ValueError, "target_accept_prob must be positive"),
        ({"dense_mass": "yes"}, TypeError, "dense_mass must be True, False or None"),
        ({"seed": None}, TypeError, "seed must be a whole number"),
    ],
)
def test_sample_rejects_bad_arguments(tiny, kwargs, error, message):
    model, _ = tiny
    with pytest.raises(error, match=message):
        mp.sample(model, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"sites": []}, ValueError, "sites is empty"),
        ({"sites": ["radius_3"]}, ValueError, "unknown site 'radius_3'"),
        ({"rtol": 0.0}, ValueError, "rtol must be positive and finite; got 0.0"),
        ({"max_cg_steps": 0}, ValueError, "max_cg_steps must be at least 1; got 0"),
        ({"seed": 0.5}, TypeError, "seed must be a whole number"),
        ({"method": "exact"}, ValueError, "method must be one of 'auto', 'dense'.*'exact'"),
    ],
)
def test_laplace_rejects_bad_arguments(tiny, kwargs, error, message):
    model, _ = tiny
    with pytest.raises(error, match=message):
        mp.laplace(model, model.init_values(), **kwargs)


# -- SceneModel ---------------------------------------------------------------------------


def _rebuild(model, **kwargs):
    return mp.SceneModel(model.scene, model.observations, **kwargs)


def test_shifts_must_be_a_mapping(tiny):
    model, _ = tiny
    with pytest.raises(TypeError, match=r"shifts must be a mapping .*got \['B'\]"):
        _rebuild(model, shifts=["B"])


@pytest.mark.parametrize("scale", [np.inf, np.nan, -1.0, 0.0])
def test_shift_scale_must_be_positive_and_finite(tiny, scale):
    model, _ = tiny
    with pytest.raises(ValueError, match="shift scale for 'B' must be positive and finite; got"):
        _rebuild(model, shifts={"B": scale * u.pix})


def test_observations_must_not_be_empty(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match="observations is empty"):
        mp.SceneModel(model.scene, [])


@pytest.mark.parametrize(
    ("name", "prior", "message"),
    [
        # a shift prior without to_event: batch (1, 2) where the site draws one (1, 2)
        (
            "shift",
            dist.Normal(0.0, jnp.full((1, 2), 0.5)),
            r"prior for 'shift' draws values of shape \(1, 2\) \(batch \(1, 2\), event \(\)\); "
            r"the site's values have shape \(1, 2\).*to_event\(2\)",
        ),
        ("shift", dist.Normal(0.0, 0.5), r"'shift'.*expand\(\(1, 2\)\).to_event\(2\)"),
        (
            "center_0",
            dist.Normal(jnp.zeros(3), 1.0).to_event(1),
            r"prior for 'center_0' draws values of shape \(3,\).*shape \(2,\)",
        ),
        (
            "spectrum",
            dist.HalfNormal(jnp.ones((1, 3))),
            r"prior for 'spectrum' draws values of shape \(1, 3\).*shape \(1, 2\)",
        ),
        (
            "spectrum",
            dist.HalfNormal(jnp.ones((1, 2))).to_event(2),
            r"prior for 'spectrum' .*event \(1, 2\)",
        ),
    ],
)
def test_prior_of_the_wrong_shape(tiny, name, prior, message):
    model, _ = tiny
    with pytest.raises(ValueError, match=message):
        _rebuild(model, shifts={"B": 0.5 * u.pix}, priors={name: prior})


def test_priors_of_the_right_shape_are_accepted(tiny):
    # a scalar spectrum prior broadcasts over the plates; a shift prior with to_event
    model, _ = tiny
    priors = {
        "spectrum": dist.HalfNormal(100.0),
        "shift": dist.Normal(0.0, jnp.full((1, 2), 0.5)).to_event(2),
        "center_0": dist.Normal(jnp.full(2, 7.5), 2.0).to_event(1),
    }
    built = _rebuild(model, shifts={"B": 0.5 * u.pix}, priors=priors)
    assert built.priors == priors


def test_prior_for_unknown_site_and_priors_not_a_mapping(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match="prior for unknown site 'radius_1'"):
        _rebuild(model, priors={"radius_1": dist.LogNormal(0.0, 1.0)})
    with pytest.raises(TypeError, match="priors must be a mapping"):
        _rebuild(model, priors=[dist.LogNormal(0.0, 1.0)])


# -- Observation ----------------------------------------------------------------------------


def _field(seed=0):
    return np.random.default_rng(seed).normal(size=(2, SIZE, SIZE))


def _log_likelihood(obs):
    bound = obs.match(mp.Frame((obs.shape[0], SIZE, SIZE)))
    cube = jnp.full(bound.shape, 0.1)
    return float(bound.log_likelihood(cube))


def test_masked_data_pixel_counts_as_zero_weight():
    data = _field()
    weights = np.full(data.shape, 4.0)
    data[1, 3, 5] = 1e30
    masked = np.ma.masked_array(data, mask=np.zeros(data.shape, bool))
    masked[1, 3, 5] = np.ma.masked
    obs = mp.Observation(masked, weights=weights)
    assert float(obs.weights[1, 3, 5]) == 0.0
    assert float(obs.data[1, 3, 5]) == 0.0
    # the reference: the same pixel given weight zero by hand (its value then unused)
    zeroed = weights.copy()
    zeroed[1, 3, 5] = 0.0
    reference = mp.Observation(np.where(np.isfinite(data), data, 0.0), weights=zeroed)
    assert np.isfinite(_log_likelihood(obs))
    assert _log_likelihood(obs) == _log_likelihood(reference)
    # and the masked value does not leak into the estimated weights
    estimated = mp.Observation(masked)
    clean = data.copy()
    clean[1, 3, 5] = np.nan
    np.testing.assert_array_equal(
        np.asarray(estimated.weights)[:, 0, 0], mp.estimate_weights(clean)
    )


def test_masked_two_dimensional_data_and_nan_values():
    data = _field()[0]
    data[2, 2] = np.nan
    obs = mp.Observation(np.ma.masked_invalid(data), weights=1.0)
    assert obs.shape == (1, SIZE, SIZE)
    assert float(obs.weights[0, 2, 2]) == 0.0
    assert int(np.sum(np.asarray(obs.weights) == 0)) == 1


def test_masked_weights_count_as_zero_weight():
    data = _field()
    weights = np.ma.masked_array(np.full(data.shape, 4.0), mask=np.zeros(data.shape, bool))
    weights[0, 7, 7] = np.ma.masked
    weights.data[0, 7, 7] = np.nan  # the value under the mask is never read
    obs = mp.Observation(data, weights=weights)
    expected = np.full(data.shape, 4.0)
    expected[0, 7, 7] = 0.0
    np.testing.assert_array_equal(np.asarray(obs.weights), expected)


def test_masked_array_without_masked_pixels_is_the_plain_array():
    data = _field()
    plain = mp.Observation(data, weights=2.0)
    masked = mp.Observation(np.ma.masked_array(data), weights=2.0)
    np.testing.assert_array_equal(np.asarray(masked.data), np.asarray(plain.data))
    np.testing.assert_array_equal(np.asarray(masked.weights), np.asarray(plain.weights))


@pytest.mark.parametrize("shape", [(0, 8), (8, 0), (0, 8, 8), (2, 0, 8), (2, 8, 0)])
def test_empty_image_is_rejected(shape):
    with pytest.raises(ValueError, match=r"data is empty: shape .* at least one channel"):
        mp.Observation(np.zeros(shape), weights=1.0)


def test_empty_weights_are_rejected():
    with pytest.raises(ValueError, match="weights is empty"):
        mp.Observation(np.zeros((1, 8, 8)), weights=np.zeros((0, 8, 8)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"data": np.zeros(8)}, r"data must be \(height, width\) or \(channels, height, width\)"),
        (
            {"data": np.zeros((2, 8, 8)), "weights": np.ones((2, 8, 7))},
            r"weights shape \(2, 8, 7\) does not match data shape \(2, 8, 8\): give one number",
        ),
        (
            {"data": np.zeros((2, 8, 8)), "weights": np.ones(3)},
            "weights has 3 values per channel; the data has 2",
        ),
        (
            {"data": np.zeros((2, 8, 8)), "channels": ["g", "r", "i"]},
            "3 channel names for 2 channels of data",
        ),
        (
            {"data": np.zeros((3, 8, 8)), "psf": np.stack([gaussian_psf(1.0, 5)] * 2)},
            "2 channels but the data has 3",
        ),
    ],
)
def test_constructor_shape_errors_are_clear(kwargs, message):
    kwargs.setdefault("weights", 1.0)
    with pytest.raises(ValueError, match=message):
        mp.Observation(**kwargs)


def test_correlated_observation_keeps_the_mask_of_masked_data():
    # from_observation takes an Observation: the mask reaches it through the weights
    data = np.random.default_rng(2).normal(size=(1, 24, 24))
    masked = np.ma.masked_array(data, mask=np.zeros(data.shape, bool))
    masked[0, 4, 4] = np.ma.masked
    obs = mp.Observation(masked, weights=1.0)
    correlated = mp.CorrelatedObservation.from_observation(obs, radius=1)
    assert float(correlated.weights[0, 4, 4]) == 0.0
    assert int(np.sum(np.asarray(correlated.weights) == 0)) == 1


# -- the command line -------------------------------------------------------------------------


def _raising(error):
    def run(args):
        raise error

    return run


def test_cli_user_error_is_one_line(monkeypatch, capsys, tmp_path):
    message = "weights must be finite\nand non-negative"
    monkeypatch.setattr(cli, "_demo", _raising(ValueError(message)))
    code = cli.main(["demo", "--out", str(tmp_path)])
    assert code == 1
    err = capsys.readouterr().err
    assert err == "mobs-ppl: error: weights must be finite and non-negative\n"


@pytest.mark.parametrize(
    "error", [TypeError("bad type"), FileNotFoundError(2, "No such file", "x.fits")]
)
def test_cli_type_and_file_errors_are_one_line(monkeypatch, capsys, tmp_path, error):
    monkeypatch.setattr(cli, "_demo", _raising(error))
    assert cli.main(["demo", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mobs-ppl: error: ") and err.count("\n") == 1
    assert "Traceback" not in err


@pytest.mark.parametrize("where", ["before", "after"])
def test_cli_debug_prints_the_traceback(monkeypatch, capsys, tmp_path, where):
    monkeypatch.setattr(cli, "_demo", _raising(ValueError("bad value")))
    args = ["demo", "--out", str(tmp_path)]
    args = ["--debug", *args] if where == "before" else [*args, "--debug"]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "ValueError: bad value" in err
    assert err.endswith("mobs-ppl: error: bad value\n")


def test_cli_interrupt_exits_130(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(cli, "_demo", _raising(KeyboardInterrupt()))
    assert cli.main(["demo", "--out", str(tmp_path)]) == 130
    assert capsys.readouterr().err == "mobs-ppl: interrupted\n"


def test_cli_other_errors_are_not_hidden(monkeypatch, tmp_path):
    # a bug (not bad input) keeps its traceback
    monkeypatch.setattr(cli, "_demo", _raising(ZeroDivisionError("bug")))
    with pytest.raises(ZeroDivisionError):
        cli.main(["demo", "--out", str(tmp_path)])


def test_cli_missing_data_dir_is_one_error_line(capsys, tmp_path):
    missing = tmp_path / "nowhere"
    code = cli.main(["demo", "--out", str(tmp_path / "out"), "--data-dir", str(missing)])
    assert code != 0
    err = capsys.readouterr().err
    assert err.startswith("mobs-ppl: error:") and "nowhere" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--max-iter", "0", "argument --max-iter: must be at least 1; got 0"),
        ("--samples", "-1", "argument --samples: must be at least 0; got -1"),
        ("--warmup", "many", "argument --warmup: must be a whole number; got 'many'"),
    ],
)
def test_cli_bad_counts_are_usage_errors(capsys, tmp_path, option, value, message):
    with pytest.raises(SystemExit) as info:
        cli.main(["demo", "--out", str(tmp_path), option, value])
    assert info.value.code == 2
    assert message in capsys.readouterr().err
