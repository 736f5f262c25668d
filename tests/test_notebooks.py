"""The notebooks in notebooks/: each runs top to bottom in a fresh kernel, and is saved without outputs."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))
KERNEL = "torch-clnf-tests"
CELL_TIMEOUT = 300            # seconds; each notebook takes well under two minutes in all
COLOURS = re.compile(r"\x1b\[[0-9;]*m")     # IPython's tracebacks are coloured with terminal escapes


@pytest.fixture(scope="session")
def jupyter_path(tmp_path_factory) -> Path:
    """A Jupyter data folder holding a kernel spec that runs this interpreter (the test's venv,
    whatever other kernels the machine has)."""
    from ipykernel.kernelspec import install

    prefix = tmp_path_factory.mktemp("jupyter")
    install(kernel_name=KERNEL, display_name="torch_clnf tests", prefix=str(prefix))
    return prefix / "share" / "jupyter"


@pytest.fixture(scope="session")
def weights_cache(tmp_path_factory) -> Path:
    """One converted-weights cache for all notebooks, outside the checkout."""
    return tmp_path_factory.mktemp("weights")


def test_notebooks_exist():
    assert [p.name for p in PATHS] == ["01_quickstart.ipynb", "02_video.ipynb", "03_batch_and_export.ipynb"]


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_saved_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    dirty = [k for k, cell in enumerate(notebook.cells)
             if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)]
    assert not dirty, (f"{path.name}: cells {dirty} hold outputs or execution counts; clear them "
                       "(Jupyter's Edit → Clear Outputs of All Cells) and save before committing")


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_runs(path, models_dir, media_dir, reference_dir, jupyter_path, weights_cache, monkeypatch):
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter_path))
    monkeypatch.setenv("TORCH_CLNF_MODELS", str(models_dir))
    monkeypatch.setenv("TORCH_CLNF_CACHE", str(weights_cache))
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT, kernel_name=KERNEL,
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})   # run from notebooks/
    error = None
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as err:         # the cell, its output and its traceback
        error = COLOURS.sub("", str(err))
    if error is not None:
        pytest.fail(f"{path.name}: {error}", pytrace=False)
