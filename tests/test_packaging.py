import os
import pathlib
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_import_and_version():
    import mobs_ppl

    assert isinstance(mobs_ppl.__version__, str)
    assert mobs_ppl.__version__


def test_ci_script_runs_the_readme_test_command():
    ci = REPO_ROOT / ".ci" / "run"
    assert ci.is_file()
    assert os.access(ci, os.X_OK)
    assert "make test" in ci.read_text()


def test_readme_gives_the_two_commands():
    readme = (REPO_ROOT / "README.md").read_text()
    assert "make demo" in readme
    assert "make test" in readme


#: The layers of docs/architecture.md, lowest first.
LAYERS = (
    ("_warnings", "_checks", "atomic", "robust", "sky", "frame", "fourier", "psf"),
    ("renderer", "resample", "sources", "envelope", "ellipticity", "scene"),
    ("noise", "distributions", "likelihood"),
    ("observation", "correlated", "datasets", "synthetic"),
    ("detection", "init", "measure"),
    ("model", "sites"),
    (
        "newton",
        "krylov",
        "curvature",
        "softplus_coordinates",
        "inference",
        "map_batch",
        "laplace_approximation",
        "arviz_io",
        "persistence",
    ),
    ("plot", "workflow", "field", "_core_pinning", "batch", "cli"),
)


def test_modules_import_only_from_their_layer_or_below():
    import ast

    level = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    package = REPO_ROOT / "src" / "mobs_ppl"
    modules = {p.stem for p in package.glob("*.py")} - {"__init__"}
    # every module has a layer (a new module must be placed in docs/architecture.md)
    assert modules == set(level), sorted(modules ^ set(level))
    upward = []
    for name in sorted(modules):
        tree = ast.parse((package / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                # ``from . import x``: x is a module, or a name of the package's face
                # (``__version__``), which is no layer
                targets = [node.module] if node.module else [a.name for a in node.names]
                for target in (t.split(".")[0] for t in targets):
                    if target in level and level[target] > level[name]:
                        upward.append(f"{name} imports {target} (line {node.lineno})")
    assert not upward, upward
    documented = (REPO_ROOT / "docs" / "architecture.md").read_text()
    assert all(f"`{name}`" in documented for name in modules - {"_warnings"})


HEAVY_MODULES = ("jax", "numpyro", "arviz", "matplotlib", "astropy", "numpy")


@pytest.mark.parametrize(
    "argv", [["--help"], ["demo", "--help"], ["fit", "--help"], ["batch", "--help"], ["--version"]]
)
def test_help_imports_no_heavy_module(argv):
    """``--help`` and ``--version`` answer without importing JAX and friends (fast start).

    Checked by what is imported, not by a timing (benchmarks/cli_start.py times it): a
    fresh interpreter runs the command line and lists the heavy modules it loaded.
    """
    script = (
        "import sys\n"
        "from mobs_ppl import cli\n"
        "try:\n"
        f"    cli.main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stderr.strip().splitlines()[-1] == "[]", done.stderr
    assert "mobs-ppl" in done.stdout


def test_package_names_load_on_first_use():
    """Every name in ``__all__`` resolves (the lazy face hides no broken import)."""
    import mobs_ppl

    for name in mobs_ppl.__all__:
        assert getattr(mobs_ppl, name) is not None, name
    assert mobs_ppl.Frame is mobs_ppl.frame.Frame
    with pytest.raises(AttributeError, match="no attribute 'Frmae'"):
        mobs_ppl.Frmae  # noqa: B018
