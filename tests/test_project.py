"""The project's own conventions: nbdev skips the heavy cells, and the experiment notebooks are papermill-ready."""
import json
from pathlib import Path
import pytest
from nbdev.config import get_config
from nbdev.process import NBProcessor

REPO = Path(__file__).resolve().parents[1]
NBS = sorted((REPO / "nbs").rglob("*.ipynb"))

def code_cells(path):
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]

def directives(path):
    "The `#|` directives of each code cell of `path`, as nbdev itself parses them."
    return [set(c.directives_) for c in NBProcessor(path, process=True).nb.cells if c.cell_type == "code"]

def test_tst_flags_are_space_separated():
    "nbdev_test splits tst_flags on whitespace: 'slow|gpu' would be one flag matching no cell, and every slow cell would run."
    assert {"slow", "gpu"} <= set(get_config().tst_flags.split())

@pytest.mark.parametrize("nb", NBS, ids=lambda p: str(p.relative_to(REPO / "nbs")))
def test_heavy_cells_use_known_flags(nb):
    known = set(get_config().tst_flags.split()) | {"export", "exports", "exporti", "hide", "default_exp", "eval:", "export:", "output:"}
    for found in directives(nb): assert found <= known, f"{nb.name}: unknown cell directive(s) {found - known}"

EXPERIMENTS = sorted((REPO / "nbs" / "experiments").glob("*.ipynb"))

@pytest.mark.parametrize("nb", EXPERIMENTS, ids=lambda p: p.name)
def test_experiment_notebooks_have_parseable_parameters(nb, caplog):
    "One cell tagged `parameters`, which papermill reads without a warning (else it cannot check or type the overrides)."
    from papermill.translators import PythonTranslator
    cells = [c for c in code_cells(nb) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1
    with caplog.at_level("WARNING"):
        names = [p.name for p in PythonTranslator.inspect({"source": "".join(cells[0]["source"])})]
    assert names and "Unable to parse" not in caplog.text, caplog.text
