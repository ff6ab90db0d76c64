"""The walkthrough notebook runs top to bottom on the outputs of the sample run (Kedro's IPython extension,
the catalog, the reporting plots) in a kernel of this interpreter."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "maf_walkthrough.ipynb"
KERNEL = "maf-pipeline-test"


def execute_notebook(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, timeout: int = 300):
    """Execute ``path`` in its folder with a kernel of ``sys.executable`` (registered in a temporary
    Jupyter path, so a user's own ``python3`` kernel spec is never picked up) and return the notebook."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"})
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=timeout, kernel_name=KERNEL, resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()
    return nb


def outputs(nb, mime: str) -> list[str]:
    """Every output of the executed notebook of type ``mime`` (plus streamed text for text/plain)."""
    found = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if mime in out.get("data", {}):
                found.append(out["data"][mime])
            elif mime == "text/plain" and out.get("output_type") == "stream":
                found.append(out["text"])
    return found


def test_notebook_is_clean() -> None:
    """Committed without outputs, and it uses the IPython extension and the catalog (not file paths)."""
    nb = json.loads(NOTEBOOK.read_text())
    assert all(
        not c.get("outputs") and not c.get("execution_count") for c in nb["cells"] if c["cell_type"] == "code"
    )
    source = "\n".join("".join(c["source"]) for c in nb["cells"])
    assert "%load_ext kedro.ipython" in source and "%reload_kedro" in source
    assert "data/" not in source


@pytest.mark.slow
def test_notebook_runs_on_the_sample_outputs(
    full_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project, _ = full_run
    (project / "notebooks").mkdir(exist_ok=True)
    target = project / "notebooks" / NOTEBOOK.name
    shutil.copy2(NOTEBOOK, target)
    nb = execute_notebook(target, tmp_path, monkeypatch)

    text = "\n".join(outputs(nb, "text/plain"))
    stats = json.loads((project / "data" / "08_reporting" / "dataset_statistics.json").read_text())
    attention = json.loads((project / "data" / "08_reporting" / "maf" / "attention_maps.json").read_text())
    assert stats["dataset"] in text and f"user {attention['user_id']}" in text
    # no comparison has run in the project copy: the notebook says so and shows the full run's metrics
    assert "No comparison table yet" in text and "test ndcg@20" in "\n".join(outputs(nb, "text/html"))
    # data statistics, sequence lengths, training curves, attention maps
    assert len(outputs(nb, "image/png")) >= 4
    assert "after [" in text  # the trained model scored a new sequence
