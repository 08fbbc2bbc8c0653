"""Calibration of posterior intervals: do 68% and 95% intervals hold the truth that often?

Scenes are simulated from the model's own forward model (``tests/simulations.py``,
:class:`CalibrationProblem`): a one-band fine image (0.03"/px) and a five-band coarse
one (0.168"/px, resampled onto the model frame), two blended Gaussian galaxies whose
morphologies are known and held at their true values. The likelihood is then exactly
right, so what is tested is the sampler (NUTS) and the priors: the spectra and the
shift of the coarse image are drawn from the model's default priors, simulated with
noise, and sampled (``spectrum`` and ``shift``); each scene gives 12 fluxes and 2
shift components, each checked against its central 68% and 95% intervals.

The quick test (default run) has 6 scenes (84 checks per level), one chain of 200
draws each. Its bounds are 3.5 binomial standard deviations of a coverage fraction
over 84 independent checks: 68% +- 17.8% and 95% - 8.3% (a coverage cannot exceed
100%). The slow test has 50 scenes (700 checks per level), two chains of 200 draws
each, shared out between two processes, and the bounds of the issue: 68 +- 7% and
95 +- 4%. NUTS warms up for 150 steps with the Laplace metric of ``mp.sample`` (see
``CalibrationProblem``). ``benchmarks/calibration.py`` runs any number of scenes and
prints the table.
"""

from __future__ import annotations

import os
import pathlib
import sys
import time

import numpy as np
import pytest

import mobs_ppl as mp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from simulations import (  # noqa: E402
    INTERVALS,
    CalibrationProblem,
    binomial_halfwidth,
    coverage_table,
    pooled,
    run_calibration,
)

QUICK_SCENES = 6
QUICK_NUTS = {"num_warmup": 150, "num_samples": 200, "num_chains": 1}
QUICK_N_SD = 3.5
SLOW_SCENES = 50
SLOW_NUTS = {"num_warmup": 150, "num_samples": 200, "num_chains": 2}
SLOW_BOUNDS = {0.68: 0.07, 0.95: 0.04}
MAX_R_HAT = 1.1


def _report(label, results, rows, seconds):
    times = np.array([r.seconds for r in results])
    print(
        f"\n{label}: {len(results)} scenes in {seconds:.0f} s (per scene: median "
        f"{np.median(times):.1f} s, first {times[0]:.1f} s with compilation); largest R-hat "
        f"{max(r.r_hat for r in results):.3f}; divergences "
        f"{sum(r.divergences for r in results)}\n{coverage_table(rows)}"
    )


def _check_chains(results, draws):
    assert max(r.r_hat for r in results) < MAX_R_HAT
    # a handful of divergent transitions is tolerable, a broken geometry is not
    assert sum(r.divergences for r in results) <= 0.01 * len(results) * draws


@pytest.fixture(scope="module")
def quick_problem():
    return CalibrationProblem(**QUICK_NUTS)


def test_quick_calibration(quick_problem):
    start = time.perf_counter()
    results, rows = run_calibration(QUICK_SCENES, first_seed=0, problem=quick_problem)
    _report("quick calibration", results, rows, time.perf_counter() - start)
    _check_chains(results, QUICK_NUTS["num_samples"] * QUICK_NUTS["num_chains"])
    for level in INTERVALS:
        row = pooled(rows, level)
        half = binomial_halfwidth(level, row.total, QUICK_N_SD)
        assert row.total == QUICK_SCENES * 14
        assert level - half <= row.fraction <= min(level + half, 1.0), (level, row)


def test_problem_draws_truth_from_the_priors(quick_problem):
    """Spectra and shifts of the calibration come from the model's own default priors."""
    problem = quick_problem
    priors = problem.template.default_priors()
    rng = np.random.default_rng(0)
    truths = [problem.draw_truth(rng) for _ in range(100)]
    spectra = np.stack([t["spectrum"] for t in truths])
    shifts = np.stack([t["shift"] for t in truths])
    # HalfNormal(scale): mean = scale sqrt(2 / pi); Normal(0, scale) for the shift
    scale = np.asarray(priors["spectrum"].scale)
    ratio = spectra.mean(axis=0) / scale
    np.testing.assert_allclose(ratio.mean(), np.sqrt(2 / np.pi), rtol=0.05)
    np.testing.assert_allclose(ratio, np.sqrt(2 / np.pi), rtol=0.35)
    shift_scale = problem.template.shift_scales[0]
    assert np.std(shifts) == pytest.approx(shift_scale, rel=0.15)
    # the data are a draw of the likelihood: the residual of the truth is pure noise
    truth = truths[0]
    hst, hsc = problem.simulate(truth, seed=0)
    model = problem.model_with_data(hst, hsc)
    scene = model.realise({k: np.asarray(v) for k, v in truth.items()})
    cube = scene.render()  # convolved with the model PSF, as Observation.render expects
    obs = model.observations[0]
    residual = (hst - np.asarray(obs.render(cube))) / problem.sigma_fine
    assert abs(residual.std() - 1) < 0.05
    assert abs(residual.mean()) < 0.05


@pytest.mark.slow
def test_calibration_coverage():
    workers = min(2, len(os.sched_getaffinity(0)))
    start = time.perf_counter()
    results, rows = run_calibration(SLOW_SCENES, first_seed=1000, workers=workers, **SLOW_NUTS)
    seconds = time.perf_counter() - start
    _report(f"calibration ({workers} workers)", results, rows, seconds)
    _check_chains(results, SLOW_NUTS["num_samples"] * SLOW_NUTS["num_chains"])
    for level, bound in SLOW_BOUNDS.items():
        row = pooled(rows, level)
        assert row.total == SLOW_SCENES * 14
        assert abs(row.fraction - level) <= bound, (level, row)


@pytest.mark.slow
def test_calibration_sampler_is_mp_sample():
    """The compiled-once sampler of the calibration gives the posterior of ``mp.sample``."""
    problem = CalibrationProblem()
    truth = problem.draw_truth(np.random.default_rng(7))
    hst, hsc = problem.simulate(truth, seed=7)
    fixed = problem.fixed_values(truth)
    start, hess = problem.map_estimate(hst, hsc, fixed)
    draws, _ = problem.sample(hst, hsc, fixed, start, hess, seed=7)
    post = mp.sample(
        problem.model_with_data(hst, hsc),
        init={**fixed, **start},
        sites=["spectrum", "shift"],
        num_warmup=200,
        num_samples=300,
        num_chains=2,
        seed=8,
        chain_method="sequential",
    )
    reference = post.samples()
    for name in ("flux", "shift_native"):
        ours = draws[name].reshape((-1, *draws[name].shape[2:]))
        theirs = np.asarray(reference[name])
        sd = theirs.std(axis=0)
        # Monte Carlo error of two independent runs of ~600 draws each
        assert np.all(np.abs(ours.mean(axis=0) - theirs.mean(axis=0)) < 0.3 * sd), name
        np.testing.assert_allclose(ours.std(axis=0), sd, rtol=0.25)
