"""MAP fits of many scenes of the same shapes, one compiled call per round for all.

:func:`fit_map_batch` runs the damped Gauss-Newton iteration of :func:`mobs_ppl.fit_map`
(:func:`mobs_ppl.newton.levenberg_marquardt`) on N scenes at once: their
:class:`~mobs_ppl.newton.PosteriorProblem` pytrees are stacked leaf by leaf, and every
round runs one compiled call of the Newton step (and one of the objective per trial
step length) for all of them: inside it the scenes are scanned (``lax.map``) in chunks
of ``vectorize`` scenes that are ``jax.vmap``-ed together (default: 1 on a CPU, where
vmapping the step's while loop computed every branch for every scene and was slower;
all scenes on an accelerator). The decisions between steps -- accept
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

import math
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
    decrement_of,
)
from .sites import split_sites

__all__ = ["fit_map_batch", "stack_problems"]


def _describe(problem: PosteriorProblem) -> dict:
    """What must agree between scenes for them to share one compiled step, by name."""
    model = problem.model
    out = {}
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
    out["sites"] = problem.layout
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


def _over_scenes(function, problems, arguments, wanted, vectorize: int):
    """``function(problem, *arguments)`` of the wanted scenes, in one compiled call.

    Scenes are scanned (``lax.map``) in chunks of ``vectorize`` vectorised ones
    (``jax.vmap``); with ``vectorize=1`` a scene that is not wanted is skipped
    (``lax.cond``), under ``vmap`` it is computed and discarded. Skipped scenes get
    zeros.
    """
    arrays, static = eqx.partition(problems, eqx.is_array)

    def one(item):
        scene_arrays, scene_arguments, scene_wanted = item
        problem = eqx.combine(scene_arrays, static)

        def run(_):
            return function(problem, *scene_arguments)

        def skip(_):
            shapes = jax.eval_shape(run, None)
            return jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)

        return jax.lax.cond(scene_wanted, run, skip, None)

    batch_size = None if vectorize <= 1 else vectorize
    return jax.lax.map(one, (arrays, arguments, wanted), batch_size=batch_size)


def _step_of(problem, z, key, damping, rtol, max_steps, n_projections=_PROJECTIONS):
    return _step(problem, z, key, damping, rtol, max_steps, n_projections)[:6]


@eqx.filter_jit
def _batched_step(problems, z, keys, damping, rtol, max_steps, wanted, vectorize):
    """:func:`mobs_ppl.newton._step` of the wanted scenes (preconditioner left out)."""
    arguments = (z, keys, damping, rtol, max_steps)
    return _over_scenes(_step_of, problems, arguments, wanted, vectorize)


@eqx.filter_jit
def _batched_objective(problems, z, wanted, vectorize):
    """The objective of the wanted scenes at ``z``."""
    return _over_scenes(lambda p, z: p.potential(z), problems, (z,), wanted, vectorize)


def _split_keys(keys):
    pairs = jax.vmap(jax.random.split)(jnp.asarray(keys))
    return np.asarray(pairs[:, 0]), np.asarray(pairs[:, 1])


def _search_and_update(problems, z, finishing, controls, losses, vectorize) -> None:
    """Shorten, take or refuse each finishing scene's step, as ``levenberg_marquardt`` does.

    ``finishing`` holds ``(scene, objective at z, step)``; every round of trial
    lengths is one compiled evaluation of the objective for the scenes still
    searching. ``z`` (host array, one row per scene) and ``losses`` are updated in
    place, and each scene's :class:`~mobs_ppl.newton.StepControl`.
    """
    n = z.shape[0]
    length = [1.0] * n
    ratio = [-1.0] * n
    f_new = [math.nan] * n
    trying = np.zeros(n, bool)
    for i, _, _ in finishing:
        trying[i] = controls[i].usable
    steps = {i: (f, d) for i, f, d in finishing}
    while trying.any():
        trial = z.copy()
        for i in np.flatnonzero(trying):
            trial[i] = z[i] + length[i] * steps[i][1]
        values = _batched_objective(problems, jnp.asarray(trial), jnp.asarray(trying), vectorize)
        values = np.asarray(values)
        for i in np.flatnonzero(trying):
            f_new[i] = float(values[i])
            ratio[i] = controls[i].gain(steps[i][0], f_new[i], length[i])
            if controls[i].shorten(ratio[i], length[i]):
                length[i] *= 0.5
            else:
                trying[i] = False
    for i, (_, d) in steps.items():
        if controls[i].update(ratio[i], length[i]):
            z[i] = z[i] + length[i] * d
            losses[i].append(f_new[i])


# what each scene asks of the next compiled call
_STEP, _CONFIRM, _FINAL, _DONE = range(4)


def fit_map_batch(
    models: Sequence,
    max_iter: int | None = None,
    tol: float = DEFAULT_TOL,
    seed: int = 0,
    sites: Sequence[str] | str | None = None,
    init: Sequence[Mapping | MAPResult | None] | None = None,
    progress_bar: bool = False,
    cg_max_steps: int = 100,
    vectorize: int | None = None,
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
    vectorize : int, optional
        How many scenes' steps are vectorised together (``jax.vmap``) inside the
        compiled call; the chunks are scanned (``lax.map``) one after another. With 1
        every scene runs its own solve to its own number of conjugate-gradient
        iterations and a scene with nothing to do in a round (it is done) is skipped;
        under ``vmap`` the scenes of a chunk run in lock step (the while loop of the
        solve, and every branch of its phases, for all of them until the slowest is
        done). Default: 1 on the CPU, where it was measured faster
        (``benchmarks/map_batch.py``), every scene at once on an accelerator.

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
    Every round is one compiled call in which each scene that is not done does the
    next solve it needs: a Newton step, the tight undamped solve that confirms a small
    decrement (``fit_map`` runs it as an extra call in the same iteration), or the
    final decrement of a scene that stopped unconverged; then one compiled
    evaluation of the objective per trial step length. A scene's sequence of solves
    is the one ``fit_map`` runs, only scheduled with the others'. What is saved is
    the host's work per step and per call (dispatch, transfers, Python), so the
    gain is largest for many small scenes; rounds run until the slowest scene is done.
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

    if vectorize is None:
        vectorize = 1 if jax.default_backend() == "cpu" else n
    vectorize = check_int("vectorize", vectorize, minimum=1)

    z = np.array(stacked.start)
    keys = np.array(jnp.broadcast_to(jax.random.PRNGKey(seed), (n, 2)))
    step_keys = keys.copy()  # each scene's key of its last Newton step
    controls = [StepControl(tol) for _ in range(n)]
    losses = [[] for _ in range(n)]
    pending = [None] * n  # (f, d) of a step whose decrement is being confirmed
    iterations = np.zeros(n, int)
    converged = np.zeros(n, bool)
    decrement = np.full(n, np.inf)
    state = np.full(n, _STEP)
    bar = None
    if progress_bar:
        from tqdm.auto import tqdm

        bar = tqdm(total=int(max_iter), desc="fit_map_batch")
    while (state != _DONE).any():
        # one compiled call: a Newton step, a confirming undamped solve or the final
        # decrement, whichever each scene is at
        wanted = state != _DONE
        split, sub = _split_keys(keys)
        renew = (state == _STEP) | (state == _FINAL)
        keys[renew] = split[renew]
        step_keys[state == _STEP] = sub[state == _STEP]
        call_keys = np.where((state == _FINAL)[:, None], sub, step_keys)
        tight = (state == _CONFIRM) | (state == _FINAL)
        damping = np.where(tight, 0.0, [c.damping for c in controls])
        rtol = np.where(tight, _DECREMENT_RTOL, [c.rtol for c in controls])
        max_steps = np.where(tight, _DECREMENT_CG_STEPS, cg_max_steps)
        outputs = _batched_step(
            stacked,
            jnp.asarray(z),
            jnp.asarray(call_keys),
            jnp.asarray(damping, dtype),
            jnp.asarray(rtol, dtype),
            jnp.asarray(max_steps),
            jnp.asarray(wanted),
            vectorize,
        )
        f, d, slope, quadratic, decrement2, _ = (np.asarray(x) for x in outputs)
        finishing = []  # scenes whose step is now searched along and taken or refused
        for i in np.flatnonzero(wanted):
            if state[i] == _STEP:
                iterations[i] += 1
                if not losses[i]:
                    try:
                        check_start_objective(f[i])
                    except FloatingPointError as error:
                        raise FloatingPointError(f"scene {i}: {error}") from None
                    losses[i].append(float(f[i]))
                controls[i].assess(slope[i], quadratic[i], decrement2[i])
                if controls[i].wants_confirmation():
                    pending[i] = (float(f[i]), d[i].copy())
                    state[i] = _CONFIRM
                else:
                    finishing.append((i, float(f[i]), d[i]))
            elif state[i] == _CONFIRM:
                decrement[i] = decrement_of(decrement2[i])
                if decrement[i] < tol:
                    converged[i] = True
                    state[i] = _DONE
                else:
                    controls[i].confirmation_failed()
                    finishing.append((i, *pending[i]))
                    state[i] = _STEP
                pending[i] = None
            else:  # _FINAL
                decrement[i] = decrement_of(decrement2[i])
                converged[i] = decrement[i] < tol
                state[i] = _DONE
        _search_and_update(stacked, z, finishing, controls, losses, vectorize)
        for i, _, _ in finishing:
            if controls[i].stalled or iterations[i] >= max_iter:
                state[i] = _FINAL
        if bar is not None:
            bar.n = int(iterations.max())
            bar.set_postfix(iterating=int((state != _DONE).sum()))
            bar.refresh()
    if bar is not None:
        bar.close()
    results = []
    for i, (model, problem) in enumerate(zip(models, problems, strict=True)):
        results.append(
            MAPResult(
                model=model,
                params={**fixed[i], **problem.values(jnp.asarray(z[i]))},
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
