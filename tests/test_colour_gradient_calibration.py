"""Calibration of the default flow on blends of galaxies with colour gradients.

Twenty two-galaxy blends from the numpy simulator of ``colour_gradients`` (red bulge +
blue disk with offset centres: not a profile the model has), each with a known random
HSC shift, go through the default flow a user runs: ``mp.init.from_observation`` with
the catalogue (``cores="auto"``) -> forced photometry -> ``mp.fit_map`` ->
``mp.laplace`` (all sites: marginal errors). The z-scores of the shift and of the
galaxies' fluxes against the truth test the error bars. ``benchmarks/colour_gradients.py``
prints the same numbers for any number of scenes.

The batch takes ~25 CPU minutes (compilation dominates: every scene has its own box
sizes); it runs in two spawned processes.
"""

from __future__ import annotations

import numpy as np
import pytest

from colour_gradients import run_batch, summary

N_SCENES = 20

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def batch():
    results = run_batch(range(N_SCENES), workers=2)
    numbers = summary(results)
    for r in results:
        print(
            f"scene {r.seed}: groups {r.groups}, {r.iterations} steps, decrement "
            f"{r.decrement:.3f}, shift z {np.round(r.z_shift, 2)}, max |flux z| "
            f"{np.nanmax(np.abs(r.z_flux)):.2f}, {r.seconds:.0f} s"
        )
    print(numbers)
    return results, numbers


def test_default_fit_converges_and_laplace_never_refuses(batch):
    results, numbers = batch
    assert numbers["converged"] == N_SCENES, [r.seed for r in results if not r.converged]
    assert numbers["refused"] == 0, [(r.seed, r.refused) for r in results if r.refused]


def test_shift_and_flux_errors_do_not_get_worse(batch):
    # regression bounds above the measured values (shift z sd 2.57 / 1.60, flux
    # coverage 48% / 80% of the 68% / 95% intervals, on this batch)
    _, numbers = batch
    assert np.all(numbers["shift_z_sd"] < 3.5)
    assert numbers["flux_cover_68"] > 0.35 and numbers["flux_cover_95"] > 0.65


@pytest.mark.xfail(
    strict=True,
    reason="issue 13, open: the marginal shift z-scores have sd 2.57 (y) and 1.60 (x), "
    "max |z| 5.5, against 1 +- 0.25 and 4: scene-dependent bias from the flux split "
    "between overlapping galaxies, not a wrong width (replicates of one scene scatter "
    "as the Laplace sd says); see docs/inference.md",
)
def test_shift_z_scores_are_calibrated(batch):
    _, numbers = batch
    assert np.all(np.abs(numbers["shift_z_sd"] - 1) <= 0.25)
    assert numbers["shift_z_max"] <= 4


@pytest.mark.xfail(
    strict=True,
    reason="issue 13, open: fluxes cover at 48% / 80% against 68% / 95%",
)
def test_fluxes_cover_at_their_nominal_rates(batch):
    _, numbers = batch
    assert abs(numbers["flux_cover_68"] - 0.68) <= 0.07
    assert abs(numbers["flux_cover_95"] - 0.95) <= 0.04
