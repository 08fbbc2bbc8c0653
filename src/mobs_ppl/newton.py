"""MAP fits to the mode: damped Gauss-Newton (Levenberg-Marquardt) on the posterior.

The negative log posterior of a :class:`~mobs_ppl.SceneModel` is a least-squares term,
half the squared norm of the whitened residuals of all observations (each likelihood
distribution gives its own, ``whitened_residual``), plus the negative log prior. The
mode sought is the one of the density NUTS samples and the Laplace approximation is
centred on: NumPyro's unconstrained parameters (log spectra, logit morphologies), i.e.
the prior includes the log-Jacobians of the transforms.

The iteration works in the constrained coordinates (fluxes, morphology values relative
to their envelopes), where the model's prediction is bilinear in spectra and
morphologies, so a Gauss-Newton step predicts the change of the residuals far better
than in log / logit coordinates (on COSMOS the same iteration in NumPyro's
unconstrained space needs steps 1e6 times more damped; with log spectra alone it ends
100 above the objective reached in linear coordinates). The log-Jacobians then act as
barrier terms (``-log m - log(1 - m)`` for a morphology pixel), and a step is
shortened per coordinate so that no value goes more than 90% of the way to a bound of
its support, as in interior-point methods.

Each step solves ``(J^T J + H_prior + lambda D) d = -g`` by preconditioned conjugate
gradients (:mod:`mobs_ppl.krylov`), matrix-free: ``J v`` and ``J^T w`` by forward and reverse
differentiation of the residuals linearised once per step, ``H_prior v`` by
differentiating the prior terms. ``H_prior`` is a positive semi-definite model of their
Hessian, as ``J^T J`` is of the likelihood's: exact for every term but the upper barrier
``-log(1 - m)`` of the morphologies iterated relative to their envelopes, which enters
by its Gauss-Newton term (:meth:`PosteriorProblem.convex_prior_potential` says why).
``D``, also the preconditioner, is the diagonal of ``J^T J + H_prior``: that of
``J^T J`` from random projections (``E[(J^T z)^2]``, ``z`` standard normal over the
residuals: no cross terms, so 16 projections give it to ~35%), that of ``H_prior`` from
Rademacher probes. The damping ``lambda`` follows the ratio of actual to
predicted decrease (Nielsen's rule).

Converged means the Newton decrement ``sqrt(g^T H^{-1} g)`` (with the Gauss-Newton
``H``) is below ``tol``: the mode is then less than ``tol`` posterior standard
deviations away along the Newton direction, and the objective within ``tol^2 / 2`` of
its minimum -- a criterion without units, whatever the data's units or the number of
parameters.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.handlers as handlers
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to

from ._checks import check_int, check_positive
from .krylov import apply_balancing, coarse_factor

__all__ = ["PosteriorProblem", "NewtonResult", "levenberg_marquardt", "DEFAULT_TOL"]

#: Default bound on the Newton decrement for a converged fit.
DEFAULT_TOL = 0.1

#: Conjugate-gradient iterations and relative precision of the solve that confirms
#: the decrement.
_DECREMENT_CG_STEPS = 1000
_DECREMENT_RTOL = 1e-3

#: Smallest ratio of actual to predicted decrease of the objective for a step to count.
_GAIN_ACCEPT = 1e-4

#: Shortest fraction of a Gauss-Newton step tried along its direction before damping.
_SHORTEST_STEP = 0.2

#: A step moves a bounded coordinate at most this fraction of the way to its bound.
_FRACTION_TO_BOUNDARY = 0.9


def _base_constraint(c):
    while isinstance(c, constraints.independent):
        c = c.base_constraint
    return c


def _bounds(name: str, support, shape) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds of a site's support, broadcast to its shape."""
    base = _base_constraint(support)
    if base is constraints.real:
        lower, upper = -np.inf, np.inf
    elif base is constraints.positive:
        lower, upper = 0.0, np.inf
    elif isinstance(base, constraints.interval):
        lower, upper = np.asarray(base.lower_bound), np.asarray(base.upper_bound)
    elif isinstance(base, type(constraints.greater_than(0.0))):
        lower, upper = np.asarray(base.lower_bound), np.inf
    elif isinstance(base, type(constraints.less_than(0.0))):
        lower, upper = -np.inf, np.asarray(base.upper_bound)
    else:
        raise ValueError(
            f"site {name!r} has support {support}; fit_map(method='newton') handles real, "
            "positive and interval supports: use method='adam' for this prior"
        )
    return (
        np.broadcast_to(np.asarray(lower, float), shape).copy(),
        np.broadcast_to(np.asarray(upper, float), shape).copy(),
    )


def _envelope_image(source, params):
    return source.envelope.with_params(params).image(source.origin, source.box_shape)


