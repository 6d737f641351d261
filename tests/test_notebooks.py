"""Every notebook in notebooks/ runs top to bottom without an error (tiny settings:
VI_JAX_NOTEBOOK_QUICK=1), in a temporary copy, with the python3 kernel of this interpreter;
and the stored notebooks carry no outputs."""
import os
import pathlib
import shutil

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((pathlib.Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 4


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: clear the outputs"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch, persistent_compilation_cache):
    copy = tmp_path / path.name
    shutil.copy(path, copy)
    notebook = nbformat.read(copy, as_version=4)
    monkeypatch.setenv("VI_JAX_NOTEBOOK_QUICK", "1")
    for name, value in persistent_compilation_cache.items():  # the kernel shares this worker's cache
        monkeypatch.setenv(name, value)
    # "python3" resolves to this interpreter (jupyter_client starts the native kernel with sys.executable)
    client = nbclient.NotebookClient(notebook, kernel_name="python3", timeout=600,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError naming the cell on any error
    nbformat.write(notebook, copy)
    assert os.path.getsize(copy) > 0
