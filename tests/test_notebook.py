"""The quickstart notebook runs top to bottom (tiny budget) and shows a table and a GIF."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    monkeypatch.setenv("QUICKSTART_STEPS", "128")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # The timeout only guards against a hang: on an idle machine the whole run takes ~30 s.
    client = nbclient.NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "".join(o.get("text", "") for o in outputs)
    assert "clear" in text and "1-1" in text
    assert any("image/gif" in o.get("data", {}) for o in outputs)
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and list((runs[0] / "videos").glob("*.gif"))