def _envelope_ties(model, names) -> tuple:
    """``(morphology site, envelope site, source index)`` of the tied non-parametric sources."""
    from .sources import site_name

    scene = getattr(model, "scene", None)
    if scene is None:
        return ()
    ties = []
    for i, source in enumerate(scene.sources):
        if getattr(source, "envelope", None) is None:
            continue
        morphology, envelope = site_name("morphology", i), site_name("envelope", i)
        if morphology in names and envelope in names:
            ties.append((morphology, envelope, i))
    return tuple(ties)


def _latent_sites(trace, fixed):
    return [
        (name, site)
        for name, site in trace.items()
        if site["type"] == "sample" and not site["is_observed"] and name not in fixed
    ]


class PosteriorProblem(eqx.Module):
    """The negative log posterior of a model over chosen sites, constrained coordinates.

    A pytree: the compiled functions of :func:`levenberg_marquardt` and
    :func:`mobs_ppl.laplace` take it as an argument, so a second fit or a Laplace
    approximation of the same model (or of a model of the same shapes and structure)
    reuses the compiled code.

    Attributes
    ----------
    model : SceneModel
        The NumPyro model.
    fixed : dict
        Values of the sites held fixed (conditioned).
    start : jax.Array
        The starting point, flat coordinates (sites in sorted order).
    lower, upper : jax.Array
        Bounds of every coordinate (``-inf`` / ``inf`` where there is none).
    layout : tuple
        ``(site, shape)`` of every coordinate block, in order.
    ties : tuple
        ``(morphology site, envelope site, source index)`` of the non-parametric
        sources whose pixels are iterated relative to their envelope: the coordinate of
        such a morphology is ``m / envelope``, so that the pixels follow when the
        envelope changes (far from the source they are set by the envelope alone, and
        took tens of steps to follow a change of its radius or index; 8 steps instead
        of 88 on a one-galaxy simulation).
    positive_sites : frozenset
        Sites whose coordinates are bounded below by zero.
    """

    model: object
    fixed: dict
    start: jax.Array
    lower: jax.Array
    upper: jax.Array
    layout: tuple = eqx.field(static=True)
    ties: tuple = eqx.field(static=True)
    positive_sites: frozenset = eqx.field(static=True)

    @classmethod
    def build(cls, model, start: Mapping, fixed: Mapping | None = None) -> PosteriorProblem:
        """The problem of ``model`` over the sites of ``start``, ``fixed`` held."""
        fixed = {k: jnp.asarray(v) for k, v in dict(fixed or {}).items()}
        # the supports are all that is needed: the prior alone (nothing is rendered)
        prior_only = functools.partial(model, likelihood=False)
        conditioned = handlers.condition(prior_only, data=fixed)
        trace = handlers.trace(handlers.substitute(conditioned, data=dict(start))).get_trace()
        names = sorted(start)
        lower, upper, values = {}, {}, {}
        for name in names:
            shape = np.shape(start[name])
            lower[name], upper[name] = _bounds(name, trace[name]["fn"].support, shape)
            values[name] = jnp.asarray(start[name], dtype=jnp.result_type(float))
        ties = _envelope_ties(model, names)
        for morphology, _, _ in ties:
            upper[morphology] = np.full(np.shape(values[morphology]), np.inf)
        problem = cls(
            model=model,
            fixed=fixed,
            start=jnp.zeros(0),
            lower=_concatenate([lower[k] for k in names]),
            upper=_concatenate([upper[k] for k in names]),
            layout=tuple((k, tuple(np.shape(values[k]))) for k in names),
            ties=ties,
            positive_sites=frozenset(k for k in names if np.all(lower[k] >= 0)),
        )
        return eqx.tree_at(lambda p: p.start, problem, problem.coordinates(values))

    # -- coordinates -------------------------------------------------------------------
    def unravel(self, z) -> dict:
        """Flat coordinates -> ``{site: coordinate block}``."""
        out, offset = {}, 0
        for name, shape in self.layout:
            size = int(np.prod(shape, dtype=int))
            out[name] = jnp.reshape(z[offset : offset + size], shape)
            offset += size
        return out

    def ravel(self, blocks: Mapping) -> jax.Array:
        """``{site: coordinate block}`` -> flat coordinates."""
        return _concatenate([jnp.ravel(blocks[name]) for name, _ in self.layout])

    def _envelope(self, index, params):
        return _envelope_image(self.model.scene.sources[index], params)

    def values(self, z) -> dict:
        """``{site: value}`` of a flat point (constrained space)."""
        values = self.unravel(z)
        for morphology, envelope, index in self.ties:
            values[morphology] = values[morphology] * self._envelope(index, values[envelope])
        return values

    def coordinates(self, values: Mapping) -> jax.Array:
        """The flat point of ``{site: value}`` (inverse of :meth:`values`)."""
        blocks = {name: jnp.asarray(values[name]) for name, _ in self.layout}
        for morphology, envelope, index in self.ties:
            blocks[morphology] = blocks[morphology] / self._envelope(index, blocks[envelope])
        return self.ravel(blocks)

    # -- the objective -----------------------------------------------------------------
    def trace(self, values: Mapping, likelihood: bool = True):
        """The model's trace at constrained ``values`` (fixed sites conditioned).

        ``likelihood=False`` traces the prior alone (a :class:`~mobs_ppl.SceneModel`
        then renders nothing), which is all the prior terms need.
        """
        model = self.model if likelihood else functools.partial(self.model, likelihood=False)
        conditioned = handlers.condition(model, data=self.fixed)
        return handlers.trace(handlers.substitute(conditioned, data=dict(values))).get_trace()

    def _residual_of(self, trace) -> jax.Array:
        parts = [
            jnp.ravel(site["fn"].whitened_residual(site["value"]))
            for name, site in trace.items()
            if site["type"] == "sample" and site["is_observed"] and name not in self.fixed
        ]
        return jnp.concatenate(parts)

    def _prior_of(self, trace) -> jax.Array:
        total = 0.0
        for _, site in _latent_sites(trace, self.fixed):
            value = site["value"]
            transform = biject_to(site["fn"].support)
            total = total + jnp.sum(site["fn"].log_prob(value))
            total = total + jnp.sum(transform.log_abs_det_jacobian(transform.inv(value), value))
        return -total

    def upper_at(self, z) -> jax.Array:
        """Upper bounds of the coordinates at ``z``.

        A tied morphology's coordinate ``u = m / envelope`` is bounded by ``1 /
        envelope``, which moves with the envelope's parameters: the bound holds for a
        step that leaves them (nearly) where they are.
        """
        if not self.ties:
            return self.upper
        values = self.unravel(z)
        blocks = self.unravel(self.upper)
        for morphology, envelope, index in self.ties:
            blocks[morphology] = 1.0 / self._envelope(index, values[envelope])
        return self.ravel(blocks)

    def tied_values(self, z) -> jax.Array:
        """The pixels of the tied morphologies at ``z``, concatenated (constrained space)."""
        values = self.values(z)
        return _concatenate([values[morphology] for morphology, _, _ in self.ties])

    def convex_prior_potential(self, z) -> jax.Array:
        """The prior terms but the upper barrier ``-log(1 - m)`` of the tied morphologies.

        In the coordinates of a tied morphology (``u = m / envelope``) the Gamma prior
        of its pixels with the log-Jacobian ``log m`` of the logit transform does not
        depend on the envelope (its ``log envelope`` terms cancel) and is convex in
        ``u``; only the upper barrier ``-log(1 - u envelope(theta))`` feels the
        envelope's parameters, through a sum over the box that is not convex in them
        (the envelope's area falls either way from round: on COSMOS its exact Hessian
        has curvature -200 along an ellipticity where the data give +15). The curvature
        of :func:`levenberg_marquardt` therefore takes the exact Hessian of this part,
        and the barrier's Gauss-Newton term (``newton._prior_curvature``): a model
        convex like the Gauss-Newton one of the likelihood, whose dropped
        second-order terms cancel at the mode.
        """
        barrier = 0.0
        if self.ties:
            barrier = jnp.sum(jnp.log1p(-self.tied_values(z)))
        return self.prior_potential(z) + barrier

    def residual(self, z) -> jax.Array:
        """Whitened residuals of every observation, concatenated."""
        return self._residual_of(self.trace(self.values(z)))

    def prior_potential(self, z) -> jax.Array:
        """Negative log prior, with the log-Jacobians of NumPyro's transforms."""
        return self._prior_of(self.trace(self.values(z), likelihood=False))

    def potential(self, z) -> jax.Array:
        """Negative log posterior (up to a constant): ``0.5 |r|^2`` plus the prior terms."""
        return self.potential_of_values(self.values(z))

    def potential_of_values(self, values: Mapping) -> jax.Array:
        """The negative log posterior at constrained ``{site: value}``.

        The prior terms include the log-Jacobians of NumPyro's transforms, so this is
        the potential energy NUTS sees, up to a constant (the likelihoods'
        normalisation), whatever coordinates it is differentiated in.
        """
        trace = self.trace(values)
        return 0.5 * jnp.sum(self._residual_of(trace) ** 2) + self._prior_of(trace)

    def derived(self, values: Mapping) -> dict:
        """The latent and deterministic sites' values at constrained ``values``."""
        trace = self.trace(values, likelihood=False)
        return {
            name: site["value"]
            for name, site in trace.items()
            if site["type"] == "deterministic"
            or (site["type"] == "sample" and not site["is_observed"] and name not in self.fixed)
        }

    # -- NumPyro's unconstrained space -----------------------------------------------
    def to_unconstrained(self, z) -> jax.Array:
        """Flat unconstrained point (NumPyro's order: sorted sites) of flat coordinates."""
        values = self.values(z)
        trace = self.trace(values, likelihood=False)
        blocks = {k: biject_to(trace[k]["fn"].support).inv(values[k]) for k, _ in self.layout}
        return self.ravel(blocks)

    def from_unconstrained(self, u) -> dict:
        """``{site: value}`` (constrained) of a flat unconstrained point."""
        blocks = self.unravel(u)
        # the supports do not depend on the values (the scene's priors), so one trace at
        # the start gives every transform
        trace = self.trace(self.values(self.start), likelihood=False)
        return {k: biject_to(trace[k]["fn"].support)(blocks[k]) for k, _ in self.layout}


