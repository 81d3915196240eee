"""``stepx doctor``: what this machine can do (torch, threads, EGL, ports, oscdump, pyzmq,
Spout/Syphon/NDI, a browser) and the fix for each thing that is missing (bridge/doctor.py)."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="one JSON list of checks instead of the table")


def run(args: argparse.Namespace) -> int:
    """Print the report; exit 1 only when something required (Python, torch, pyzmq) is missing."""
    from bridge.doctor import format_report, run_checks

    checks = run_checks()
    print(json.dumps([c.as_dict() for c in checks], indent=1) if args.json else format_report(checks))
    return 1 if any(c.required and not c.ok for c in checks) else 0
