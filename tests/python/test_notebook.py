"""examples/quickstart.ipynb runs top to bottom (executed here so it cannot rot) and is stored
without outputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import sgpo_rs

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("trl")

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "quickstart.ipynb"


def test_notebook_is_stored_without_outputs():
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert code, "the notebook has no code cells"
    assert all(not c["outputs"] and c["execution_count"] is None for c in code)


def test_notebook_executes(tmp_path, monkeypatch):
    # The kernel is a fresh process: give it the sgpo_rs this session imported (installed, or a
    # source tree with its built extension), never a source tree without the extension.
    paths = [str(Path(sgpo_rs.__file__).resolve().parents[1])]
    paths += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "SGPO advantages" in text and "first_error=-1" in text
    assert any("image/png" in o.get("data", {}) for o in outputs), "the demo plot was not displayed"
    # The demo writes its plot next to the notebook; leave the checkout as it was.
    (NOTEBOOK.parent / "quickstart_demo.png").unlink(missing_ok=True)