def _concatenate(blocks) -> jax.Array:
    blocks = [jnp.ravel(jnp.asarray(b, dtype=jnp.result_type(float))) for b in blocks]
    return jnp.concatenate(blocks) if blocks else jnp.zeros(0)


@dataclasses.dataclass(frozen=True)
class NewtonResult:
    """Outcome of :func:`levenberg_marquardt`.

    Attributes
    ----------
    z : jax.Array
        The final point (flat, constrained coordinates).
    losses : ndarray
        The objective at every accepted iterate, starting point first.
    decrement : float
        Newton decrement at ``z``.
    iterations : int
        Steps tried (accepted or not).
    converged : bool
        ``decrement < tol``.
    cg_steps : ndarray
        Conjugate-gradient iterations of every step.
    seconds : float
        Wall time.
    """

    z: jax.Array
    losses: np.ndarray
    decrement: float
    iterations: int
    converged: bool
    cg_steps: np.ndarray
    seconds: float


def _collective_directions(problem: PosteriorProblem, z) -> jax.Array:
    """``(k, n)`` coarse space: directions in which many coordinates move together.

    Per site: its scale (the coordinates times themselves) when its values are
    positive, every coordinate of a small (at most eight values) real site, and every
    row of the spectrum scaled as a whole. With the morphologies iterated relative to
    their envelopes (``PosteriorProblem.ties``), these hold the slow directions of a
    pixel-by-pixel preconditioner: a morphology's scale traded against its spectrum,
    an envelope's parameters with all its pixels following.
    """
    coordinates = problem.unravel(z)
    zero = {k: jnp.zeros_like(v) for k, v in coordinates.items()}
    directions = []
    for name, value in coordinates.items():
        if name == "spectrum":
            for i in range(value.shape[0]):
                row = jnp.zeros_like(value).at[i].set(value[i])
                directions.append(problem.ravel({**zero, name: row}))
        elif name in problem.positive_sites and value.size > 1:
            directions.append(problem.ravel({**zero, name: value}))
        elif value.size <= 8:
            for k in range(value.size):
                unit = jnp.zeros(value.size, value.dtype).at[k].set(1.0).reshape(value.shape)
                directions.append(problem.ravel({**zero, name: unit}))
    if not directions:
        return jnp.zeros((0, z.size), dtype=z.dtype)
    return jnp.stack(directions)


