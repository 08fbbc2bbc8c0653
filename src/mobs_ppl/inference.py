"""MAP fits to the mode, and posterior sampling with NUTS.

:func:`fit_map` runs damped Gauss-Newton to the mode (:mod:`mobs_ppl.newton`, the
default) or ``numpyro.infer.SVI`` with an ``AutoDelta`` guide and Adam; :func:`sample`
runs ``numpyro.infer.MCMC`` with ``NUTS``. Both return result objects that keep the raw
NumPyro objects (``svi_state``, ``guide``, ``mcmc``) reachable.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import optax
from numpyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoDelta
from numpyro.infer.initialization import init_to_value

from ._checks import check_choice, check_int, check_positive, check_probability
from ._warnings import MobsPplWarning
from .laplace_approximation import (
    MAX_DENSE_PARAMETERS,
    start_inverse_mass_matrix,
    unconstrained_problem,
)
from .model import SceneModel
from .newton import DEFAULT_TOL, PosteriorProblem, levenberg_marquardt, newton_decrement
from .sites import split_sites
from .softplus_coordinates import auxiliary_name, softplus_start

__all__ = ["MAPResult", "PosteriorResult", "fit_map", "sample", "DEFAULT_STEP_SIZES"]

#: Adam step sizes per kind of site, in the unconstrained space NumPyro optimises:
#: spectra and radii live on a log scale, so 0.05 is a relative step of ~5% (the fit is
#: therefore independent of the data's units); morphologies on a logit scale; centres
#: and shifts in model pixels; photometric calibrations on a log scale (0.01: 1%).
DEFAULT_STEP_SIZES = {
    "spectrum": 0.05,
    "morphology": 0.05,
    "envelope": 0.02,
    "center": 0.02,
    "radius": 0.02,
    "shape": 0.02,
    "sersic_n": 0.02,
    "shift": 0.02,
    "calibration": 0.01,
}


@dataclasses.dataclass(frozen=True)
class MAPResult:
    """Result of :func:`fit_map`.

    Attributes
    ----------
    model : SceneModel
        The model that was fitted.
    params : dict
        Best (lowest-loss) value of every latent site, constrained space.
    losses : ndarray
        The objective at every iteration: for ``method="newton"`` the negative log
        posterior in NumPyro's unconstrained space (up to a constant) at every accepted
        step; for ``"adam"`` the SVI loss (the negative log joint density in the
        constrained space, without the transforms' log-Jacobians).
    best_iteration : int
        Iteration whose parameters are in ``params``.
    converged : bool
        Whether the fit is at a mode: the Newton decrement (``decrement``) is below the
        tolerance of :func:`fit_map`.
    decrement : float
        Newton decrement ``sqrt(g^T H^{-1} g)`` at ``params`` for the posterior that
        :func:`mobs_ppl.laplace` and :func:`mobs_ppl.sample` use (NumPyro's
        unconstrained space): roughly the distance to the mode in posterior standard
        deviations. ``nan`` when it was not computed (fits loaded from older files).
    iterations : int
        Optimiser steps taken.
    method : str
        ``"newton"`` or ``"adam"``.
    svi_state, guide :
        The raw NumPyro objects (``method="adam"``).
    """

    model: SceneModel
    params: dict
    losses: np.ndarray
    best_iteration: int
    converged: bool
    svi_state: object = None
    guide: object = None
    decrement: float = float("nan")
    iterations: int = 0
    method: str = "adam"

    @property
    def scene(self):
        """The best-fit scene."""
        return self.model.realise(self.params)

    def _shift_row(self, name: str) -> int:
        if name not in self.model.shift_names:
            raise KeyError(f"no shift was fitted for {name!r}; shifted: {self.model.shift_names}")
        return self.model.shift_names.index(name)

    def shift(self, name: str) -> np.ndarray:
        """Fitted shift ``(dy, dx)`` of an observation, model-frame pixels."""
        return np.asarray(self.params["shift"][self._shift_row(name)])

    def shift_native(self, name: str) -> np.ndarray:
        """Fitted shift ``(dy, dx)`` in the observation's native pixels."""
        return np.asarray(self.model.to_native[name] @ self.shift(name))

    def shift_arcsec(self, name: str) -> np.ndarray:
        """Fitted shift ``(dy, dx)`` along the model pixel axes, arcsec."""
        return self.shift(name) * self.model.pixel_scale_arcsec

    def calibration(self, name: str) -> np.ndarray:
        """Fitted flux scale per channel of an observation (ones for a reference).

        In the observation's channel order; see :meth:`SceneModel.calibration`.
        """
        return self.model.calibration(self.params, name)

    def scene_seen_by(self, name: str):
        """The fitted scene as observation ``name`` sees it: spectra times its calibration.

        For a calibrated observation (``SceneModel(..., calibrations=...)``) every
        source's spectrum is scaled, per model channel, by that observation's fitted
        calibration, so that rendering into it (plots, chi-square) predicts its data;
        for a reference observation, :attr:`scene` itself.
        """
        import equinox as eqx

        if name not in self.model.calibration_names:
            return self.scene
        names = [o.name for o in self.model.observations]
        scene = self.scene  # rebuilt from the parameters on every access: once here
        index = list(scene.frame.channel_indices(self.model.observations[names.index(name)].frame))
        scale = np.ones(scene.frame.n_channels)
        scale[index] = self.calibration(name)
        return scene.replace_sources(
            [eqx.tree_at(lambda s: s.spectrum, s, s.spectrum * scale) for s in scene.sources]
        )

    def deterministic(self) -> dict[str, np.ndarray]:
        """Deterministic sites (``flux``, ``shift_arcsec``, ...) at the fitted values."""
        trace = numpyro.handlers.trace(
            numpyro.handlers.substitute(self.model, data=self.params)
        ).get_trace()
        return {k: np.asarray(v["value"]) for k, v in trace.items() if v["type"] == "deterministic"}


def fit_map(
    model: SceneModel,
    max_iter: int | None = None,
    e_rel: float = 1e-4,
    progress_bar: bool = False,
    seed: int = 0,
    step_sizes: Mapping[str, float] | None = None,
    init: Mapping[str, jnp.ndarray] | None = None,
    check_every: int = 25,
    sites: Sequence[str] | str | None = None,
    method: str = "newton",
    tol: float = DEFAULT_TOL,
    log=None,
) -> MAPResult:
    """Maximum a posteriori fit, to the mode.

    Parameters
    ----------
    model : SceneModel
        The model to fit.
    max_iter : int, optional
        Largest number of optimiser steps (default: 500 Newton steps, 1000 Adam steps).
    e_rel : float
        ``method="adam"``: stop when, for every site, the parameter change per step
        relative to its size stays below this over ``check_every`` steps.
    progress_bar : bool
        Show a tqdm progress bar.
    seed : int
        Seed of the (deterministic) run: the random projections that estimate the
        curvature's diagonal (newton), the SVI key (adam).
    step_sizes : mapping, optional
        ``method="adam"`` only: step size per kind of site (a key of
        :data:`DEFAULT_STEP_SIZES` or a kind of the model's sites), overriding
        :data:`DEFAULT_STEP_SIZES`.
    init : MAPResult or mapping, optional
        Initial values: a previous fit (continued from its best parameters) or values by
        site name overriding the model's (default: the model's scene, zero shifts).
    check_every : int
        ``method="adam"``: steps per compiled chunk; ``e_rel`` is checked between chunks
        (the last chunk is shorter where ``max_iter`` is no multiple of it).
    sites : sequence of str, optional
        Sites to optimise, by full name (``"morphology_3"``) or base name (``"spectrum"``
        = every source's); the others are held at their ``init`` values through
        ``numpyro.handlers.condition`` (as in :func:`sample`). ``None``: all sites.
    method : {"newton", "adam"}
        ``"newton"`` (default): damped Gauss-Newton to the mode of the posterior in
        NumPyro's unconstrained space -- the point :func:`mobs_ppl.laplace` and
        :func:`sample` are centred on -- with matrix-free conjugate-gradient solves
        (:mod:`mobs_ppl.newton`). ``"adam"``: SVI with an ``AutoDelta`` guide and Adam
        (the mode of the joint density in the constrained space; first-order, it
        rarely gets there: on COSMOS the loss still falls after 2000 steps).
    tol : float
        Converged when the Newton decrement is below this (both methods).
    log : callable, optional
        ``method="newton"``: receives one line per step.

    Returns
    -------
    MAPResult
        ``params`` holds every site: the optimised ones and the fixed ones.

    Raises
    ------
    TypeError, ValueError
        For a bad argument (a count that is no whole number or below one, a tolerance
        that is not positive and finite, unknown sites or kinds, ``step_sizes`` without
        ``method="adam"``), naming it.

    Warns
    -----
    MobsPplWarning
        When the fit stops before the Newton decrement falls below ``tol``.
    """
    method = check_choice("method", method, ("newton", "adam"))
    if max_iter is not None:
        max_iter = check_int("max_iter", max_iter, minimum=1)
    tol = check_positive("tol", tol)
    e_rel = check_positive("e_rel", e_rel, allow_zero=True)
    check_every = check_int("check_every", check_every, minimum=1)
    seed = check_int("seed", seed)
    if step_sizes is not None:
        if method != "adam":
            raise ValueError(
                f"step_sizes are Adam's step sizes; method={method!r} takes none: pass "
                "method='adam' or leave step_sizes out"
            )
        _check_step_sizes(model, step_sizes)
    if method == "adam":
        fit = _fit_adam(
            model,
            1000 if max_iter is None else int(max_iter),
            e_rel,
            progress_bar,
            seed,
            step_sizes,
            init,
            check_every,
            sites,
        )
        values, fixed = split_sites(model, fit.params, sites)
        problem = PosteriorProblem.build(model, values, fixed)
        decrement = newton_decrement(problem, problem.start, seed)
        fit = dataclasses.replace(fit, decrement=decrement, converged=bool(decrement < tol))
    else:
        values, fixed = split_sites(model, init, sites)
        problem = PosteriorProblem.build(model, values, fixed)
        result = levenberg_marquardt(
            problem,
            max_iter=500 if max_iter is None else int(max_iter),
            tol=tol,
            seed=seed,
            progress_bar=progress_bar,
            log=log,
        )
        fit = MAPResult(
            model=model,
            params={**fixed, **problem.values(result.z)},
            losses=result.losses,
            best_iteration=len(result.losses) - 1,
            converged=result.converged,
            decrement=result.decrement,
            iterations=result.iterations,
            method="newton",
        )
    if not fit.converged:
        warnings.warn(
            f"fit_map ({method}) stopped after {fit.iterations} steps, "
            f"{fit.decrement:.3g} posterior sd from the mode (Newton decrement; converged "
            f"below {tol}): raise max_iter, or continue with fit_map(model, init=fit)",
            MobsPplWarning,
            stacklevel=2,
        )
    return fit


def _check_step_sizes(model: SceneModel, step_sizes) -> None:
    """Raise for ``step_sizes`` that are no mapping, name no kind of site, or are not positive."""
    if not isinstance(step_sizes, Mapping):
        raise TypeError(
            f"step_sizes must be a mapping {{kind of site: step size}}, e.g. "
            f"{{'spectrum': 0.05}}; got {step_sizes!r}"
        )
    kinds = sorted(set(DEFAULT_STEP_SIZES) | {site.kind for site in model.site_table()})
    for kind, size in step_sizes.items():
        if kind not in kinds:
            raise ValueError(f"step_sizes has an unknown kind of site {kind!r}; kinds: {kinds}")
        check_positive(f"step_sizes[{kind!r}]", size)


def _fit_adam(
    model: SceneModel,
    max_iter: int = 1000,
    e_rel: float = 1e-4,
    progress_bar: bool = False,
    seed: int = 0,
    step_sizes: Mapping[str, float] | None = None,
    init: Mapping[str, jnp.ndarray] | None = None,
    check_every: int = 25,
    sites: Sequence[str] | str | None = None,
) -> MAPResult:
    """MAP by SVI with ``AutoDelta`` and Adam (see :func:`fit_map`)."""
    sizes = {**DEFAULT_STEP_SIZES, **(step_sizes or {})}
    values, fixed = split_sites(model, init, sites)
    fitted_model = numpyro.handlers.condition(model, data=fixed) if fixed else model
    guide = AutoDelta(fitted_model, init_loc_fn=init_to_value(values=values))
    # the schedule lets Adam settle: its step shrinks tenfold over max_iter
    schedule_decay = 0.1 ** (1.0 / max(max_iter, 1))

    # the step-size group of each site: its kind, where a step size is set for it
    group = {s.name: s.kind if s.kind in sizes else "other" for s in model.site_table()}

    def labels(params):
        # AutoDelta names its parameters "<site>_auto_loc"
        return {k: group.get(k.removesuffix("_auto_loc"), "other") for k in params}

    transforms = {
        kind: optax.adam(optax.exponential_decay(size, 1, schedule_decay))
        for kind, size in sizes.items()
    }
    transforms["other"] = optax.adam(optax.exponential_decay(0.01, 1, schedule_decay))
    optimiser = numpyro.optim.optax_to_numpyro(optax.multi_transform(transforms, labels))
    svi = SVI(fitted_model, guide, optimiser, Trace_ELBO())
    state = svi.init(jax.random.PRNGKey(seed))
    params = svi.get_params(state)

    def step(carry, _):
        state, best_loss, best_params = carry
        current = svi.get_params(state)
        state, loss = svi.update(state)
        better = loss < best_loss
        best_params = jax.tree.map(lambda b, c: jnp.where(better, c, b), best_params, current)
        return (state, jnp.minimum(loss, best_loss), best_params), loss

    @functools.partial(jax.jit, static_argnames="length")
    def run_chunk(state, best_loss, best_params, length):
        return jax.lax.scan(step, (state, best_loss, best_params), None, length=length)

    bar = None
    if progress_bar:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_iter, desc="fit_map")
    best_loss = jnp.asarray(jnp.inf)
    best = params
    losses = []
    converged = False
    done = 0
    while done < max_iter:
        previous = svi.get_params(state)
        # the last chunk is shorter where max_iter is no multiple of check_every
        length = min(check_every, max_iter - done)
        (state, best_loss, best), chunk_losses = run_chunk(state, best_loss, best, length)
        chunk = np.asarray(chunk_losses)
        losses.append(chunk)
        done += length
        if not np.all(np.isfinite(chunk)):
            raise FloatingPointError(
                f"the loss became {chunk[~np.isfinite(chunk)][0]} at iteration ~{done}; "
                "check the initial values and the data (NaN pixels with weight?)"
            )
        if bar is not None:
            bar.update(length)
            bar.set_postfix(loss=f"{chunk[-1]:.6g}")
        current = svi.get_params(state)
        change = max(
            float(jnp.linalg.norm(current[k] - previous[k]) / (jnp.linalg.norm(current[k]) + 1e-30))
            for k in current
        )
        if change / length < e_rel:
            converged = True
            break
    if bar is not None:
        bar.close()
    losses = np.concatenate(losses)
    best_params = {**fixed, **{k.removesuffix("_auto_loc"): v for k, v in best.items()}}
    return MAPResult(
        model=model,
        params=best_params,
        losses=losses,
        best_iteration=int(np.argmin(losses)),
        converged=converged,
        svi_state=state,
        guide=guide,
        iterations=len(losses),
        method="adam",
    )


