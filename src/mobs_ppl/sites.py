"""Choosing and checking the latent sites of a :class:`~mobs_ppl.SceneModel`.

Shared by :func:`mobs_ppl.fit_map`, :func:`mobs_ppl.sample` and
:func:`mobs_ppl.laplace`: starting values (from a fit or a mapping), their constraints,
and the split of the sites into those that are inferred and those held fixed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

__all__ = [
    "Site",
    "check_init",
    "observed_site_name",
    "select_sites",
    "split_sites",
    "start_values",
]


@dataclasses.dataclass(frozen=True)
class Site:
    """One latent site of a :class:`~mobs_ppl.SceneModel`: what every consumer reads.

    :meth:`SceneModel.site_table <mobs_ppl.SceneModel.site_table>` builds the table;
    priors, initial values, ArviZ dims, site selection and per-kind optimiser settings
    read it instead of building or parsing names.

    Attributes
    ----------
    name : str
        The NumPyro site name.
    kind : str
        ``"spectrum"``, ``"shift"``, or the source parameter (``"morphology"``,
        ``"envelope"``, ``"center"``, ...) whose value the site holds.
    component : int or None
        Index of the source (component) the site belongs to; ``None`` for the sites
        shared by the scene (spectra, shifts).
    prior : numpyro.distributions.Distribution
        The default prior.
    init : jax.Array
        The initial value (constrained space): the scene's, zero for shifts.
    dims : tuple of str or None
        ArviZ dims of the value; ``None`` leaves ArviZ's defaults.
    """

    name: str
    kind: str
    component: int | None
    prior: dist.Distribution
    init: jax.Array
    dims: tuple[str, ...] | None


def observed_site_name(observation: str) -> str:
    """Name of the observed site of the observation called ``observation``."""
    return f"obs_{observation}"


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
    elif init is None or isinstance(init, Mapping):
        values = {**model.init_values(), **dict(init or {})}
    else:
        raise TypeError(
            "init must be a fit (MAPResult), a mapping {site name: value} or None; "
            f"got {type(init).__name__}"
        )
    check_init(model, values)
    return values


def check_init(model, values: Mapping) -> None:
    """Raise ``ValueError`` for unknown sites, wrong shapes and values outside constraints."""
    table = {site.name: site for site in model.site_table()}
    for name, value in values.items():
        if name not in table:
            raise ValueError(f"initial value for unknown site {name!r}; sites: {sorted(table)}")
        shape, expected = jnp.shape(value), jnp.shape(table[name].init)
        if shape != expected:
            raise ValueError(
                f"initial value of {name!r} has shape {shape}; the site's values have shape "
                f"{expected}"
            )
        support = table[name].prior.support
        if not bool(jnp.all(support(jnp.asarray(value)))):
            raise ValueError(f"initial value of {name!r} lies outside its constraint {support}")


def select_sites(model, sites: Sequence[str] | str | None) -> list[str]:
    """Site names chosen by full names or kinds (``"morphology"`` = every source's)."""
    table = model.site_table()
    names = [site.name for site in table]
    if sites is None:
        return names
    if isinstance(sites, str):
        sites = [sites]
    if not isinstance(sites, Collection):
        raise TypeError(
            f"sites must be a site name, a sequence of them, or None (every site); got {sites!r}"
        )
    if len(sites) == 0:
        raise ValueError(
            "sites is empty: name at least one site (or kind, e.g. 'spectrum'), or pass "
            f"sites=None for every site; sites are {names}"
        )
    chosen = []
    for s in sites:
        if not isinstance(s, str):
            raise TypeError(f"sites must hold site names (str); got {s!r} in {sites!r}")
        matches = [site.name for site in table if s in (site.name, site.kind)]
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