def _prior_curvature(problem: PosteriorProblem, z):
    """``v -> H v`` of a positive semi-definite model of the prior terms' Hessian.

    The exact Hessian of :meth:`PosteriorProblem.convex_prior_potential`, plus the
    Gauss-Newton term ``J^T diag(1 / (1 - m)^2) J`` of the tied morphologies' upper
    barrier (``J = dm / dz``); without ties, the exact Hessian of the prior terms.
    """
    return _prior_parts(problem, z)[2]


def _traced(damping, rtol, max_steps):
    """The step's numeric settings as arrays, so that changing them does not recompile."""
    dtype = jnp.result_type(float)
    return jnp.asarray(damping, dtype), jnp.asarray(rtol, dtype), jnp.asarray(max_steps)


@eqx.filter_jit
def _objective(problem: PosteriorProblem, z):
    return problem.potential(z)


def _prior_parts(problem: PosteriorProblem, z):
    """The prior terms at ``z``: value, gradient and ``v -> H v`` (see :func:`_prior_curvature`).

    One linearisation serves all three (the value and gradient of the convex part are
    the primal outputs of the linearised gradient; the barrier's are added back), so
    the compiled step holds the prior's forward and backward passes once.
    """
    (convex, convex_gradient), tangent = jax.linearize(
        jax.value_and_grad(problem.convex_prior_potential), z
    )

    def convex_hvp(v):
        return tangent(v)[1]

    if not problem.ties:
        return convex, convex_gradient, convex_hvp
    tied, tied_jvp = jax.linearize(problem.tied_values, z)
    tied_vjp = jax.linear_transpose(tied_jvp, z)
    weight = 1.0 / (1.0 - tied) ** 2
    # convex = prior + sum log(1 - m): the prior is convex - sum log(1 - m)
    value = convex - jnp.sum(jnp.log1p(-tied))
    gradient = convex_gradient + tied_vjp(1.0 / (1.0 - tied))[0]

    def hvp(v):
        return convex_hvp(v) + tied_vjp(weight * tied_jvp(v))[0]

    return value, gradient, hvp


