"""Ellipticities: the reduced shear of elliptical profiles and its unconstrained form."""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["shear_matrix", "unit_disk"]


def shear_matrix(ellipticity):
    """Inverse distortion of a reduced shear ``g = (g1, g2)``, ``|g| < 1``, in (x, y).

    A profile sheared by ``g`` is ``I(x) = I0(|A^-1 x|)`` with the area-preserving
    ``A = [[1 + g1, g2], [g2, 1 - g1]] / sqrt(1 - g^2)`` (GalSim's convention: g1 > 0
    stretches along x); this returns ``A^-1``.
    """
    g1, g2 = ellipticity[0], ellipticity[1]
    norm = 1.0 / jnp.sqrt(1.0 - g1**2 - g2**2)
    return norm * jnp.array([[1.0 - g1, -g2], [-g2, 1.0 + g1]])


def unit_disk(shape_param):
    """Map an unconstrained 2-vector into the open unit disk (an ellipticity)."""
    return shape_param / jnp.sqrt(1.0 + jnp.sum(shape_param**2))
