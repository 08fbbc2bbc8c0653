"""Sphinx configuration for the mobs_ppl documentation (myst-nb; not built in CI)."""

from importlib.metadata import PackageNotFoundError, version

project = "mobs_ppl"
author = "mobs_ppl developers"
try:
    release = version("mobs-ppl")
except PackageNotFoundError:
    release = "0.0.0"

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
]

source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
myst_enable_extensions = ["colon_fence", "dollarmath"]

# Tutorials are jupytext percent scripts; myst-nb executes them when the docs are built.
nb_custom_formats = {".py": ["jupytext.reads", {"fmt": "py:percent"}]}
nb_execution_mode = "cache"
nb_execution_timeout = 600

napoleon_numpy_docstring = True
napoleon_google_docstring = False

intersphinx_mapping = {
    "python": ("https://docs.python.org/3", None),
    "numpy": ("https://numpy.org/doc/stable", None),
    "jax": ("https://docs.jax.dev/en/latest", None),
    "numpyro": ("https://num.pyro.ai/en/stable", None),
    "astropy": ("https://docs.astropy.org/en/stable", None),
}

exclude_patterns = ["_build"]
html_theme = "furo"