# phases of the step's single loop over curvature products (see _step)
_PROBE, _COARSE, _SOLVE, _QUADRATIC, _DONE = range(5)
_PRIOR_PROBES = 4
#: Random projections of the Gauss-Newton diagonal per step (one value everywhere, so
#: that the fit, its decrement and the Laplace preconditioner share one compiled step).
_PROJECTIONS = 16


@eqx.filter_jit
def _step(problem: PosteriorProblem, z, key, damping, rtol, max_steps, n_projections=_PROJECTIONS):
    """One damped Gauss-Newton step from ``z``: the objective there, the step and more.

    Returns ``(f, d, slope, quadratic, decrement2, n_cg, preconditioner)``: the
    objective at ``z``, the step (clipped to the bounds), ``g . d``, ``d . H d``, the
    damped solve's squared decrement ``-g . raw`` (NaN when the solve met non-positive
    curvature at once), the conjugate-gradient iterations and the parts ``(scale,
    basis, applied, factor)`` of the solve's preconditioner (see
    :func:`gauss_newton_preconditioner`).

    Every curvature product of the step (probes of the prior's diagonal, the coarse
    space of the preconditioner, the conjugate-gradient iterations and ``d . H d``)
    runs at one place, the body of one ``lax.while_loop`` whose phase says what the
    product is for. The compiled step then holds the linearised model once: on a
    15 000-parameter scene this cut the compile time from about 220 s to about 80 s,
    without changing a number (the operations are the same, in the same order).
    """
    r, jvp = jax.linearize(problem.residual, z)
    vjp = jax.linear_transpose(jvp, z)
    prior_value, prior_gradient, prior_hvp = _prior_parts(problem, z)
    f = 0.5 * jnp.sum(r**2) + prior_value
    dtype = z.dtype
    n = z.size
    k_rows, k_prior = jax.random.split(key)
    # one transposed product serves the gradient (row r) and the random projections of
    # the Gauss-Newton diagonal (the other rows)
    rows = jax.random.normal(k_rows, (n_projections, *r.shape), dtype=dtype)
    pulled = jax.lax.map(lambda w: vjp(w)[0], jnp.concatenate([r[None], rows]))
    gradient = pulled[0] + prior_gradient
    gauss_newton_diagonal = jnp.mean(pulled[1:] ** 2, axis=0)
    probes = jax.random.rademacher(k_prior, (_PRIOR_PROBES, n), dtype=dtype)
    directions = _collective_directions(problem, z)
    n_coarse = directions.shape[0]
    zeros = jnp.zeros(n, dtype)
    eye = jnp.eye(max(n_coarse, 1), dtype=dtype)

    def precondition(state, res):
        if n_coarse == 0:
            return res
        return apply_balancing(state["basis"], state["applied"], state["factor"], res)

    def scaled_product(state, product, y):
        # the Jacobi-scaled damped operator S (H + lambda D) S applied to y, given H S y
        scale, diag = state["scale"], state["diag"]
        return scale * (product + damping * diag * (scale * y))

    def start_solve(state):
        b = -state["scale"] * gradient
        state = {**state, "b": b, "res": b, "x": zeros, "cg": jnp.asarray(0)}
        first = precondition(state, b)
        state = {**state, "p": first, "rz": jnp.dot(b, first), "positive": jnp.asarray(True)}
        return {**state, "phase": jnp.asarray(_SOLVE), "v": state["scale"] * first}

    def finish_solve(state):
        raw = state["scale"] * state["x"]
        positive = state["positive"] | (state["cg"] > 1)
        decrement2 = jnp.where(positive, -jnp.dot(gradient, raw), jnp.nan)
        # fraction to the boundary, coordinate by coordinate
        room_up = jnp.where(raw > 0, _FRACTION_TO_BOUNDARY * (problem.upper_at(z) - z), jnp.inf)
        room_down = jnp.where(raw < 0, _FRACTION_TO_BOUNDARY * (z - problem.lower), jnp.inf)
        d = jnp.clip(raw, -room_down, room_up)
        return {**state, "d": d, "decrement2": decrement2, "phase": jnp.asarray(_QUADRATIC), "v": d}

    def after_probe(state, product):
        i = state["i"]
        prior_diagonal = state["prior_diagonal"] + probes[i] * product[1]
        state = {**state, "prior_diagonal": prior_diagonal, "i": i + 1}

        def to_coarse(state):
            diag = jnp.maximum(
                gauss_newton_diagonal + jnp.abs(state["prior_diagonal"] / _PRIOR_PROBES), 1e-30
            )
            scale = 1.0 / jnp.sqrt((1.0 + damping) * diag)
            state = {**state, "diag": diag, "scale": scale, "i": jnp.asarray(0)}
            if n_coarse == 0:
                return start_solve(state)
            basis = jnp.linalg.qr((directions / scale[None, :]).T)[0]
            state = {**state, "basis": basis, "phase": jnp.asarray(_COARSE)}
            return {**state, "v": scale * basis[:, 0]}

        def next_probe(state):
            return {**state, "v": probes[jnp.minimum(state["i"], _PRIOR_PROBES - 1)]}

        return jax.lax.cond(state["i"] == _PRIOR_PROBES, to_coarse, next_probe, state)

    def after_coarse(state, product):
        i = state["i"]
        column = scaled_product(state, product[0] + product[1], state["basis"][:, i])
        applied = state["applied"].at[:, i].set(column)
        state = {**state, "applied": applied, "i": i + 1}

        def to_solve(state):
            factor = coarse_factor(state["basis"], state["applied"])
            return start_solve({**state, "factor": factor})

        def next_column(state):
            j = jnp.minimum(state["i"], n_coarse - 1)
            return {**state, "v": state["scale"] * state["basis"][:, j]}

        return jax.lax.cond(state["i"] == n_coarse, to_solve, next_column, state)

    def after_solve(state, product):
        p = state["p"]
        ap = scaled_product(state, product[0] + product[1], p)
        curvature = jnp.dot(p, ap)
        positive = curvature > 0
        alpha = jnp.where(positive, state["rz"] / jnp.where(positive, curvature, 1.0), 0.0)
        x = state["x"] + alpha * p
        res = state["res"] - alpha * ap
        preconditioned = precondition(state, res)
        rz = jnp.dot(res, preconditioned)
        p = preconditioned + (rz / state["rz"]) * p
        cg = state["cg"] + 1
        state = {**state, "x": x, "res": res, "p": p, "rz": rz, "cg": cg, "positive": positive}
        stop = (cg >= max_steps) | (jnp.linalg.norm(res) <= rtol * jnp.linalg.norm(state["b"]))
        stop = stop | ~positive

        def carry_on(state):
            return {**state, "v": state["scale"] * state["p"]}

        return jax.lax.cond(stop, finish_solve, carry_on, state)

    def after_quadratic(state, product):
        quadratic = jnp.dot(state["d"], product[0] + product[1])
        return {**state, "quadratic": quadratic, "phase": jnp.asarray(_DONE)}

    def body(state):
        v = state["v"]
        product = (vjp(jvp(v))[0], prior_hvp(v))
        branches = [after_probe, after_coarse, after_solve, after_quadratic]
        return jax.lax.switch(state["phase"], branches, state, product)

    nan = jnp.asarray(jnp.nan, dtype)
    state = {
        "phase": jnp.asarray(_PROBE),
        "i": jnp.asarray(0),
        "v": probes[0],
        "prior_diagonal": zeros,
        "diag": zeros,
        "scale": zeros,
        "basis": jnp.zeros((n, max(n_coarse, 1)), dtype),
        "applied": jnp.zeros((n, max(n_coarse, 1)), dtype),
        "factor": eye,
        "b": zeros,
        "res": zeros,
        "x": zeros,
        "p": zeros,
        "rz": nan,
        "cg": jnp.asarray(0),
        "positive": jnp.asarray(True),
        "d": zeros,
        "decrement2": nan,
        "quadratic": nan,
    }
    state = jax.lax.while_loop(lambda s: s["phase"] != _DONE, body, state)
    d = state["d"]
    preconditioner = (
        state["scale"],
        state["basis"][:, :n_coarse],
        state["applied"][:, :n_coarse],
        state["factor"][:n_coarse, :n_coarse],
    )
    slope = jnp.dot(gradient, d)
    return f, d, slope, state["quadratic"], state["decrement2"], state["cg"], preconditioner


