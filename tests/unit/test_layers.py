"""The package's layers hold (docs/architecture.md): import-linter's contracts in pyproject.toml pass."""

import subprocess
import sys
from pathlib import Path

from importlinter.api import read_configuration

ROOT = Path(__file__).resolve().parents[2]
LINT = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))"


def test_no_module_imports_from_a_layer_above_it_and_no_subpackage_has_a_cycle():
    result = subprocess.run([sys.executable, "-c", LINT], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken." in result.stdout


def test_the_contracts_cover_every_top_level_module_and_every_subpackage():
    # the check above would pass if the contracts were weakened: hold them to what docs/architecture.md says
    contracts = {c["id"]: c for c in read_configuration(str(ROOT / "pyproject.toml"))["contracts_options"]}
    layers = contracts["layers"]
    assert (layers["type"], layers["containers"], layers["exhaustive"]) == ("layers", ["dapt"], "True")
    assert layers["layers"][0] == "cli" and layers["layers"][-1].startswith("errors : artifacts")
    assert (contracts["acyclic"]["type"], contracts["acyclic"]["ancestors"]) == ("acyclic_siblings", ["dapt.*"])