@dataclasses.dataclass(frozen=True)
class PosteriorResult:
    """Result of :func:`sample`.

    Attributes
    ----------
    model : SceneModel
        The sampled model.
    mcmc : numpyro.infer.MCMC
        The raw NumPyro sampler (``mcmc.print_summary()``, ``get_extra_fields()``).
    sampled : tuple of str
        Latent sites that were sampled.
    fixed : dict
        Sites held at fixed (MAP) values.
    auxiliary : tuple of str
        The coordinates NUTS moved instead of a sampled site (``spectrum_softplus``,
        see :mod:`mobs_ppl.softplus_coordinates`): in ``mcmc``'s draws, left out of
        :meth:`samples` and ArviZ.
    """

    model: SceneModel
    mcmc: MCMC
    sampled: tuple
    fixed: dict
    auxiliary: tuple = ()

    def conditioned_model(self):
        """The model with the fixed sites conditioned (what NUTS sampled)."""
        return numpyro.handlers.condition(self.model, data=self.fixed)

    def samples(self, group_by_chain: bool = False) -> dict:
        """Posterior draws of sampled and deterministic sites."""
        draws = self.mcmc.get_samples(group_by_chain=group_by_chain)
        return {k: v for k, v in draws.items() if k not in self.auxiliary}

    def to_arviz(self, log_likelihood: str = "auto"):
        """ArviZ ``InferenceData`` (``DataTree`` with ArviZ 1.x) with named dims.

        Parameters
        ----------
        log_likelihood : {"auto", "pointwise", "total", "none"}
            Per-pixel log-likelihoods for observations with independent pixels
            ("pointwise", enables LOO), one value per observation and draw ("total"),
            or none. "auto" is pointwise unless that exceeds 2e7 values.
        """
        from .arviz_io import posterior_to_arviz

        return posterior_to_arviz(self, log_likelihood)