def gauss_newton_preconditioner(
    problem: PosteriorProblem, z, key, n_projections: int = _PROJECTIONS
):
    """The preconditioner of an undamped Newton step at ``z``, for solves elsewhere.

    The two-level preconditioner of :func:`_step` (Jacobi scaling by the estimated
    diagonal of the Gauss-Newton curvature plus the prior's, and a balancing coarse
    space of collective directions) with no damping, made by the compiled step itself:
    after :func:`mobs_ppl.fit_map` on the same problem (same shapes and structure) it
    compiles nothing, and a solve that reuses it (the marginal Laplace approximation)
    need not hold the linearised model a second time. The step's one conjugate-gradient
    iteration is discarded.

    Returns
    -------
    scale : jax.Array
        ``(n,)``: the Jacobi scaling ``1 / sqrt(diag)``.
    basis : jax.Array
        ``(n, k)``: orthonormal coarse directions in scaled coordinates (``k`` may be 0).
    applied : jax.Array
        ``(n, k)``: the scaled curvature applied to them.
    factor : jax.Array
        ``(k, k)``: :func:`mobs_ppl.krylov.coarse_factor` of the two.
    """
    settings = _traced(0.0, 1.0, 1)
    return _step(problem, z, key, *settings, int(n_projections))[6]


