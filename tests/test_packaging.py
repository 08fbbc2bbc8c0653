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