def _interactive() -> bool:
    """Whether a person is watching: a terminal on stderr, IPython or Jupyter."""
    import sys

    if hasattr(sys, "ps1"):  # the interactive interpreter
        return True
    ipython = sys.modules.get("IPython")  # imported is not running: tqdm.auto imports it
    if ipython is not None and getattr(ipython, "get_ipython", lambda: None)() is not None:
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def sample(
    model: SceneModel,
    init: MAPResult | Mapping | None = None,
    sites: Sequence[str] | None = None,
    num_warmup: int = 500,
    num_samples: int = 500,
    num_chains: int = 2,
    seed: int = 0,
    dense_mass: bool | None = None,
    chain_method: str = "vectorized",
    target_accept_prob: float = 0.8,
    mass_matrix: str = "laplace",
    progress_bar: bool | None = None,
    spectrum_coordinates: str = "softplus",
) -> PosteriorResult:
    """Posterior samples with NUTS, started at the MAP.

    Returns once the draws are computed (JAX dispatches asynchronously: without the
    wait, the time would appear later, in whatever first reads them).

    Parameters
    ----------
    model : SceneModel
        The model.
    init : MAPResult or mapping, optional
        Starting values (and the values of sites that are not sampled).
    sites : sequence of str, optional
        Sites to sample (a base name such as ``"morphology"`` selects every source's);
        the others are held at ``init`` through ``numpyro.handlers.condition``. ``None``
        samples all.
    num_warmup, num_samples, num_chains : int
        NUTS settings; several chains give R-hat. ``num_warmup`` may be zero (no
        adaptation), the others must be at least one.
    seed : int
        Seed of the sampler.
    dense_mass : bool, optional
        Dense mass matrix, for correlated parameters such as blended fluxes. ``None``
        (default): dense up to :data:`~mobs_ppl.laplace_approximation.MAX_DENSE_PARAMETERS`
        sampled parameters, diagonal above (the dense Laplace metric costs one Hessian).
        On COSMOS with joint detection (spectra and shift of ten sources, 62
        parameters, one chain) NUTS took 106 leapfrog steps per draw with the diagonal
        metric (100 + 100 draws) and 66 with the dense one (200 + 200 draws).
    chain_method : {"vectorized", "sequential", "parallel"}
        How chains run (``parallel`` needs one device per chain).
    target_accept_prob : float
        NUTS step-size adaptation target.
    mass_matrix : {"laplace", "laplace+adapt", "adapt"}
        The (inverse) mass matrix. ``"laplace"``: the inverse Hessian of the negative
        log density at the start point (the Laplace covariance at the MAP, dense or
        its diagonal), held fixed while the step size adapts; posterior widths that
        differ by orders of magnitude (log fluxes of bright and faint sources) then
        cost nothing from the first warm-up step. If the start is not a mode (the
        Hessian is not positive definite), a ``MobsPplWarning`` says so and the metric
        is adapted as with ``"laplace+adapt"``. ``"laplace+adapt"``: start from it
        and let NumPyro's windowed adaptation re-estimate it from the warm-up draws.
        ``"adapt"``: NumPyro's default (identity, then windowed adaptation).
    progress_bar : bool, optional
        NumPyro's progress bar. ``None`` (default): shown in interactive use (a
        terminal, IPython or Jupyter), not in scripts whose stderr is a file or a pipe.
    spectrum_coordinates : {"softplus", "log"}
        The coordinates NUTS moves the spectra in, when they are sampled with a
        Laplace metric. ``"softplus"`` (default): ``spectrum = s * softplus(z)`` with
        ``s`` each entry's conditional Laplace sd at the start
        (:mod:`mobs_ppl.softplus_coordinates`): linear for fluxes measured well, an
        exponential tail of unit width for fluxes consistent with zero. ``"log"``:
        NumPyro's own ``spectrum = exp(u)``, whose funnel at zero flux diverges. The
        draws of ``spectrum`` (and everything derived) are the same posterior either
        way; only the sampler's efficiency differs.
    """
    if progress_bar is None:
        progress_bar = _interactive()
    mass_matrix = check_choice("mass_matrix", mass_matrix, ("laplace", "laplace+adapt", "adapt"))
    spectrum_coordinates = check_choice(
        "spectrum_coordinates", spectrum_coordinates, ("softplus", "log")
    )
    chain_method = check_choice(
        "chain_method", chain_method, ("vectorized", "sequential", "parallel")
    )
    num_warmup = check_int("num_warmup", num_warmup, minimum=0)
    num_samples = check_int("num_samples", num_samples, minimum=1)
    num_chains = check_int("num_chains", num_chains, minimum=1)
    seed = check_int("seed", seed)
    target_accept_prob = check_probability("target_accept_prob", target_accept_prob)
    if dense_mass is not None and not isinstance(dense_mass, bool | np.bool_):
        raise TypeError(f"dense_mass must be True, False or None (automatic); got {dense_mass!r}")
    start, fixed = split_sites(model, init, sites)
    if dense_mass is None:
        dense_mass = sum(int(np.size(v)) for v in start.values()) <= MAX_DENSE_PARAMETERS
    conditioned = numpyro.handlers.condition(model, data=fixed)
    inverse_mass = None
    init_values = start
    auxiliary = ()
    adapt = mass_matrix != "laplace"
    if mass_matrix != "adapt":
        problem = unconstrained_problem(model, start, fixed, seed)
        inverse_mass, at_mode = start_inverse_mass_matrix(problem, dense=bool(dense_mass))
        if spectrum_coordinates == "softplus" and "spectrum" in start:
            softplus = softplus_start(problem, "spectrum", inverse_mass, bool(dense_mass))
            conditioned = numpyro.handlers.reparam(
                conditioned, config={"spectrum": softplus.reparam()}
            )
            # a start whose curvature is not positive in NumPyro's coordinates is no
            # mode, whatever it is in these
            inverse_mass, at_mode = softplus.inverse_mass, at_mode and softplus.at_mode
            init_values = softplus.init_values(start)
            auxiliary = (auxiliary_name("spectrum"),)
        if not at_mode and not adapt:
            warnings.warn(
                "the start is not a mode of the sampled sites (the Hessian of the negative "
                "log density is not positive definite there): the metric will be adapted "
                "during warm-up (mass_matrix='laplace+adapt'); fit the MAP to convergence "
                "to sample with the Laplace metric",
                MobsPplWarning,
                stacklevel=2,
            )
            adapt = True
    kernel = NUTS(
        conditioned,
        init_strategy=init_to_value(values=init_values),
        dense_mass=dense_mass,
        target_accept_prob=target_accept_prob,
        inverse_mass_matrix=inverse_mass,
        adapt_mass_matrix=adapt,
    )
    mcmc = MCMC(
        kernel,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        chain_method=chain_method,
        progress_bar=progress_bar,
    )
    mcmc.run(
        jax.random.PRNGKey(seed),
        extra_fields=("diverging", "num_steps", "accept_prob", "energy", "potential_energy"),
    )
    jax.block_until_ready((mcmc.get_samples(), mcmc.get_extra_fields()))
    return PosteriorResult(
        model=model, mcmc=mcmc, sampled=tuple(start), fixed=fixed, auxiliary=auxiliary
    )
