"""Posterior samples as ArviZ data with named dimensions and coordinates.

Groups: ``posterior`` (sampled and deterministic sites), ``sample_stats`` (ArviZ's
names: ``diverging``, ``lp``, ``acceptance_rate``, ``n_steps``, ``tree_depth``,
``energy``), ``log_likelihood`` (one variable per observation), ``observed_data`` and
``constant_data`` (sites held fixed). Works with ArviZ 0.x (``InferenceData``) and 1.x
(``xarray.DataTree``).
"""

from __future__ import annotations

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from numpyro.infer.util import log_density

from .model import site_dims
from .sites import observed_site_name

__all__ = ["posterior_to_arviz", "make_inference_data"]

#: "auto" log-likelihoods stay pointwise up to this many values (float64: 160 MB).
POINTWISE_LIMIT = 2e7


def _variable(name, values, dims, leading):
    shape = np.shape(values)
    names = list(leading) + list(dims.get(name, []))
    extra = len(shape) - len(names)
    if extra > 0:
        names += [f"{name}_dim_{k}" for k in range(extra)]
    return names[: len(shape)], np.asarray(values)


def _dataset(values: dict, dims: dict, coords: dict, leading=("chain", "draw")) -> xr.Dataset:
    data_vars = {}
    used_coords = {}
    for name, value in values.items():
        var_dims, arr = _variable(name, value, dims, leading)
        data_vars[name] = (var_dims, arr)
        for d in var_dims:
            if d in coords and d not in used_coords:
                used_coords[d] = coords[d]
    ds = xr.Dataset(data_vars, coords=used_coords)
    for d in leading:
        if d in ds.dims:
            ds = ds.assign_coords({d: np.arange(ds.sizes[d])})
    return ds


def make_inference_data(groups: dict[str, xr.Dataset]):
    """ArviZ container from datasets by group name, for ArviZ 0.x and 1.x."""
    if hasattr(az, "InferenceData") and int(az.__version__.split(".")[0]) < 1:
        return az.InferenceData(**groups)
    return xr.DataTree.from_dict({f"/{k}": v for k, v in groups.items()})


def _observation_log_likelihoods(result, flat: dict, pointwise: bool, chunk: int = 25) -> dict:
    """Per-observation log-likelihood of every draw, computed in chunks of draws."""
    model = result.conditioned_model()
    obs_sites = [observed_site_name(o.name) for o in result.model.observations]

    def one(draw):
        _, trace = log_density(model, (), {}, draw)
        out = {}
        for site in obs_sites:
            node = trace[site]
            lp = node["fn"].log_prob(node["value"])
            out[site] = lp if pointwise else jnp.sum(lp)
        return out

    batched = jax.jit(jax.vmap(one))
    n = next(iter(flat.values())).shape[0]
    pieces = []
    for start in range(0, n, chunk):
        part = {k: v[start : start + chunk] for k, v in flat.items()}
        pieces.append(jax.tree.map(np.asarray, batched(part)))
    return {k: np.concatenate([p[k] for p in pieces]) for k in obs_sites}


def posterior_to_arviz(result, log_likelihood: str = "auto"):
    """Build the ArviZ data of a :class:`~mobs_ppl.inference.PosteriorResult`."""
    if log_likelihood not in ("auto", "pointwise", "total", "none"):
        raise ValueError(
            f"log_likelihood must be auto, pointwise, total or none; got {log_likelihood!r}"
        )
    model = result.model
    dims, coords = site_dims(model)
    grouped = {k: np.asarray(v) for k, v in result.samples(group_by_chain=True).items()}
    chains, draws = next(iter(grouped.values())).shape[:2]
    groups = {"posterior": _dataset(grouped, dims, coords)}

    extra = result.mcmc.get_extra_fields(group_by_chain=True)
    stats = {
        "diverging": np.asarray(extra["diverging"]),
        "lp": -np.asarray(extra["potential_energy"]),
        "acceptance_rate": np.asarray(extra["accept_prob"]),
        "n_steps": np.asarray(extra["num_steps"]),
        "tree_depth": np.floor(np.log2(np.asarray(extra["num_steps"]) + 1)).astype(int),
        "energy": np.asarray(extra["energy"]),
    }
    groups["sample_stats"] = _dataset(stats, {}, {})

    observed = {}
    for obs in model.observations:
        target = obs.likelihood_observation
        observed[observed_site_name(obs.name)] = np.asarray(target.data)
    groups["observed_data"] = _dataset(observed, dims, coords, leading=())

    if log_likelihood != "none":
        n_values = chains * draws * sum(v.size for v in observed.values())
        pointwise = log_likelihood == "pointwise" or (
            log_likelihood == "auto" and n_values <= POINTWISE_LIMIT
        )
        flat = {
            k: jnp.asarray(v).reshape((chains * draws, *v.shape[2:]))
            for k, v in grouped.items()
            if k in result.sampled
        }
        values = _observation_log_likelihoods(result, flat, pointwise)
        shaped = {k: v.reshape((chains, draws, *v.shape[1:])) for k, v in values.items()}
        groups["log_likelihood"] = _dataset(shaped, dims if pointwise else {}, coords)

    if result.fixed:
        constant = {k: np.asarray(v) for k, v in result.fixed.items()}
        groups["constant_data"] = _dataset(constant, dims, coords, leading=())
    return make_inference_data(groups)
