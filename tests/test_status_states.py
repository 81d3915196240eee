"""Status that tells the truth: one table of daemon states, documented, on both transports.

The OSC heartbeat is read by ``oscdump`` (liblo), a strict independent OSC parser: every
``/stepx/status`` must be ``ifif`` with a state code from the table in docs/PROTOCOL.md, and a
generation must show as *generating* and an idle replay as *replaying*, never as *error*.
"""

from __future__ import annotations

import re
import shutil
import threading
from pathlib import Path

import pytest

from bridge.daemon import Daemon, DaemonOptions
from bridge.stream.fanout import FanOut, SinkBase
from bridge.runner import Request, Runner
from bridge.transport.osc_out import OscSender
from bridge.protocol import STATES
from oscdump import OscDump
from waiting import wait_until

DOC = Path(__file__).resolve().parents[1] / "docs" / "PROTOCOL.md"


def documented_states() -> dict[str, int]:
    """The states table of docs/PROTOCOL.md ("| 2 | `generating` | ..." rows under "Daemon states")."""
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("### Daemon states"):]
    section = section[: section.index("\n#", 1)]
    return {name: int(code) for code, name in re.findall(r"^\| (\d+) \| `(\w+)` \|", section, re.M)}


def test_the_documented_table_is_the_code_table():
    assert documented_states() == STATES


class Collect(SinkBase):
    name, encoding, lossless = "collect", None, True

    def __init__(self) -> None:
        self.status: list[dict] = []

    def send(self, packet, data=None) -> None:
        if packet.kind == "status":
            self.status.append(dict(packet.header))

    def close(self) -> None:
        pass


@pytest.mark.skipif(shutil.which("oscdump") is None, reason="oscdump (liblo-tools) is not installed")
def test_heartbeat_states_on_osc_and_zmq_match_the_table(sd_pipe):
    dump = OscDump().start()  # listening: no heartbeat is lost to an unbound port

    def osc_codes(lines: list[str]) -> list[int]:
        return [int(l.split()[3]) for l in lines if " /stepx/status ifif " in l]

    collect = Collect()
    fan = FanOut([OscSender("127.0.0.1", dump.port, heartbeat=0.05), collect])
    runner = Runner(sd_pipe, fan.publish, "tiny", image_every=0)
    daemon = Daemon(runner, fan.publish, DaemonOptions(idle_replay=True, replay_fps=20, heartbeat=0.05))
    loop = threading.Thread(target=daemon.serve_forever, daemon=True)
    loop.start()
    try:
        daemon.submit(Request(prompt="a cat", steps=60, seed=1))
        wait_until(lambda: any(s["state"] == "replaying" for s in collect.status[-3:]), timeout=120,
                   what="the idle replay after the run")
        dump.wait_for(lambda lines: STATES["replaying"] in osc_codes(lines), "a replaying heartbeat at oscdump")
    finally:
        daemon.stop()
        loop.join(30)
        fan.close()
        lines = dump.stop()
    status = [l.split()[1:] for l in lines if " /stepx/status " in l]
    assert status, "no heartbeat reached oscdump"
    for _addr, types, *args in status:
        assert types == "ifif" and len(args) == 4, (types, args)
    codes = [int(s[2]) for s in status]
    assert set(codes) <= set(STATES.values()), codes
    assert STATES["generating"] in codes and STATES["replaying"] in codes, codes
    assert STATES["error"] not in codes, codes
    assert all(s["state_code"] == STATES[s["state"]] for s in collect.status)  # ZeroMQ's status: name and code
    assert {"generating", "replaying"} <= {s["state"] for s in collect.status}
