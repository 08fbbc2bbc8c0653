"""Choosing and checking the latent sites of a :class:`~mobs_ppl.SceneModel`.

Shared by :func:`mobs_ppl.fit_map`, :func:`mobs_ppl.sample` and
:func:`mobs_ppl.laplace`: starting values (from a fit or a mapping), their constraints,
and the split of the sites into those that are inferred and those held fixed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax.numpy as jnp

__all__ = ["check_init", "select_sites", "split_sites", "start_values"]


def start_values(model, init=None) -> dict:
    """Value of every latent site: a fit's parameters, or the model's with overrides.

    Parameters
    ----------
    model : SceneModel
        The model.
    init : MAPResult or mapping or None
        A fit (anything with a ``params`` mapping, e.g. :class:`MAPResult`) gives all
        values; a mapping overrides :meth:`SceneModel.init_values` by site name.
    """
    params = getattr(init, "params", None)
    if isinstance(params, Mapping):
        values = dict(params)
    else:
        values = {**model.init_values(), **dict(init or {})}
    check_init(model, values)
    return values


def check_init(model, values: Mapping) -> None:
    """Raise ``ValueError`` for unknown sites and values outside their constraints."""
    priors = model.default_priors()
    for name, value in values.items():
        if name not in priors:
            raise ValueError(f"initial value for unknown site {name!r}; sites: {sorted(priors)}")
        support = priors[name].support
        if not bool(jnp.all(support(jnp.asarray(value)))):
            raise ValueError(f"initial value of {name!r} lies outside its constraint {support}")


def select_sites(model, sites: Sequence[str] | str | None) -> list[str]:
    """Site names chosen by full names or base names (``"morphology"`` = every source's)."""
    names = list(model.site_names)
    if sites is None:
        return names
    if isinstance(sites, str):
        sites = [sites]
    chosen = []
    for s in sites:
        matches = [
            n for n in names if n == s or (n.startswith(s + "_") and n[len(s) + 1 :].isdigit())
        ]
        if not matches:
            raise ValueError(f"unknown site {s!r}; sites are {names}")
        chosen.extend(m for m in matches if m not in chosen)
    return chosen


def split_sites(model, init, sites) -> tuple[dict, dict]:
    """``(start, fixed)``: values of the chosen sites, and of the others (held fixed)."""
    values = start_values(model, init)
    chosen = select_sites(model, sites)
    start = {k: values[k] for k in chosen}
    fixed = {k: v for k, v in values.items() if k not in chosen}
    return start, fixed
