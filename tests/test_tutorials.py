"""The tutorials are valid jupytext notebooks and run from start to end on the shared data."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

TUTORIALS = sorted((pathlib.Path(__file__).resolve().parents[1] / "tutorials").glob("*.py"))


def test_there_are_tutorials():
    assert TUTORIALS, "tutorials/ holds no tutorial"


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_is_a_notebook(path):
    jupytext = pytest.importorskip("jupytext")
    notebook = jupytext.read(path)
    kinds = [cell.cell_type for cell in notebook.cells]
    assert kinds.count("markdown") >= 3 and kinds.count("code") >= 3
    assert notebook.cells[0].cell_type == "markdown"  # it opens with its story


@pytest.mark.slow
@pytest.mark.data
@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_runs(path, shared_data_dir, tmp_path):
    env = {
        **os.environ,
        "MPLBACKEND": "Agg",
        "MOBS_PPL_DATA_DIR": str(shared_data_dir),
        "MOBS_PPL_TUTORIAL_OUT": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, str(path)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    print(result.stdout[-3000:])
    assert result.returncode == 0, result.stderr[-3000:]
    figures = sorted(p.name for p in tmp_path.glob("*.png"))
    assert len(figures) >= 4, figures
