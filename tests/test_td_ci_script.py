"""The TD CI script is valid bash and the tests/td suite is collected by pytest too."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_script_is_valid_bash() -> None:
    script = ROOT / "td_components" / "ci_td_env.sh"
    assert script.stat().st_mode & 0o111, "ci_td_env.sh must be executable"
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_td_suite_runs_without_torch_or_pytest_in_path() -> None:
    """The TD subset must not rely on tests/conftest.py (which imports torch)."""
    for f in (ROOT / "tests" / "td").glob("test_*.py"):
        text = f.read_text(encoding="utf-8")
        assert "import torch" not in text and "import pytest" not in text, f.name
