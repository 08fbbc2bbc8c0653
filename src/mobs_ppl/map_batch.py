"""MAP fits of many scenes of the same shapes, one compiled, vectorised step for all.

:func:`fit_map_batch` runs the damped Gauss-Newton iteration of :func:`mobs_ppl.fit_map`
(:func:`mobs_ppl.newton.levenberg_marquardt`) on N scenes at once: their
:class:`~mobs_ppl.newton.PosteriorProblem` pytrees are stacked leaf by leaf, and every
iteration runs one ``jax.vmap``-ed Newton step (and one vectorised evaluation of the
objective per trial step length) for all of them. The decisions between steps -- accept
or shorten a step, damp more, confirm the decrement with a tight undamped solve -- are
taken per scene on the host by the same :class:`~mobs_ppl.newton.StepControl` that
``fit_map`` uses, so each scene follows the path it would follow on its own: the same
random projections (each scene's key advances with its own steps), the same
convergence criterion (Newton decrement below ``tol``, confirmed by the same tight
solve). A scene that is done keeps its point while the others go on.

The scenes must share shapes and structure: the same observations (names, channels,
pixel grids), the same number and kinds of sources in the same order, with the same
boxes (size and origin, which are static: they set the slices the renderer takes) and
the same sites. Simulated blends share them when every blend is built the same way:
parametric sources (``GaussianSource``, ``SersicSource``) with an explicit ``box_size``
and initial centres that round to the same pixels (sub-pixel offsets, different
fluxes, radii and shapes are free), observations of one shape and PSF size. Scenes
from :func:`mobs_ppl.init.from_observation` get boxes from their detections and rarely
share them.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._checks import check_int, check_positive
from ._warnings import MobsPplWarning
from .inference import MAPResult
from .newton import (
    _DECREMENT_CG_STEPS,
    _DECREMENT_RTOL,
    _PROJECTIONS,
    DEFAULT_TOL,
    PosteriorProblem,
    StepControl,
    _step,
    check_start_objective,
)
from .sites import split_sites

__all__ = ["fit_map_batch", "stack_problems"]


def _describe(problem: PosteriorProblem) -> dict:
    """What must agree between scenes for them to share one compiled step, by name."""
    model = problem.model
    out = {"sites": problem.layout}
    scene = getattr(model, "scene", None)
    if scene is not None:
        out["number of sources"] = len(scene.sources)
        for i, source in enumerate(scene.sources):
            out[f"source {i}"] = (
                f"{type(source).__name__}, box {tuple(source.box_shape)} at origin "
                f"{tuple(source.origin) if source.origin is not None else None}"
            )
    for obs in getattr(model, "observations", ()):
        shape = tuple(np.shape(getattr(obs, "data", ())))
        out[f"observation {obs.name!r}"] = f"data shape {shape}"
    return out


def stack_problems(problems: Sequence[PosteriorProblem]) -> PosteriorProblem:
    """Stack problems of the same structure and shapes leaf by leaf (a leading scene axis).

    Parameters
    ----------
    problems : sequence of PosteriorProblem
        At least one; every array leaf of every problem must have the shape and dtype
        of the first's, every other leaf (and every static field) must be equal.

    Returns
    -------
    PosteriorProblem
        The array leaves have a leading axis of ``len(problems)``.

    Raises
    ------
    ValueError
        Naming the first scene that differs from scene 0 and what differs (number of
        sources, a source's kind or box, an observation's shape, the sites, or else the
        path of the leaf in the pytree).
    """
    if not problems:
        raise ValueError("no scenes to stack")
    first = _describe(problems[0])
    arrays0, static0 = eqx.partition(problems[0], eqx.is_array)
    leaves0, treedef0 = jax.tree_util.tree_flatten_with_path(arrays0)
    for index, problem in enumerate(problems[1:], start=1):
        described = _describe(problem)
        for what in dict.fromkeys([*first, *described]):
            if first.get(what) != described.get(what):
                raise ValueError(
                    f"fit_map_batch needs scenes of the same shapes: scene {index} differs "
                    f"from scene 0 in its {what} ({described.get(what)} vs "
                    f"{first.get(what)}); see mobs_ppl.map_batch for how to build scenes "
                    "that share shapes"
                )
        arrays, static = eqx.partition(problem, eqx.is_array)
        leaves, treedef = jax.tree_util.tree_flatten_with_path(arrays)
        if treedef != treedef0 or not eqx.tree_equal(static, static0):
            raise ValueError(
                f"fit_map_batch needs scenes of the same structure: scene {index} differs "
                "from scene 0 in a static setting (a source's or observation's settings, "
                "priors, shifts or calibrations)"
            )
        for (path, a), (_, b) in zip(leaves0, leaves, strict=True):
            if np.shape(a) != np.shape(b) or jnp.result_type(a) != jnp.result_type(b):
                raise ValueError(
                    f"fit_map_batch needs scenes of the same shapes: scene {index} has "
                    f"{jax.tree_util.keystr(path)} of shape {np.shape(b)} "
                    f"({jnp.result_type(b)}), scene 0 {np.shape(a)} ({jnp.result_type(a)})"
                )
    stacked = jax.tree.map(
        lambda *x: jnp.stack(x), *[eqx.filter(p, eqx.is_array) for p in problems]
    )
    return eqx.combine(stacked, static0)


@eqx.filter_jit
def _batched_step(problems, z, keys, damping, rtol, max_steps, n_projections=_PROJECTIONS):
    """:func:`mobs_ppl.newton._step` of every scene, vectorised (preconditioner left out)."""

    def one(problem, z, key, damping, rtol, max_steps):
        return _step(problem, z, key, damping, rtol, max_steps, n_projections)[:6]

    return eqx.filter_vmap(one)(problems, z, keys, damping, rtol, max_steps)


@eqx.filter_jit
def _batched_objective(problems, z):
    return eqx.filter_vmap(lambda problem, z: problem.potential(z))(problems, z)


def _split_keys(keys):
    pairs = jax.vmap(jax.random.split)(keys)
    return pairs[:, 0], pairs[:, 1]


def _decrements(problems, z, keys, wanted, dtype) -> np.ndarray:
    """Undamped, tight decrements of the ``wanted`` scenes (``inf``: no mode), one call.

    The other scenes' solves stop after one conjugate-gradient iteration.
    """
    n = len(wanted)
    damping = jnp.zeros(n, dtype)
    rtol = jnp.full(n, _DECREMENT_RTOL, dtype)
    max_steps = jnp.asarray(np.where(wanted, _DECREMENT_CG_STEPS, 1))
    decrement2 = np.asarray(_batched_step(problems, z, keys, damping, rtol, max_steps)[4])
    good = np.isfinite(decrement2) & (decrement2 > 0)
    return np.where(good, np.sqrt(np.where(good, decrement2, 1.0)), np.inf)


def fit_map_batch(
    models: Sequence,
    max_iter: int | None = None,
    tol: float = DEFAULT_TOL,
    seed: int = 0,
    sites: Sequence[str] | str | None = None,
    init: Sequence[Mapping | MAPResult | None] | None = None,
    progress_bar: bool = False,
    cg_max_steps: int = 100,
) -> list[MAPResult]:
    """MAP fits of many scenes of the same shapes, to the mode, in one compiled step.

    Each scene gets the fit :func:`mobs_ppl.fit_map` (``method="newton"``) would give
    it: the same iteration, decisions and convergence criterion, up to the rounding of
    the vectorised operations. See :mod:`mobs_ppl.map_batch` for what the scenes must
    share.

    Parameters
    ----------
    models : sequence of SceneModel
        The scenes, all of the same shapes and structure.
    max_iter : int, optional
        Largest number of Newton steps per scene (default 500, as ``fit_map``).
    tol : float
        A scene has converged when its Newton decrement (undamped, Gauss-Newton
        curvature, NumPyro's unconstrained posterior: roughly the distance to the mode
        in posterior standard deviations) is below this.
    seed : int
        Seed of the random projections that estimate the curvature's diagonal; every
        scene starts from the same key, as ``fit_map(model, seed=seed)`` does.
    sites : sequence of str or str, optional
        Sites to optimise (as in ``fit_map``); the others are held at their ``init``
        values. The same for every scene.
    init : sequence, optional
        One entry per scene: a previous fit, a mapping of initial values by site name,
        or ``None`` (the model's own values).
    progress_bar : bool
        Show a tqdm bar of the steps, with the number of scenes still iterating.
    cg_max_steps : int
        Largest number of conjugate-gradient iterations per step.

    Returns
    -------
    list of MAPResult
        In the order of ``models``, each as ``fit_map`` returns it (``params`` holds
        every site, the fixed ones too; ``losses`` the objective at every accepted
        step).

    Raises
    ------
    ValueError
        For scenes of different shapes or structure (naming the scene and what
        differs), an ``init`` of the wrong length, or a bad count or tolerance.
    FloatingPointError
        When the objective of a scene is not finite at its starting point.

    Warns
    -----
    MobsPplWarning
        When some scenes stop before their decrement falls below ``tol``.

    Notes
    -----
    All scenes advance in lock step, and a vectorised solve runs as many
    conjugate-gradient iterations as the slowest scene needs, so the throughput
    gained over sequential fits is largest for many small scenes of similar
    difficulty (where each step of a single fit costs more in dispatch than in
    arithmetic). Scenes that are done are carried along at no extra host cost.
    """
    models = list(models)
    if not models:
        raise ValueError("models is empty: fit_map_batch needs at least one scene")
    max_iter = 500 if max_iter is None else check_int("max_iter", max_iter, minimum=1)
    tol = check_positive("tol", tol)
    seed = check_int("seed", seed)
    cg_max_steps = check_int("cg_max_steps", cg_max_steps, minimum=1)
    if init is None:
        init = [None] * len(models)
    init = list(init)
    if len(init) != len(models):
        raise ValueError(f"init has {len(init)} entries for {len(models)} models: give one each")

    problems, fixed = [], []
    for model, start in zip(models, init, strict=True):
        values, held = split_sites(model, start, sites)
        problems.append(PosteriorProblem.build(model, values, held))
        fixed.append(held)
    stacked = stack_problems(problems)
    n = len(problems)
    dtype = problems[0].start.dtype

    z = stacked.start
    keys = jnp.broadcast_to(jax.random.PRNGKey(seed), (n, 2))
    controls = [StepControl(tol) for _ in range(n)]
    losses = [[] for _ in range(n)]
    iterations = np.zeros(n, int)
    converged = np.zeros(n, bool)
    decrement = np.full(n, np.inf)
    active = np.ones(n, bool)
    bar = None
    if progress_bar:
        from tqdm.auto import tqdm

        bar = tqdm(total=int(max_iter), desc="fit_map_batch")
    for iteration in range(1, int(max_iter) + 1):
        split, sub = _split_keys(keys)
        keys = jnp.where(active[:, None], split, keys)
        iterations[active] = iteration
        damping = np.array([c.damping for c in controls], dtype)
        rtol = np.array([c.rtol for c in controls], dtype)
        max_steps = np.where(active, cg_max_steps, 1)
        f, d, slope, quadratic, decrement2, _ = _batched_step(
            stacked, z, sub, jnp.asarray(damping), jnp.asarray(rtol), jnp.asarray(max_steps)
        )
        f, slope, quadratic, decrement2 = (
            np.asarray(x, float) for x in (f, slope, quadratic, decrement2)
        )
        if iteration == 1:
            for i in range(n):
                try:
                    check_start_objective(f[i])
                except FloatingPointError as error:
                    raise FloatingPointError(f"scene {i}: {error}") from None
                losses[i].append(float(f[i]))
        for i in np.flatnonzero(active):
            controls[i].assess(slope[i], quadratic[i], decrement2[i])
        confirm = active & np.array([c.wants_confirmation() for c in controls])
        if confirm.any():
            confirmed = _decrements(stacked, z, sub, confirm, dtype)
            for i in np.flatnonzero(confirm):
                decrement[i] = confirmed[i]
                if confirmed[i] < tol:
                    converged[i] = True
                    active[i] = False
                else:
                    controls[i].confirmation_failed()
        searching = active & np.array([c.usable for c in controls])
        ratio = np.full(n, -1.0)
        length = np.ones(n)
        f_new = np.full(n, np.nan)
        trying = searching.copy()
        while trying.any():
            trial = z + jnp.asarray(np.where(trying, length, 0.0), dtype)[:, None] * d
            values = np.asarray(_batched_objective(stacked, trial), float)
            for i in np.flatnonzero(trying):
                f_new[i] = values[i]
                ratio[i] = controls[i].gain(f[i], f_new[i], length[i])
                if controls[i].shorten(ratio[i], length[i]):
                    length[i] *= 0.5
                else:
                    trying[i] = False
        accepted = np.zeros(n, bool)
        for i in np.flatnonzero(active):
            accepted[i] = controls[i].update(ratio[i], length[i])
            if accepted[i]:
                losses[i].append(float(f_new[i]))
            if controls[i].stalled:
                active[i] = False
        move = jnp.asarray(np.where(accepted, length, 0.0), dtype)[:, None] * d
        z = jnp.where(jnp.asarray(accepted)[:, None], z + move, z)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(iterating=int(active.sum()))
        if not active.any():
            break
    if bar is not None:
        bar.close()
    unfinished = ~converged
    if unfinished.any():
        _, sub = _split_keys(keys)
        final = _decrements(stacked, z, sub, unfinished, dtype)
        decrement[unfinished] = final[unfinished]
        converged[unfinished] = final[unfinished] < tol
    results = []
    for i, (model, problem) in enumerate(zip(models, problems, strict=True)):
        results.append(
            MAPResult(
                model=model,
                params={**fixed[i], **problem.values(z[i])},
                losses=np.asarray(losses[i]),
                best_iteration=len(losses[i]) - 1,
                converged=bool(converged[i]),
                decrement=float(decrement[i]),
                iterations=int(iterations[i]),
                method="newton",
            )
        )
    if not converged.all():
        stopped = np.flatnonzero(~converged)
        warnings.warn(
            f"fit_map_batch: {stopped.size} of {n} scenes stopped before their Newton "
            f"decrement fell below {tol} (scenes {stopped.tolist()[:10]}"
            f"{'...' if stopped.size > 10 else ''}): raise max_iter, or continue with "
            "fit_map_batch(models, init=fits)",
            MobsPplWarning,
            stacklevel=2,
        )
    return results
