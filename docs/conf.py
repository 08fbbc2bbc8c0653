"""Sphinx configuration for the mobs_ppl documentation (MyST pages, myst-nb tutorials).

Build with ``make docs`` (warnings are errors). The tutorials in ``tutorials/*.py``
(jupytext percent scripts) are copied into ``docs/tutorials/`` at build time and read
as notebooks. ``MOBS_PPL_DOCS_EXECUTE`` says whether they run, so that their printed
output and figures appear on their pages (cached under ``docs/_build/.jupyter_cache``,
so only a changed tutorial runs again): ``1`` runs them, ``0`` (the default of a bare
``sphinx-build``, and of the test suite's build) shows them unexecuted, ``auto`` (what
``make docs`` passes) runs them when the COSMOS data are found without a download.
"""

import os
import pathlib
import shutil
from importlib import metadata

DOCS = pathlib.Path(__file__).resolve().parent
TUTORIALS = DOCS.parent / "tutorials"
TUTORIAL_PAGES = DOCS / "tutorials"  # generated, ignored by git

project = "mobs_ppl"
author = "mobs_ppl developers"
copyright = "2026, mobs_ppl developers"
try:
    release = metadata.version("mobs-ppl")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    release = "0.0.0"
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3

# Tutorials: jupytext percent scripts, read by myst-nb as notebooks. Only the copies
# under docs/tutorials/ are sources; conf.py (also a .py file) is excluded.
nb_custom_formats = {".py": ["jupytext.reads", {"fmt": "py:percent"}]}


def _execute_tutorials() -> bool:
    wanted = os.environ.get("MOBS_PPL_DOCS_EXECUTE", "0").strip().lower()
    if wanted != "auto":
        return wanted in ("1", "true", "yes")
    from mobs_ppl import datasets

    try:
        datasets.cosmos_files(download=False)
    except OSError as err:
        print(f"mobs_ppl docs: tutorials shown without being run ({err})")
        return False
    return True


nb_execution_mode = "cache" if _execute_tutorials() else "off"
# the tutorials write their figures and numbers here, not into the source tree
os.environ.setdefault("MOBS_PPL_TUTORIAL_OUT", str(DOCS / "_build" / "tutorial_output"))
nb_execution_timeout = 3600
nb_execution_cache_path = str(DOCS / "_build" / ".jupyter_cache")
nb_execution_raise_on_error = True

exclude_patterns = ["_build", "conf.py", "**/.ipynb_checkpoints"]


def _copy_tutorials() -> None:
    """Mirror ``tutorials/*.py`` into ``docs/tutorials/`` (unchanged files untouched).

    Helper modules of the tutorials (``tutorials/_*.py``) are no pages.
    """
    TUTORIAL_PAGES.mkdir(exist_ok=True)
    wanted = {path.name: path for path in sorted(TUTORIALS.glob("[!_]*.py"))}
    for stale in TUTORIAL_PAGES.glob("*.py"):
        if stale.name not in wanted:
            stale.unlink()
    for name, path in wanted.items():
        target = TUTORIAL_PAGES / name
        if not target.exists() or target.read_bytes() != path.read_bytes():
            shutil.copyfile(path, target)


_copy_tutorials()

# API reference (docs/api.md): NumPy docstrings, members in source order, type hints
# in the description rather than in the signature.
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_typehints_format = "short"
autodoc_default_options = {"members": True, "show-inheritance": False}

# No intersphinx: the docs must build without network access. Names of other packages
# in signatures stay plain text.

html_theme = "furo"
html_title = f"mobs_ppl {release}"
