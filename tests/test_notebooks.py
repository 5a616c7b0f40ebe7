"""The notebooks: each .ipynb is the jupytext twin of its percent-format .py (same cells, no
outputs), and each notebook runs top to bottom (from the .py, DIFFJAX_NB_QUICK=1) in a fresh kernel.

The notebooks assert their own numerical checks (exact-oracle identities, sampler accuracy against
the noise floor of the sample metric, training progress), so executing them is a test that can fail.
"""

import os
import time
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
NAMES = ["01_theory_tour", "02_flow_matching_2d", "03_mnist_sampling"]
MNIST_DIR = Path(os.environ.get("DIFFJAX_DATA_DIR", ROOT.parent / "shared" / "data" / "mnist"))
HAVE_MNIST = any(
    (d / "train-images-idx3-ubyte.gz").exists() for d in (MNIST_DIR, MNIST_DIR / "mnist")
)


def cells(nb):
    """(cell_type, source) of every cell, sources stripped of surrounding whitespace."""
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


@pytest.mark.parametrize("name", NAMES)
def test_ipynb_is_paired_and_in_sync(name):
    py = jupytext.read(NOTEBOOKS / f"{name}.py")
    assert py.metadata["jupytext"]["formats"] == "ipynb,py:percent"
    ipynb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    assert cells(ipynb) == cells(py), (
        f"notebooks/{name}.ipynb differs from its .py: run "
        f"`.venv/bin/jupytext --sync notebooks/{name}.py` (or --to ipynb)."
    )
    for cell in ipynb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "store them unexecuted"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_code_uses_only_the_library(name):
    """No sys.path manipulation and no `experiments` import: the notebooks run on `diffjax` alone."""
    code = "\n".join(c.source for c in jupytext.read(NOTEBOOKS / f"{name}.py").cells if c.cell_type == "code")
    assert "sys.path" not in code
    assert "import experiments" not in code and "from experiments" not in code


def execute(name, tmp_path):
    """Run notebooks/<name>.py as a notebook in notebooks/; keep the executed copy in tmp_path."""
    nb = jupytext.read(NOTEBOOKS / f"{name}.py")
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    start = time.perf_counter()
    try:
        client.execute()
    finally:
        nbformat.write(nb, tmp_path / f"{name}.ipynb")
    print(f"{name}: executed in {time.perf_counter() - start:.1f} s")
    return nb


def outputs(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)


@pytest.fixture
def quick(monkeypatch):
    """Small settings (read by the notebooks) and a non-interactive matplotlib backend."""
    monkeypatch.setenv("DIFFJAX_NB_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")


@pytest.mark.slow
def test_theory_tour_runs(quick, tmp_path):
    text = outputs(execute("01_theory_tour", tmp_path))
    assert "max |error|, exact p_T" in text and "CFG w = 3.0" in text


@pytest.mark.slow
def test_flow_matching_2d_runs(quick, tmp_path):
    text = outputs(execute("02_flow_matching_2d", tmp_path))
    assert "dpm_solver_pp" in text and "steps in" in text


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_MNIST, reason=f"MNIST IDX files not found in {MNIST_DIR}")
def test_mnist_sampling_runs_with_fallback_model(quick, tmp_path, monkeypatch):
    # DIFFJAX_NB_QUICK=1 (the `quick` fixture) and no work directory: the tiny in-notebook model
    monkeypatch.delenv("DIFFJAX_MNIST_WORKDIR", raising=False)
    text = outputs(execute("03_mnist_sampling", tmp_path))
    assert "training a tiny class-conditional model" in text
    # dj.load_model rebuilt the fallback from the run record of its temporary work directory
    assert "predicting 'velocity' on CondOTPath; classes: 10" in text
    assert "w = 3.0" in text  # classifier-free guidance was shown
    assert "raw:" in text and "clipped:" in text  # the clip_denoised comparison ran
