"""The code's layers, as written in pyproject.toml's import-linter contracts, hold."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint) if lint.exists() else "lint-imports", "--no-cache"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken" in result.stdout


def test_the_network_imports_without_the_package_above_it():
    code = ("import sys, clozelm.model, clozelm.tokenizers; "
            "above = [m for m in sys.modules if m.startswith(('clozelm.cloze', 'clozelm.heads', 'clozelm.training', "
            "'clozelm.server', 'clozelm.cli', 'clozelm.api', 'clozelm.loading', 'clozelm.generation', 'clozelm.weights'))]; "
            "print(above); assert not above")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
