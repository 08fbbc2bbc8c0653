import os
import pathlib

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
        "inference",
        "laplace_approximation",
        "arviz_io",
        "persistence",
    ),
    ("plot", "workflow", "field", "cli"),
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
