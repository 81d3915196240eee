"""Every ``stepx X --help`` answers without importing a heavy module.

Checked through ``sys.modules`` in a fresh interpreter, not by timing: what was imported is a
fact, how long it took depends on the machine's load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "diffusers", "transformers", "matplotlib", "moderngl", "PIL", "ray")

_PROBE = """
import contextlib, io, json, sys
from bridge.cli import main
with contextlib.redirect_stdout(io.StringIO()) as out:
    try:
        main(sys.argv[1:])
    except SystemExit as exc:
        code = exc.code
    else:
        code = 0
print(json.dumps({"code": code, "help": out.getvalue(), "modules": sorted(sys.modules)}))
"""


def _help(*argv: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_imports_no_heavy_module(command):
    got = _help(*([command] if command else []), "--help")
    assert got["code"] == 0
    assert "usage: stepx" in got["help"]
    if command:  # the command's own options are listed, so its argument module did load
        assert f"stepx {command}" in got["help"] and "-h, --help" in got["help"]
    assert "bridge.cli" in got["modules"]  # the probe saw the real import list
    heavy = sorted({m.split(".")[0] for m in got["modules"]} & set(HEAVY))
    assert heavy == [], f"stepx {command or ''} --help imported {heavy}"

