"""The documentation site: API reference coverage, toctree completeness, and a build.

The fast tests read the MyST sources as text (no Sphinx needed). The slow one builds the
site with ``sphinx-build -W`` when Sphinx is installed (the ``docs`` extra).
"""

import importlib
import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = REPO_ROOT / "docs"

#: Modules of the API reference beyond those on the package's face (command line).
DOCUMENTED_MODULES = ("field", "batch", "cli")


def _directive_targets(text: str) -> set[str]:
    """Dotted names given to autodoc directives (``.. autoclass:: mobs_ppl.Frame``)."""
    return set(re.findall(r"^\.\. auto\w+::\s*(\S+)", text, flags=re.MULTILINE))


def _toctree_entries(text: str) -> list[str]:
    """Entries of every ``{toctree}`` fence of a MyST page (options and blanks dropped)."""
    entries = []
    for body in re.findall(r"^```\{toctree\}\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL):
        entries += [
            line.strip()
            for line in body.splitlines()
            if line.strip() and not line.strip().startswith(":")
        ]
    return entries


def test_helpers_parse_what_they_claim():
    # the two parsers on a hand-written page, so that the tests below can fail
    page = (
        "# T\n\n```{toctree}\n:maxdepth: 1\n\nalpha\nbeta\n```\n\n"
        "```{eval-rst}\n.. autoclass:: mobs_ppl.Frame\n.. automodule:: mobs_ppl.sky\n"
        "   :exclude-members: x\n```\n"
    )
    assert _toctree_entries(page) == ["alpha", "beta"]
    assert _directive_targets(page) == {"mobs_ppl.Frame", "mobs_ppl.sky"}


def test_every_public_name_is_in_the_api_reference():
    import mobs_ppl

    targets = _directive_targets((DOCS / "api.md").read_text())
    assert "mobs_ppl" in targets
    missing = []
    for name in mobs_ppl.__all__:
        if name == "__version__":
            continue
        # a class or function of the face (mp.Frame) or a module (mp.sky)
        if f"mobs_ppl.{name}" not in targets:
            missing.append(name)
    assert not missing, f"not in docs/api.md: {missing}"
    assert "__version__" in (DOCS / "api.md").read_text()


def test_api_reference_covers_the_command_line_modules_and_names_only_real_objects():
    import mobs_ppl

    targets = _directive_targets((DOCS / "api.md").read_text())
    for module in DOCUMENTED_MODULES:
        assert f"mobs_ppl.{module}" in targets, module
    # every target resolves (a renamed function would otherwise drop out of the page)
    for target in sorted(targets):
        parts = target.split(".")
        obj = importlib.import_module(parts[0])
        for part in parts[1:]:
            obj = getattr(obj, part, None) or importlib.import_module(f"{obj.__name__}.{part}")
        assert obj is not None, target
    assert len(targets) > len(mobs_ppl._NAMES)


def test_every_page_is_in_the_index_toctree():
    entries = _toctree_entries((DOCS / "index.md").read_text())
    pages = sorted(p.stem for p in DOCS.glob("*.md") if p.stem != "index")
    missing = [page for page in pages if page not in entries]
    assert not missing, f"docs pages in no toctree of docs/index.md: {missing}"
    # the tutorials are listed through a glob over the copies conf.py makes
    assert "tutorials/*" in entries
    assert sorted((REPO_ROOT / "tutorials").glob("[!_]*.py")), "no tutorials to show"


def test_every_tutorial_opens_with_a_title():
    # the page title of a tutorial is the first heading of its first markdown cell;
    # without one the toctree shows "<no title>"
    for tutorial in sorted((REPO_ROOT / "tutorials").glob("[!_]*.py")):
        text = tutorial.read_text()
        cell = text.split("# %% [markdown]\n", 1)
        assert len(cell) == 2, f"{tutorial.name}: no markdown cell"
        assert "# %%" not in cell[0], f"{tutorial.name}: code before the first markdown cell"
        first_line = cell[1].splitlines()[0]
        assert re.match(r"# # \S", first_line), f"{tutorial.name}: starts {first_line!r}"


@pytest.mark.slow
def test_docs_build_without_warnings(tmp_path):
    """``sphinx-build -W`` succeeds (about 10-20 s; tutorials are not executed)."""
    missing = [m for m in ("sphinx", "myst_nb", "furo") if importlib.util.find_spec(m) is None]
    if missing:
        message = f"the Sphinx stack of the test extra is absent: {missing}"
        if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
            pytest.fail(message + " (CI installs it with pip install -e '.[test]')")
        pytest.skip(message)
    out = tmp_path / "html"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            "-d",
            str(tmp_path / "doctrees"),
            str(DOCS),
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    assert "WARNING" not in done.stderr, done.stderr[-5000:]
    api = (out / "api.html").read_text()
    # autodoc really imported the lazily loaded names (an empty page also builds)
    for anchor in ('id="mobs_ppl.Frame"', 'id="mobs_ppl.fit_map"', 'id="mobs_ppl.cli.main"'):
        assert anchor in api, anchor
    for tutorial in (REPO_ROOT / "tutorials").glob("[!_]*.py"):
        assert (out / "tutorials" / f"{tutorial.stem}.html").is_file(), tutorial.name