def check_start_objective(f) -> None:
    """Raise ``FloatingPointError`` where the objective at the starting point is not finite."""
    if not np.isfinite(float(f)):
        raise FloatingPointError(
            f"the objective is {float(f)} at the starting point: check the initial "
            "values and the data (NaN pixels with weight?)"
        )


class StepControl:
    """The host-side decisions of one Levenberg-Marquardt iteration, for one scene.

    :func:`levenberg_marquardt` holds one, :func:`mobs_ppl.fit_map_batch` one per scene:
    the damping and its growth factor (Nielsen's rule), the conjugate-gradient
    precision of the next solve, and when to confirm a small decrement with a tight
    undamped solve, so that a batched fit makes the decisions of a fit on its own.

    Parameters
    ----------
    tol : float
        The bound on the Newton decrement of a converged fit.
    """

    def __init__(self, tol: float):
        self.tol = float(tol)
        self.damping, self.nu = 1e-3, 2.0
        self.rtol = 0.1
        self.confirm_below = float(tol)
        self.estimate = math.inf
        self.usable = False
        self.slope = self.quadratic = math.nan

    def settings(self, cg_max_steps: int) -> tuple[float, float, int]:
        """``(damping, rtol, max_steps)`` of the next step's solve."""
        return self.damping, self.rtol, cg_max_steps

    def assess(self, slope, quadratic, decrement2) -> bool:
        """Take a step's ``g . d``, ``d . H d`` and damped squared decrement.

        Returns whether the step is usable: a finite positive decrement and a
        predicted decrease. Sets :attr:`estimate`, the damped solve's decrement
        (``nan`` for an unusable step).
        """
        self.slope, self.quadratic = float(slope), float(quadratic)
        predicted = -(self.slope + 0.5 * self.quadratic)
        decrement2 = float(decrement2)
        self.usable = bool(np.isfinite(decrement2) and decrement2 > 0 and predicted > 0)
        self.estimate = math.sqrt(decrement2) if self.usable else math.nan
        return self.usable

    def wants_confirmation(self) -> bool:
        """Whether to confirm convergence with a tight undamped solve now.

        The damped solve's decrement, scaled up by the damping (with the Jacobi
        damping, ``(H + lambda D)^-1`` is about ``H^-1 / (1 + lambda)``), is below the
        tolerance. The solve costs up to ``_DECREMENT_CG_STEPS`` products, so after a
        failed confirmation the estimate must halve before the next
        (:meth:`confirmation_failed`).
        """
        return self.usable and self.estimate * math.sqrt(1.0 + self.damping) < self.confirm_below

    def confirmation_failed(self) -> None:
        """The undamped decrement was above the tolerance: confirm again at half the estimate."""
        self.confirm_below = 0.5 * self.estimate

    def gain(self, f: float, f_new: float, length: float) -> float:
        """Ratio of the actual to the predicted decrease for a step of ``length`` times ``d``."""
        predicted = -(length * self.slope + 0.5 * length**2 * self.quadratic)
        return (f - f_new) / predicted if np.isfinite(f_new) else -1.0

    @staticmethod
    def shorten(ratio: float, length: float) -> bool:
        """Whether to try half the step along the same direction before damping more.

        A step the quadratic model got wrong: shorter steps cost one evaluation of the
        objective each (on COSMOS, where a direction of strong nonlinearity turns up
        every ten steps or so, this saves most of the steps that raising and lowering
        the damping again would take).
        """
        return ratio <= _GAIN_ACCEPT and length > _SHORTEST_STEP

    def update(self, ratio: float, length: float) -> bool:
        """Adapt the damping to the step's gain ratio; returns whether the step is taken.

        A rejected step (no shorter step decreases the objective either, or the solve
        is no descent direction) damps more.
        """
        if self.usable and ratio > _GAIN_ACCEPT:
            if length < 1.0:
                self.damping *= 2.0
            else:
                self.damping *= max(1.0 / 3.0, 1.0 - (2.0 * ratio - 1.0) ** 3)
            self.nu = 2.0
            self.rtol = float(np.clip(0.1 * self.estimate, 1e-4, 0.1))
            return True
        self.damping *= self.nu
        self.nu *= 2.0
        return False

    @property
    def stalled(self) -> bool:
        """Damped so much that no step will move: stop."""
        return self.damping > 1e12


