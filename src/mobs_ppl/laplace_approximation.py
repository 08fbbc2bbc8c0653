"""Laplace approximation of the posterior at the MAP.

The posterior of the chosen sites is approximated by a multivariate normal in NumPyro's
unconstrained space (log spectra, logit morphologies, shifts as they are), centred at
the MAP with the inverse Hessian of the negative log density as covariance; the other
sites are held at their MAP values, as :func:`mobs_ppl.sample` holds them. Draws are
mapped back through the sites' transforms, so they respect every constraint, and the
deterministic sites (``flux``, ``shift_arcsec``, ``shift_native``) come with them.

It costs one Hessian (a few gradients per parameter) instead of a NUTS run: error bars
in seconds for high signal-to-noise scenes, and the starting mass matrix of
:func:`mobs_ppl.sample`.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._checks import check_choice, check_int, check_positive
from ._warnings import MobsPplWarning
from .curvature import curvature_metric, hessian, inverse_metric
from .model import SceneModel
from .newton import PosteriorProblem
from .sites import split_sites

__all__ = [
    "LaplaceApproximation",
    "MAX_DENSE_PARAMETERS",
    "SOLVE_ASYMMETRY_TOLERANCE",
    "laplace",
    "solve_asymmetry",
    "unconstrained_problem",
]


class UnconstrainedProblem(eqx.Module):
    """The model's density over chosen sites, in NumPyro's unconstrained space.

    Built on :class:`mobs_ppl.newton.PosteriorProblem` (no NumPyro initialisation, and
    the compiled functions taking it as an argument are reused for the same model).

    Attributes
    ----------
    coordinates : PosteriorProblem
        The model, the fixed sites and the layout of the flat vector.
    location : jax.Array
        The start point, flattened (sites in sorted order, as NumPyro's NUTS ravels).
    """

    coordinates: PosteriorProblem
    location: jax.Array

    def unravel(self, u) -> dict:
        """Flat vector -> ``{site: unconstrained value}``."""
        return self.coordinates.unravel(u)

    def values(self, u) -> dict:
        """Flat unconstrained vector -> ``{site: constrained value}``."""
        return self.coordinates.from_unconstrained(u)

    def potential(self, u) -> jax.Array:
        """Negative log joint density of a flat unconstrained vector, up to a constant.

        The log-Jacobians of the transforms are included, as NUTS sees it.
        """
        return self.coordinates.potential_of_values(self.values(u))

    def postprocess(self, blocks: Mapping) -> dict:
        """Constrained values of the sampled and deterministic sites of ``{site: u}``."""
        return self.coordinates.derived(self.values(self.coordinates.ravel(blocks)))


def unconstrained_problem(
    model: SceneModel, start: Mapping, fixed: Mapping, seed: int = 0
) -> UnconstrainedProblem:
    """The potential of ``model`` over the sites of ``start``, the ``fixed`` ones held."""
    coordinates = PosteriorProblem.build(model, start, fixed)
    return UnconstrainedProblem(coordinates, coordinates.to_unconstrained(coordinates.start))


#: Derived quantities whose marginal covariance every Laplace approximation holds.
SUMMARY_SITES = ("shift", "calibration", "flux")


def _summary(problem: UnconstrainedProblem, u) -> jax.Array:
    """Flat vector of the summary quantities at ``u``: shifts, log calibrations, log fluxes."""
    values = problem.coordinates.derived(problem.values(u))
    parts = []
    if "shift" in values:
        parts.append(jnp.ravel(values["shift"]))
    if "calibration" in values:
        parts.append(jnp.ravel(jnp.log(values["calibration"])))
    parts.append(jnp.ravel(jnp.log(values["flux"])))
    return jnp.concatenate(parts)


@dataclasses.dataclass(frozen=True)
class LaplaceApproximation:
    """A normal approximation of the posterior in the unconstrained space.

    Attributes
    ----------
    model : SceneModel
        The model.
    sites : tuple of str
        The approximated sites (the others are held at their values, ``fixed``).
    fixed : dict
        Sites held at fixed values (constrained space).
    problem : UnconstrainedProblem
        Potential, centre and transforms.
    covariance : ndarray or None
        ``(n, n)`` covariance of the flat unconstrained parameters, when it was
        computed densely (at most :data:`MAX_DENSE_PARAMETERS` parameters); ``None``
        for the matrix-free approximation of larger problems.
    summary_covariance : ndarray
        Covariance of the summary vector: every shift (model pixels, flattened), the
        log of every photometric calibration (flattened; when approximated), then the
        log of every flux (``(sources, channels)``, flattened) -- the marginal
        covariance, every approximated site free.
    summary_mean : ndarray
        The summary vector at the centre.
    decrement : float
        Newton decrement at the centre (posterior sd to the mode).
    """

    model: SceneModel
    sites: tuple
    fixed: dict
    problem: UnconstrainedProblem
    covariance: np.ndarray | None
    summary_covariance: np.ndarray
    summary_mean: np.ndarray
    decrement: float

    @property
    def location(self) -> dict:
        """Centre of the approximation, ``{site: unconstrained value}``."""
        return self.problem.unravel(self.problem.location)

    @property
    def conditional(self) -> bool:
        """Whether some sites were held fixed (the error bars are then conditional)."""
        return bool(self.fixed)

    def _counts(self) -> tuple[int, int]:
        """Lengths of the shift and the calibration blocks of the summary vector."""
        n_shift = 2 * len(self.model.shift_names) if "shift" in self.sites else 0
        n_cal = 0
        if "calibration" in self.sites:
            n_cal = len(self.model.calibration_names) * len(self.model.calibrated_channels)
        return n_shift, n_cal

    def _split(self, flat):
        n_shift, n_cal = self._counts()
        out = {}
        if n_shift:
            shift = flat[..., :n_shift].reshape((*flat.shape[:-1], -1, 2))
            out["shift"] = shift
            to_native = np.stack(
                [np.asarray(self.model.to_native[n]) for n in self.model.shift_names]
            )
            out["shift_native"] = np.einsum("kij,...kj->...ki", to_native, shift)
            out["shift_arcsec"] = shift * self.model.pixel_scale_arcsec
        if n_cal:
            out["calibration"] = np.exp(flat[..., n_shift : n_shift + n_cal]).reshape(
                (*flat.shape[:-1], len(self.model.calibration_names), -1)
            )
        n_groups = self.model.scene.n_groups
        log_flux = flat[..., n_shift + n_cal :]
        out["flux"] = np.exp(log_flux).reshape((*flat.shape[:-1], n_groups, -1))
        return out

    def draws(self, num_samples: int = 2000, seed: int = 0) -> dict[str, np.ndarray]:
        """Draws of the approximated and derived quantities, constrained space.

        With a dense covariance, every approximated site and every deterministic site
        (``flux``, ``shift_arcsec``, ``shift_native``, ...). Matrix-free (large
        problems), the summary quantities: ``shift``, ``shift_native``,
        ``shift_arcsec`` and ``flux``, from their joint marginal normal approximation
        (log fluxes normal).

        Parameters
        ----------
        num_samples : int
            Number of draws.
        seed : int
            Seed of the normal draws.

        Returns
        -------
        dict
            ``{site: (num_samples, ...)}``, e.g. ``flux`` ``(draws, sources, channels)``.
        """
        key = jax.random.PRNGKey(seed)
        if self.covariance is None:
            chol = np.linalg.cholesky(self.summary_covariance)
            normal = np.asarray(jax.random.normal(key, (num_samples, chol.shape[0])))
            return self._split(self.summary_mean + normal @ chol.T)
        n = self.covariance.shape[0]
        chol = jnp.asarray(np.linalg.cholesky(self.covariance))
        normal = jax.random.normal(key, (num_samples, n))
        flat = self.problem.location + normal @ chol.T
        transform = jax.jit(jax.vmap(lambda x: self.problem.postprocess(self.problem.unravel(x))))
        return {k: np.asarray(v) for k, v in transform(flat).items()}

    def sd(self, name: str) -> np.ndarray:
        """Marginal standard deviation of a summary quantity, to first order.

        Parameters
        ----------
        name : {"shift", "shift_native", "shift_arcsec", "calibration", "flux"}
            ``shift`` in model pixels, ``shift_native`` in each observation's native
            pixels, ``shift_arcsec`` along the model pixel axes; ``calibration`` per
            calibrated observation and channel, and ``flux`` per source and channel
            (each the value times the sd of its logarithm).
        """
        if name == "flux":
            return self._flux_sd()
        n_shift, n_cal = self._counts()
        if name == "calibration" and n_cal:
            block = slice(n_shift, n_shift + n_cal)
            log_sd = np.sqrt(np.diag(self.summary_covariance))[block]
            value = np.exp(self.summary_mean[block])
            return (value * log_sd).reshape(len(self.model.calibration_names), -1)
        shift_sd = np.sqrt(np.diag(self.summary_covariance))[:n_shift].reshape(-1, 2)
        if name == "shift" and n_shift:
            return shift_sd
        if name == "shift_arcsec" and n_shift:
            return shift_sd * self.model.pixel_scale_arcsec
        if name == "shift_native" and n_shift:
            n_shift = 2 * len(self.model.shift_names)
            cov = self.summary_covariance[:n_shift, :n_shift]
            out = []
            for k, obs in enumerate(self.model.shift_names):
                a = np.asarray(self.model.to_native[obs])
                block = cov[2 * k : 2 * k + 2, 2 * k : 2 * k + 2]
                out.append(np.sqrt(np.diag(a @ block @ a.T)))
            return np.array(out)
        raise KeyError(
            f"no marginal sd of {name!r}; known: shift, shift_native, shift_arcsec, "
            "calibration, flux"
        )

    def _flux_sd(self) -> np.ndarray:
        start = sum(self._counts())
        log_sd = np.sqrt(np.diag(self.summary_covariance))[start:]
        flux = np.exp(self.summary_mean[start:])
        return (flux * log_sd).reshape(self.model.scene.n_groups, -1)


#: Largest number of sampled parameters for which :func:`mobs_ppl.sample` builds the
#: full Hessian; above it a diagonal metric comes from the Hessian's diagonal alone.
MAX_DENSE_PARAMETERS = 3000


def start_inverse_mass_matrix(problem: UnconstrainedProblem, dense: bool) -> tuple:
    """NUTS inverse mass matrix from the curvature at the start point.

    With ``dense`` (or few parameters) the full Hessian is inverted; otherwise, for more
    than :data:`MAX_DENSE_PARAMETERS` parameters (non-parametric morphologies), the
    diagonal metric is the inverse of the Hessian's diagonal, computed in linear memory
    (:func:`curvature_metric`).

    Returns
    -------
    matrix : jax.Array
        The positive-definite inverse of the Hessian (dense) or a diagonal metric.
    at_mode : bool
        Whether the curvature is positive (definite) there, as at a local mode.

    Raises
    ------
    ValueError
        For a dense metric over more than :data:`MAX_DENSE_PARAMETERS` parameters.
    """
    n = problem.location.size
    if n > MAX_DENSE_PARAMETERS:
        if dense:
            raise ValueError(
                f"a dense mass matrix over {n} parameters is too large (at most "
                f"{MAX_DENSE_PARAMETERS}): sample fewer sites or use dense_mass=False"
            )
        return curvature_metric(problem.potential, problem.location, dense=False)
    # below the limit the dense Hessian is cheap: its diagonal of the inverse is the
    # better diagonal metric
    matrix, at_mode = curvature_metric(problem.potential, problem.location, dense=True)
    return (matrix if dense else jnp.diag(matrix)), at_mode


def laplace(
    model: SceneModel,
    init,
    sites: Sequence[str] | None = None,
    rtol: float = 1e-9,
    max_cg_steps: int = 2000,
    seed: int = 0,
    method: str = "auto",
) -> LaplaceApproximation:
    """Laplace approximation of the posterior at a MAP fit.

    The curvature is the exact Hessian of the negative log posterior in NumPyro's
    unconstrained space (the space NUTS samples). Up to
    :data:`MAX_DENSE_PARAMETERS` approximated parameters it is built densely and
    inverted; above, for scenes whose morphology pixels make 10^4 to 10^5 parameters,
    nothing of size ``n^2`` is formed: the marginal covariance of the summary
    quantities (shifts and log fluxes) is ``G H^{-1} G^T``, with ``G`` their gradients,
    and each row of ``H^{-1} G^T`` is a conjugate-gradient solve with Hessian-vector
    products, preconditioned by the curvature's diagonal and the coarse space of
    collective directions (:mod:`mobs_ppl.krylov`). Either way the error bars are
    marginal over every approximated site -- the morphologies too, by default.

    Parameters
    ----------
    model : SceneModel
        The model.
    init : MAPResult or mapping
        The MAP (a :class:`MAPResult` or ``{site: value}``); it should be a mode of the
        posterior of ``sites``, else the covariance is not meaningful.
    sites : sequence of str, optional
        Sites to approximate, as in :func:`mobs_ppl.sample` (``None``: all). Sites left
        out are held at their ``init`` values: error bars are then *conditional* on
        them (``approx.conditional`` is true).
    rtol : float
        Matrix-free: relative residual of each conjugate-gradient solve (at least ten
        rounding units of the parameters' dtype). The residual alone does not bound
        the error of a variance on an ill-conditioned curvature, so the solves are
        checked by the symmetry of the solved covariance (:func:`solve_asymmetry`),
        and repeated with ``rtol`` a thousand times smaller while it exceeds
        :data:`SOLVE_ASYMMETRY_TOLERANCE`.
    max_cg_steps : int
        Matrix-free: largest number of conjugate-gradient iterations per solve.
    seed : int
        Matrix-free: seed of the random projections of the preconditioner.
    method : {"auto", "dense", "matrix-free"}
        ``"auto"``: dense up to :data:`MAX_DENSE_PARAMETERS` parameters, matrix-free
        above. The dense approximation carries the covariance of every site (its
        draws include morphologies); the matrix-free one that of the summaries
        (shifts and fluxes).

    Returns
    -------
    LaplaceApproximation

    Raises
    ------
    ValueError
        If the point is not a mode (the Hessian is not positive definite).

    Warns
    -----
    MobsPplWarning
        If the Newton step from the point to the mode is longer than one posterior
        standard deviation (the fit has not converged); if the matrix-free solves stay
        imprecise at the tightest tolerance or ``max_cg_steps``.
    """
    check_choice("method", method, ("auto", "dense", "matrix-free"))
    rtol = check_positive("rtol", rtol)
    max_cg_steps = check_int("max_cg_steps", max_cg_steps, minimum=1)
    seed = check_int("seed", seed)
    start, fixed = split_sites(model, init, sites)
    problem = unconstrained_problem(model, start, fixed)
    mean, rows, gradient = (np.asarray(a) for a in _summary_rows(problem, problem.location))
    dense = method == "dense" or (
        method == "auto" and problem.location.size <= MAX_DENSE_PARAMETERS
    )
    if dense:
        hess = hessian(problem.potential, problem.location)
        values = np.linalg.eigvalsh(hess)
        if values.min() <= 0:
            raise ValueError(
                "the Hessian of the negative log posterior is not positive definite at this "
                f"point (smallest eigenvalue {values.min():.3g}): run fit_map to convergence"
            )
        covariance = inverse_metric(hess)
        summary_covariance = rows @ covariance @ rows.T
        decrement = float(np.sqrt(gradient @ covariance @ gradient))
    else:
        covariance = None
        right = np.vstack([rows, gradient])
        gram, steps = _checked_marginal_solves(
            problem, right, jax.random.PRNGKey(seed), rtol, max_cg_steps
        )
        summary_covariance = 0.5 * (gram[:-1, :-1] + gram[:-1, :-1].T)
        decrement = float(np.sqrt(max(gram[-1, -1], 0.0)))
    if decrement > 1.0:
        warnings.warn(
            f"the mode is ~{decrement:.3g} posterior sd from this point (Newton step): the "
            "Laplace approximation is centred off the mode; fit the MAP to convergence",
            MobsPplWarning,
            stacklevel=2,
        )
    return LaplaceApproximation(
        model=model,
        sites=tuple(start),
        fixed=fixed,
        problem=problem,
        covariance=covariance,
        summary_covariance=summary_covariance,
        summary_mean=mean,
        decrement=decrement,
    )


#: Largest accepted asymmetry of the solved Gram matrix ``R H^{-1} R^T``, relative to
#: its diagonal (:func:`solve_asymmetry`): about the solves' error in a correlation.
#: On the test scene of ``tests/test_marginal_errors.py`` an asymmetry of 1.8e-4 came
#: with correlations off by 1.1e-4 and sd by 8e-6 (against the dense inverse).
SOLVE_ASYMMETRY_TOLERANCE = 1e-4

#: Each retry of :func:`laplace`'s matrix-free solves divides ``rtol`` by this, down
#: to the rounding floor of :func:`_rtol_floor`.
_RTOL_REDUCTION = 1e-3


def _rtol_floor(dtype) -> float:
    """Smallest relative residual the solves can reach in ``dtype`` (ten rounding units)."""
    return float(10 * np.finfo(dtype).eps)


def solve_asymmetry(gram: np.ndarray) -> float:
    """Largest ``|G_ij - G_ji| / sqrt(G_ii G_jj)`` of a solved Gram matrix ``G``.

    ``G = R X^T`` with ``X`` the approximate solutions of ``H X^T = R^T``. Exact solves
    give a symmetric ``G`` (``r_i^T H^{-1} r_j = r_j^T H^{-1} r_i``); the asymmetry is
    first order in the solves' errors ``e_j``, ``r_i^T e_j - r_j^T e_i``, so it measures
    them without a reference. A small residual does not bound it: on an ill-conditioned
    curvature the error of ``x`` is up to ``|residual| / lambda_min``.
    """
    diagonal = np.sqrt(np.maximum(np.diag(gram), np.finfo(float).tiny))
    return float(np.max(np.abs(gram - gram.T) / np.outer(diagonal, diagonal)))


def _checked_marginal_solves(problem, right, key, rtol, max_cg_steps):
    """``right H^{-1} right^T`` by matrix-free solves, their precision checked.

    The solves are repeated with a tighter ``rtol`` while :func:`solve_asymmetry` of
    the result exceeds :data:`SOLVE_ASYMMETRY_TOLERANCE` (no recompilation: the
    tolerance is a traced value); a warning says if the tightest still misses it.
    """
    floor = _rtol_floor(problem.location.dtype)
    rtol = max(float(rtol), floor)
    x0, preconditioner = _marginal_preconditioner(problem, key)
    while True:
        solutions, steps, positive = _preconditioned_solves(
            problem,
            x0,
            jnp.asarray(right),
            preconditioner,
            jnp.asarray(rtol, dtype=problem.location.dtype),
            jnp.asarray(max_cg_steps),
        )
        if not bool(np.all(np.asarray(positive))):
            raise ValueError(
                "the Hessian of the negative log posterior is not positive definite at this "
                "point (a direction of non-positive curvature was met): run fit_map to "
                "convergence"
            )
        gram = right @ np.asarray(solutions).T
        asymmetry = solve_asymmetry(gram)
        _SOLVE_STATS.update(steps=np.asarray(steps), asymmetry=asymmetry, rtol=rtol)
        if asymmetry <= SOLVE_ASYMMETRY_TOLERANCE:
            return gram, steps
        if rtol <= floor or np.max(steps) >= max_cg_steps:
            warnings.warn(
                f"the matrix-free solves are imprecise (asymmetry {asymmetry:.2g} of the "
                f"solved covariance at rtol={rtol:.2g}, {int(np.max(steps))} CG steps; "
                f"tolerance {SOLVE_ASYMMETRY_TOLERANCE:g}): the error bars may be off; "
                "raise max_cg_steps",
                MobsPplWarning,
                stacklevel=3,
            )
            return gram, steps
        rtol = max(rtol * _RTOL_REDUCTION, floor)


@eqx.filter_jit
def _summary_rows(problem: UnconstrainedProblem, u):
    """The summary vector, its Jacobian (rows) and the potential's gradient at ``u``."""
    mean = _summary(problem, u)
    rows = jax.jacrev(lambda x: _summary(problem, x))(u)
    return mean, rows, jax.grad(problem.potential)(u)


def _marginal_preconditioner(problem: UnconstrainedProblem, key):
    """The point in fit coordinates and the preconditioner of :func:`_preconditioned_solves`.

    The solves are ``H^{-1} r`` for every row ``r``, matrix-free, in NumPyro's
    unconstrained space. ``H`` is the exact Hessian of the potential (Hessian-vector
    products by forward-over-reverse differentiation). The preconditioner is the one of
    :func:`mobs_ppl.fit_map`, built in its coordinates ``x`` (morphologies relative to
    their envelopes, where the Gauss-Newton curvature with its diagonal and coarse
    space of collective directions is well conditioned) by the fit's own compiled step
    (:func:`mobs_ppl.newton.gauss_newton_preconditioner`, undamped), and carried into
    the unconstrained space ``u`` by the Jacobian ``J = du/dx`` of the map between
    them: ``M^{-1} = J M_x^{-1} J^T``, since ``H^{-1} ~ J H_x^{-1} J^T``. The solves
    then compile the exact curvature alone, not the Gauss-Newton products a second
    time.
    """
    from .newton import gauss_newton_preconditioner

    x0 = _fit_coordinates(problem)
    return x0, gauss_newton_preconditioner(problem.coordinates, x0, key)


@eqx.filter_jit
def _fit_coordinates(problem: UnconstrainedProblem):
    """The point of the unconstrained problem in the fit's coordinates ``x``."""
    return problem.coordinates.coordinates(problem.values(problem.location))


@eqx.filter_jit
def _preconditioned_solves(
    problem: UnconstrainedProblem, x0, rows, preconditioner, rtol, max_steps
):
    """``H^{-1} r`` for every row ``r`` (see :func:`_marginal_preconditioner`).

    Returns
    -------
    solutions : jax.Array
        One row per right-hand side.
    steps : jax.Array
        Conjugate-gradient iterations per solve.
    positive : jax.Array
        Per solve, whether every curvature met was positive.
    """
    from .krylov import apply_balancing, conjugate_gradient

    coordinates = problem.coordinates
    u = problem.location
    _, hvp = jax.linearize(jax.grad(problem.potential), u)
    _, along = jax.linearize(coordinates.to_unconstrained, x0)
    back = jax.linear_transpose(along, x0)
    scale, basis, applied, factor = preconditioner

    def inner(r):
        if basis.shape[1] == 0:
            return r
        return apply_balancing(basis, applied, factor, r)

    def precondition(r):
        return along(scale * inner(scale * back(r)[0]))

    def one(r):
        return conjugate_gradient(hvp, r, precondition, rtol, max_steps)

    return jax.lax.map(one, rows)


#: Conjugate-gradient iterations of the last matrix-free solves (for benchmarks).
_SOLVE_STATS: dict = {}
