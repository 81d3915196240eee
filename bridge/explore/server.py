"""Run the explorer app with uvicorn: in the foreground (``stepx explore``) or on a background
thread (``stepx serve --explore``, tests). Loopback by default: the page can generate images and
read files the server is given, so it is not offered to the network unless asked."""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from typing import Any

from bridge.protocol import DEFAULT_HOST

log = logging.getLogger(__name__)

#: where ``stepx explore`` and ``stepx serve --explore`` serve the page unless told otherwise (on DEFAULT_HOST)
DEFAULT_PORT = 8765


def check_host(host: str, allow_remote: bool) -> str:
    """``host`` if it is a loopback address or ``allow_remote`` is set; else a one-line error."""
    try:
        loop = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loop = False
    if not loop and not allow_remote:
        raise ValueError(f"refusing to serve the explorer on {host!r}: it is not a loopback address; "
                         f"use 127.0.0.1, or pass --allow-remote to open it to the network")
    return host


def address(text: str, allow_remote: bool) -> tuple[str, int]:
    """``HOST:PORT`` (or ``PORT``: on 127.0.0.1) of the explorer; port 0 = any free port."""
    host, sep, port = text.rpartition(":")
    host = (host.strip("[]") if sep else "") or DEFAULT_HOST
    try:
        number = int(port)
        if not 0 <= number < 65536:
            raise ValueError
    except ValueError:
        raise ValueError(f"{text!r} is not HOST:PORT for the explorer (e.g. 127.0.0.1:8765; port 0 = any free port)") from None
    return check_host(host, allow_remote), number


class BackgroundServer:
    """uvicorn serving ``app`` on a daemon thread; ``url`` once started (port 0 = any free port)."""

    def __init__(self, app: Any, host: str = DEFAULT_HOST, port: int = 0) -> None:
        import uvicorn

        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off", ws="auto",
                                ws_ping_interval=None)
        # uvicorn listens for signals only on the main thread; it serves on its own thread here, so the
        # owning command keeps its handlers (stepx explore's Ctrl+C, a test runner's)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="stepx-explorer", daemon=True)
        self.host = host
        self.port = port

    def start(self, timeout: float = 20.0) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the explorer server did not start on {self.host}:{self.port}")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
