"""The tutorials are valid jupytext notebooks and run from start to end on the shared data."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

TUTORIALS = sorted((pathlib.Path(__file__).resolve().parents[1] / "tutorials").glob("*.py"))


def test_there_are_tutorials():
    assert TUTORIALS, "tutorials/ holds no tutorial"


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_is_a_notebook(path):
    jupytext = pytest.importorskip("jupytext")
    notebook = jupytext.read(path)
    kinds = [cell.cell_type for cell in notebook.cells]
    assert kinds.count("markdown") >= 3 and kinds.count("code") >= 3
    assert notebook.cells[0].cell_type == "markdown"  # it opens with its story


@pytest.mark.slow
@pytest.mark.data
@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_runs(path, shared_data_dir, tmp_path):
    env = {
        **os.environ,
        "MPLBACKEND": "Agg",
        "MOBS_PPL_DATA_DIR": str(shared_data_dir),
        "MOBS_PPL_TUTORIAL_OUT": str(tmp_path),
        # fewer NUTS draws (the tutorial's numbers checked below do not depend on them)
        "MOBS_PPL_TUTORIAL_QUICK": "1",
    }
    result = subprocess.run(
        [sys.executable, str(path)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    print(result.stdout[-3000:])
    assert result.returncode == 0, result.stderr[-3000:]
    figures = sorted(p.name for p in tmp_path.glob("*.png"))
    assert len(figures) >= 4, figures
    check = NUMBER_CHECKS.get(path.stem)
    if check is not None:
        check(json.loads((tmp_path / "numbers.json").read_text()))


def _check_joint_cosmos_flow(numbers):
    """The joint-detection COSMOS flow of ``02_multi_observation`` (issue 13's criteria).

    The conditional Laplace approximation is not off-mode (decrement <= 1, where
    ``laplace`` would warn); marginal error bars are never narrower than conditional
    ones; every native HSC band and F814W has chi2/dof <= 1.5 (from HST detections
    alone the galaxy on the HSC edge is missing and i, z, y stay far above). Then the
    fit must have reached the mode (Newton decrement below 0.1): the tutorial stops at
    150 steps, where the decrement is ~0.8 (the HSC-edge galaxy's flux-position
    valley), so this last criterion of issue 13 is an expected failure until that is
    solved (and with it the marginal approximation's decrement, which at that point is
    about the fit's).
    """
    assert numbers["laplace_decrement_conditional"] <= 1.0
    marginal = np.asarray(numbers["shift_native_sd_px"])
    conditional = np.asarray(numbers["shift_native_sd_px_conditional"])
    assert np.all(marginal >= conditional), numbers
    assert all(v <= 1.5 for v in numbers["chi2_per_dof"].values()), numbers["chi2_per_dof"]
    assert set(numbers["chi2_per_dof"]) == {"F814W", "g", "r", "i", "z", "y"}
    if not (numbers["converged"] and numbers["decrement"] < 0.1):
        pytest.xfail(
            f"issue 13, open: the joint COSMOS fit stops at Newton decrement "
            f"{numbers['decrement']:.2f} after {numbers['iterations']} steps (tolerance 0.1); "
            f"marginal Laplace decrement {numbers['laplace_decrement']:.2f}"
        )
    # at the mode, the marginal approximation (every site free) is on-mode too
    assert numbers["laplace_decrement"] <= 1.0


def _check_quickstart(numbers):
    """The single-HSC blend of ``01_quickstart``.

    Independent references: the data's own noise (chi2/dof of a model that explains the
    data down to the noise is ~1; 0.5-2 allows for the variance maps' calibration and
    for the unmodelled faint neighbour at the image edge) and the catalogue shipped
    with the data (each fitted source's light-weighted centre within 1.5 pixels of its
    entry: the entries are whole-pixel peak positions, so up to 0.7 px of rounding,
    plus the asymmetry of blended light). Marginal flux error bars (every site free)
    can never be narrower than conditional ones (morphologies held), beyond the 1e-6
    relative rounding of the matrix-free solves. All of these need the fit at its
    mode; until it gets there they are an expected failure (measured with the star as
    a point source: decrement 26 after 300 steps, chi2/dof 1.11-1.43, the four faint
    sources 3.5-5.5 px off; with the star a free morphology: decrement 59, r 6.2).
    """
    chi2 = numbers["chi2_per_dof"]
    assert set(chi2) == {"g", "r", "i", "z", "y"}
    catalog = np.asarray(numbers["catalog_yx"])
    centres = np.asarray(numbers["centroid_yx"])
    assert catalog.shape == centres.shape == (7, 2)
    offsets = np.hypot(*(centres - catalog).T)
    conditional = np.asarray(numbers["flux_sd_conditional"])
    assert np.all(conditional > 0)
    if not (numbers["converged"] and numbers["decrement"] < 0.1):
        pytest.xfail(
            f"open: the quickstart fit stops at Newton decrement {numbers['decrement']:.3g} "
            f"after {numbers['iterations']} steps (tolerance 0.1); chi2/dof "
            f"{ {k: round(v, 2) for k, v in chi2.items()} }, catalogue offsets (px) "
            f"{offsets.round(2).tolist()}"
        )
    assert all(0.5 <= v <= 2.0 for v in chi2.values()), chi2
    assert np.all(offsets < 1.5), offsets
    marginal = np.asarray(numbers["flux_sd_marginal"])
    assert np.all(marginal >= conditional * (1 - 1e-6)), (marginal, conditional)


def _check_correlated_noise(numbers):
    """Forced-flux error bars of resampled HSC data in ``03_correlated_noise``.

    References independent of the package: (1) the exact noise model of resampled data
    has the native likelihood (pseudo-inverse identity), so its flux sd equals the
    native one to rounding -- measured identical, tolerance 1e-6 relative; (2) with
    independent-pixel weights the Fisher information grows by the number of fine pixels
    per native one (Parseval, and a band-limited interpolant of white noise keeps its
    variance), so naive / native = model / native pixel scale, 0.03 / 0.168 = 0.179 --
    measured 0.1768 (-1%: edges of the resampled box and the interpolant's finite
    window), tolerance 3%; (3) resampled white noise has the correlation
    ``sinc(lag * 0.03 / 0.168)`` along an axis: 0.948 between neighbours, measured
    0.949; tolerance 0.02 (sampling error of 4 draws ~0.002, plus the interpolant's
    departure from an ideal sinc).
    """
    exact = np.asarray(numbers["sd_ratio_exact_over_native"])
    naive = np.asarray(numbers["sd_ratio_naive_over_native"])
    assert exact.size >= 5 * 3 and exact.shape == naive.shape
    np.testing.assert_allclose(exact, 1.0, rtol=1e-6)
    assert np.all(naive < 0.5)  # several times too small
    np.testing.assert_allclose(naive, 0.03 / 0.168, rtol=0.03)
    assert abs(numbers["pixel_scale_ratio"] - 0.03 / 0.168) < 1e-3
    expected = np.sinc(0.03 / 0.168)
    assert abs(numbers["neighbour_correlation_measured"] - expected) < 0.02


def _check_sampling(numbers):
    """NUTS on spectra and the HSC shift of the cut COSMOS field (``04_sampling``).

    Full run (4 x 1000 draws): R-hat < 1.01 and bulk ESS > 400 for every shift and flux
    component, as the health check of ``test_cosmos_nuts``. The quick run (4 x 150
    draws, as the suite runs it) is too short for those thresholds; it must still show
    no divergence and the conditional posterior that the Laplace approximation predicts:
    the NUTS sd of each shift axis within 30% of the conditional Laplace sd (with an
    effective sample size ``n`` the sd's relative sampling error is about
    ``1 / sqrt(2 n)``, ~7% for ``n`` ~ 100; 30% leaves room for the short warm-up), and
    the median over fluxes of the same ratio within 30%. Independently of the sampler,
    the marginal Laplace sd (morphologies free) is never below the conditional one.

    Measured in a quick run (target acceptance 0.95): 0 divergences, max R-hat 1.029,
    min bulk ESS 281, 26.9 leapfrog steps per draw (at 0.8: 17 divergences); NUTS /
    conditional Laplace shift sd 1.00 and 0.98, flux sd 0.91 to 1.05. The quick MAP (25
    steps) is no mode of every site, so the marginal approximation raises there and is
    skipped.
    """
    assert numbers["divergences"] == 0, numbers["divergences"]
    nuts = np.asarray(numbers["shift_sd_nuts"])
    conditional = np.asarray(numbers["shift_sd_laplace_conditional"])
    assert np.all(np.abs(nuts / conditional - 1) < 0.3), (nuts, conditional)
    flux_ratio = np.asarray(numbers["flux_sd_nuts"]) / np.asarray(
        numbers["flux_sd_laplace_conditional"]
    )
    assert abs(np.median(flux_ratio) - 1) < 0.3, flux_ratio
    if numbers["shift_sd_laplace_marginal"] is not None:  # None: MAP not at a mode of all sites
        marginal = np.asarray(numbers["shift_sd_laplace_marginal"])
        assert np.all(marginal >= conditional), (marginal, conditional)
    # every shift and flux component has its diagnostics
    n_flux = np.asarray(numbers["flux_sd_nuts"]).size
    assert len(numbers["r_hat"]) == len(numbers["ess_bulk"]) == n_flux + 2
    if not numbers["quick"]:
        assert max(numbers["r_hat"].values()) < 1.01, numbers["r_hat"]
        assert min(numbers["ess_bulk"].values()) > 400, numbers["ess_bulk"]


def _check_native_evaluation(numbers):
    """The joint COSMOS fit judged in native HSC pixels (``05_native_evaluation``).

    Measured in the quick run (25 MAP steps): native chi2/dof 1.09, 0.80, 0.74, 0.71,
    0.55 (g..y), pooled robust sd of the normalised residuals 0.83, neighbour
    correlation 0.27 native and 0.97 resampled, 31.0 resampled pixels per native one;
    sd 0.85, robust sd 0.83 (0.77 with mean -0.43 where the model is below 0.1 sigma).

    - chi2/dof of every band in (0.4, 1.5]: below one because the clipped-sigma weights
      of the cut-out are a few to ten per cent high and free morphologies follow part
      of the noise on the sources; above 1.5 would be a bad fit (from HST detections
      alone, the full field's i, z, y stay far above it).
    - The pooled normalised residuals have sd within 30% of one (0.85 measured: below
      one for the reasons chi2/dof is), and at least 500 native pixels lie where the
      model is below 0.1 sigma (the background split of the histogram).
    - The hand-made chi2 equals ``goodness_of_fit`` (rel. 1e-9: the same sum).
    - Resampled residuals are nearly perfectly correlated between neighbours (> 0.9;
      an HSC pixel spans 5.6 model pixels per axis), the native ones far less (< 0.5:
      the coadd's own warping), and the resampled pixels outnumber the native ones by
      the squared pixel-scale ratio to within 10% (edges).
    - ``fit.shift_native`` equals ``relative_jacobian`` applied to the model-pixel shift
      (1e-3 native px: the local derivative of the same map, at nearby points).
    """
    native = numbers["chi2_per_dof_native"]
    assert set(native) == {"g", "r", "i", "z", "y"}
    assert all(0.4 < v <= 1.5 for v in native.values()), native
    for band, value in native.items():
        assert value == pytest.approx(numbers["chi2_per_dof_goodness_of_fit"][band], rel=1e-9)
    assert numbers["pixels_background"] > 500, numbers["pixels_background"]
    assert abs(numbers["residual_sd"] - 1) < 0.3, numbers["residual_sd"]
    assert numbers["neighbour_correlation_resampled"] > 0.9
    assert abs(numbers["neighbour_correlation_native"]) < 0.5
    ratio = numbers["pixels_resampled"] / numbers["pixels_native"]
    expected = numbers["pixel_scale_ratio"] ** 2
    assert ratio == pytest.approx(expected, rel=0.1), (ratio, expected)
    np.testing.assert_allclose(
        numbers["shift_native_px"], numbers["shift_native_px_relative_jacobian"], atol=1e-3
    )


NUMBER_CHECKS = {
    "02_multi_observation": _check_joint_cosmos_flow,
    "01_quickstart": _check_quickstart,
    "03_correlated_noise": _check_correlated_noise,
    "04_sampling": _check_sampling,
    "05_native_evaluation": _check_native_evaluation,
}
