"""Shared test set-up.

The suite runs on the CPU and in float64: x64 is switched on here, at import time,
before any test builds an array. Tests of float32 behaviour ask for the ``float32``
fixture, which switches x64 off for the duration of the test only.

JAX's persistent compilation cache is on for the suite (environment variables, so the
tutorials' subprocesses share it): the COSMOS scene is fitted by several test files and
a tutorial, and its Newton step alone takes minutes to compile.
"""

import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "mobs_ppl_jax_cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "2")

import pathlib  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)


def _stamp_arviz_daily_warning() -> None:
    """Write ArviZ's once-a-day warning stamp before any worker imports ArviZ.

    ArviZ 0.23 writes ``daily_warning`` in its cache through one fixed temporary file
    name; two pytest-xdist workers importing it at once on a fresh machine race on that
    name and one import fails (``FileNotFoundError``). Each worker writes the stamp here
    through a temporary file of its own, so ArviZ finds today's date and writes nothing.
    """
    import datetime
    import tempfile

    from platformdirs import user_cache_dir

    folder = pathlib.Path(user_cache_dir("arviz", "arviz"))
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=folder, delete=False, suffix=".tmp") as f:
        f.write(datetime.date.today().isoformat())
    os.replace(f.name, folder / "daily_warning")


_stamp_arviz_daily_warning()

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


@pytest.fixture(scope="session")
def shared_data_dir() -> pathlib.Path:
    """The directory holding the shared COSMOS data (``cosmos_hst_hsc/``, ``hsc_blends/``).

    ``MOBS_PPL_DATA_DIR`` wins when set; otherwise ``../shared/data`` beside the repository.
    Missing data skips the test locally but fails it in CI, where the data must be present.
    """
    env = os.environ.get("MOBS_PPL_DATA_DIR")
    if env:
        path = pathlib.Path(env).expanduser().resolve()
        if path.is_dir():
            return path
    else:
        path = (REPO_ROOT.parent / "shared" / "data").resolve()
        if path.is_dir():
            return path
    if _truthy(os.environ.get("CI")):
        pytest.fail(f"shared data missing in CI: no directory at {path}")
    pytest.skip("shared COSMOS data not found: set MOBS_PPL_DATA_DIR or place it at ../shared/data")


@pytest.fixture
def float32():
    """Run the test with JAX's default 32-bit types, then switch x64 back on."""
    jax.config.update("jax_enable_x64", False)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", True)


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded NumPy generator, the same in every test."""
    return np.random.default_rng(12345)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
    """Free JAX's in-memory caches of compiled code after each test file.

    Every scene shape compiles its own functions, and a pytest-xdist worker runs many
    files: without this a worker held 7-9 GB by the time the COSMOS and calibration
    files ran, and with the calibration's two processes the suite went past 24 GB (a
    worker was killed for memory). Big compilations come back from the persistent
    cache.
    """
    yield
    import gc

    jax.clear_caches()
    gc.collect()


# Test files that run longest (minutes of one core each, measured with `make test`'s
# --durations): collected first, so that `pytest -n 2 --dist loadfile
# --no-loadscope-reorder` starts them at once and the many short files fill the other
# worker meanwhile (longest first is the classic rule for scheduling jobs on a few
# machines). Without that flag pytest-xdist 3.8 sends the files with the most tests
# first, and these few-test files ran last: the tutorial's joint COSMOS fit alone took
# 25 of the 56 minutes when it ran last.
_LONGEST_FIRST = (
    "test_tutorials.py",
    "test_colour_gradient_calibration.py",
    "test_cosmos_nuts.py",
    "test_marginal_errors.py",
    "test_calibration.py",
    "test_cli_cosmos.py",
    "test_batch.py",
)


def pytest_collection_modifyitems(config, items):
    """Run the longest test files first (see ``_LONGEST_FIRST``); order within a file kept."""

    def rank(item):
        name = item.path.name
        return _LONGEST_FIRST.index(name) if name in _LONGEST_FIRST else len(_LONGEST_FIRST)

    items.sort(key=rank)  # stable: files and tests keep their order within a rank