def levenberg_marquardt(
    problem: PosteriorProblem,
    z0=None,
    max_iter: int = 200,
    tol: float = DEFAULT_TOL,
    seed: int = 0,
    n_projections: int = _PROJECTIONS,
    cg_max_steps: int = 100,
    progress_bar: bool = False,
    log: Callable[[str], None] | None = None,
) -> NewtonResult:
    """Minimise ``problem.potential`` to a mode by damped, matrix-free Gauss-Newton.

    Parameters
    ----------
    problem : PosteriorProblem
        The objective.
    z0 : array_like, optional
        Starting point, flat coordinates (default ``problem.start``), strictly inside
        the bounds.
    max_iter : int
        Largest number of steps tried.
    tol : float
        Converged when the Newton decrement is below this.
    seed : int
        Seed of the random projections that estimate the curvature's diagonal.
    n_projections : int
        Random projections per estimate of the diagonal.
    cg_max_steps : int
        Largest number of conjugate-gradient iterations per step (an inexact Newton
        step is enough far from the mode; near it the solves converge in fewer).
    progress_bar : bool
        Show a tqdm bar of the steps, with the objective and the decrement.
    log : callable, optional
        Receives one line per step (objective, decrement, damping, gain ratio, CG
        iterations).

    Returns
    -------
    NewtonResult
    """
    max_iter = check_int("max_iter", max_iter, minimum=1)
    tol = check_positive("tol", tol)
    seed = check_int("seed", seed)
    n_projections = check_int("n_projections", n_projections, minimum=1)
    cg_max_steps = check_int("cg_max_steps", cg_max_steps, minimum=1)

    def objective(z):
        return _objective(problem, z)

    def step(z, key, damping, rtol, max_steps):
        return _step(problem, z, key, *_traced(damping, rtol, max_steps), int(n_projections))

    start = time.perf_counter()
    z = problem.start if z0 is None else jnp.asarray(z0, dtype=problem.start.dtype)
    key = jax.random.PRNGKey(seed)
    control = StepControl(tol)
    decrement = math.inf
    losses, cg_steps = [], []
    bar = None
    if progress_bar:
        from tqdm.auto import tqdm

        bar = tqdm(total=int(max_iter), desc="fit_map")
    converged = False
    iterations = 0
    for iterations in range(1, int(max_iter) + 1):  # noqa: B007 - used after the loop
        key, sub = jax.random.split(key)
        f, d, slope, quadratic, decrement2, n_cg, _ = step(z, sub, *control.settings(cg_max_steps))
        if not losses:
            check_start_objective(f)
            losses.append(float(f))
        cg_steps.append(int(n_cg))
        control.assess(slope, quadratic, decrement2)
        if control.wants_confirmation():
            decrement = _decrement(step, z, sub)
            if log is not None:
                log(f"step {iterations}: undamped decrement {decrement:.3g} (tolerance {tol})")
            if decrement < tol:
                converged = True
                break
            control.confirmation_failed()
        ratio, length = -1.0, 1.0
        if control.usable:
            f_new = float(objective(z + d))
            ratio = control.gain(float(f), f_new, length)
            while control.shorten(ratio, length):
                length *= 0.5
                f_new = float(objective(z + length * d))
                ratio = control.gain(float(f), f_new, length)
        if control.update(ratio, length):
            z = z + length * d
            losses.append(f_new)
        if log is not None:
            log(
                f"step {iterations}: objective {losses[-1]:.8g}, decrement "
                f"~{control.estimate:.3g}, damping {control.damping:.2g}, gain ratio "
                f"{ratio:.3g}, step length {length:.3g}, CG {int(n_cg)}"
            )
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.6g}", decrement=f"{control.estimate:.3g}")
        if control.stalled:
            break
    if bar is not None:
        bar.close()
    if not converged:
        key, sub = jax.random.split(key)
        decrement = _decrement(step, z, sub)
        converged = bool(decrement < tol)
    return NewtonResult(
        z=z,
        losses=np.asarray(losses),
        decrement=float(decrement),
        iterations=iterations,
        converged=bool(converged),
        cg_steps=np.asarray(cg_steps, dtype=int),
        seconds=time.perf_counter() - start,
    )


def decrement_of(decrement2) -> float:
    """The Newton decrement from a tight undamped solve's squared one (``inf``: no mode)."""
    decrement2 = float(decrement2)
    # a solve that meets non-positive curvature at once means the point is no mode
    return math.sqrt(decrement2) if np.isfinite(decrement2) and decrement2 > 0 else math.inf


def _decrement(step, z, key) -> float:
    """Newton decrement at ``z`` from an undamped, tight solve (``inf``: no mode)."""
    return decrement_of(step(z, key, 0.0, _DECREMENT_RTOL, _DECREMENT_CG_STEPS)[4])


def newton_decrement(problem: PosteriorProblem, z, seed: int = 0) -> float:
    """Newton decrement ``sqrt(g^T H^{-1} g)`` at ``z`` (Gauss-Newton ``H``, undamped).

    The solve runs up to :data:`_DECREMENT_CG_STEPS` conjugate-gradient iterations to a
    relative precision :data:`_DECREMENT_RTOL`; ``inf`` if the curvature is not
    positive (no mode).
    """

    def step(z, key, damping, rtol, max_steps):
        return _step(problem, z, key, *_traced(damping, rtol, max_steps), _PROJECTIONS)

    return _decrement(step, jnp.asarray(z, dtype=problem.start.dtype), jax.random.PRNGKey(seed))
