"""A real ``oscdump`` (liblo-tools) on a free UDP port, its lines read on a thread.

``start()`` returns once oscdump has printed a probe datagram, so nothing sent after it is lost
to a socket not yet bound; ``wait_for`` waits (generously, returning at once) for a line.
"""

from __future__ import annotations

import socket
import subprocess
import threading
from typing import Callable

from bridge.transport import osc_encode
from waiting import ARRIVAL_S, wait_until

PROBE = "/test/oscdump/probe"


class OscDump:
    def __init__(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen(["oscdump", "-L", str(self.port)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True, name="oscdump-reader")
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in iter(self.proc.stdout.readline, ""):
            with self._lock:
                self._lines.append(line.rstrip("\n"))

    @property
    def lines(self) -> list[str]:
        """Every line printed so far, probes left out."""
        with self._lock:
            return [l for l in self._lines if PROBE not in l]

    def start(self) -> "OscDump":
        """Probe until oscdump prints a probe: from then on it hears every datagram."""
        probe = osc_encode.message(PROBE)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            def heard() -> bool:
                s.sendto(probe, ("127.0.0.1", self.port))
                with self._lock:
                    return any(PROBE in l for l in self._lines)
            wait_until(heard, interval=0.05, what=f"oscdump listening on {self.port}")
        return self

    def wait_for(self, cond: Callable[[list[str]], bool], what: str) -> list[str]:
        """Wait until ``cond(lines)`` holds (a datagram that must come); returns the lines."""
        wait_until(lambda: cond(self.lines), what=what)
        return self.lines

    def stop(self) -> list[str]:
        """Terminate oscdump; every line it printed."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout=ARRIVAL_S)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        self._reader.join(ARRIVAL_S)  # to the end of its output
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        return self.lines

    def __enter__(self) -> "OscDump":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
