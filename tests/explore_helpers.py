"""Shared pieces of the explorer tests: a real server on a free port, HTTP calls, a recorded trace."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


def call(url: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
    """``(status, JSON or bytes)`` of a GET (no body) or POST."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if body is not None else {})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            payload, status, kind = r.read(), r.status, r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        payload, status, kind = e.read(), e.code, e.headers.get("Content-Type", "")
    return status, json.loads(payload) if "json" in kind else payload


def record_trace(pipe: Any, path: Path, prompt: str, steps: int = 5, seed: int = 1) -> Path:
    """Generate once with the real runner and record every packet to a trace at ``path``."""
    from bridge.runner import Request, collect
    from bridge.trace import TraceWriter

    result, packets = collect(pipe, Request(prompt=prompt, seed=seed, steps=steps))
    assert result.status == "done", result.error
    with TraceWriter(path) as w:
        for p in packets:
            w.send(p)
    return path
