"""NDI loopback: our NdiSender -> a cyndilib Receiver in the same process, pixels compared.

Discovery: NDI's own mDNS finds nothing in this sandbox (gVisor, no multicast loopback), and
cyndilib exposes neither ``p_extra_ips`` nor connecting by URL. NDI's config file does:
``ndi-config.v1.json`` with ``networks.ips = "127.0.0.1"`` makes the finder ask 127.0.0.1
directly (unicast), so discovery and video stay on this machine. The NDI library reads that
file once, when it first starts in a process, so NDI_CONFIG_DIR is set here at import
(collection time, before any test creates an NDI sender) unless the caller already set it.

NDI compresses RGBA with its SpeedHQ codec (lossy, 4:2:2 chroma): received pixels are
compared within a tolerance, not bit-exactly. Rows are top-to-bottom on both sides (no flip).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
import time

import numpy as np
import pytest

from bridge.protocol import Packet
from bridge.transport import textures

pytestmark = pytest.mark.skipif("ndi" not in textures.available(), reason="cyndilib not importable here")

if "ndi" in textures.available() and "NDI_CONFIG_DIR" not in os.environ:
    _cfg = tempfile.mkdtemp(prefix="stepx-ndi-")
    atexit.register(shutil.rmtree, _cfg, True)
    with open(os.path.join(_cfg, "ndi-config.v1.json"), "w") as fh:
        json.dump({"ndi": {"networks": {"ips": "127.0.0.1", "discovery": ""},
                           "multicast": {"send": {"enable": False}}}}, fh)
    os.environ["NDI_CONFIG_DIR"] = _cfg

W, H = 64, 48
BLUES = (40, 100, 160, 220)  # frame i has blue = BLUES[i] outside its marker blocks
TOL_MAX, TOL_MEAN = 24, 4.0  # SpeedHQ here: max 15 (blue), mean <= 2.9, alpha exact


def make_frame(i: int) -> np.ndarray:
    """64x48 RGBA: R grows with x, G with y (top = 0); white 8x8 marker top-left; alpha 64 block."""
    y, x = np.mgrid[0:H, 0:W]
    img = np.empty((H, W, 4), np.uint8)
    img[..., 0], img[..., 1], img[..., 2], img[..., 3] = x * 4, y * 5, BLUES[i], 255
    img[0:8, 0:8] = 255  # marker: top-left; a row flip would put it bottom-left
    img[40:48, 56:64, 3] = 64  # alpha survives the trip
    return img


def frame_index(rgba: np.ndarray) -> int:
    return int(np.argmin([abs(float(rgba[16:32, 16:48, 2].mean()) - b) for b in BLUES]))


def test_ndi_sender_to_cyndilib_receiver_loopback():
    from cyndilib.finder import Finder  # noqa: PLC0415
    from cyndilib.receiver import Receiver, ReceiveFrameType  # noqa: PLC0415
    from cyndilib.video_frame import VideoRecvFrame  # noqa: PLC0415
    from cyndilib.wrapper.ndi_recv import RecvBandwidth, RecvColorFormat  # noqa: PLC0415
    from cyndilib.wrapper.ndi_structs import FourCC  # noqa: PLC0415

    name = f"stepx-loopback-{os.getpid()}"
    frames = [make_frame(i) for i in range(len(BLUES))]
    sender = textures.NdiSender(name)
    finder = Finder()
    receiver = None
    try:
        sender.send_rgba(frames[0])  # opens the sender (size fixed at first frame)
        finder.open()
        source, deadline = None, time.monotonic() + 10
        while source is None and time.monotonic() < deadline:
            finder.wait_for_sources(0.5)
            finder.update_sources()
            found = [n for n in finder.get_source_names() if n.endswith(f"({name})")]
            source = finder.get_source(found[0]) if found else None
        if source is None:
            pytest.skip(f"NDI discovery found no source {name!r} in 10 s (NDI_CONFIG_DIR="
                        f"{os.environ.get('NDI_CONFIG_DIR')!r}; mDNS does not work in this sandbox "
                        "and the config must be in place before NDI first starts in the process)")

        receiver = Receiver(color_format=RecvColorFormat.RGBX_RGBA, bandwidth=RecvBandwidth.highest)
        vf = VideoRecvFrame()
        receiver.set_video_frame(vf)
        receiver.set_source(source)

        got: dict[int, np.ndarray] = {}
        deadline = time.monotonic() + 20
        for i, sent in enumerate(frames):
            while i not in got:
                assert time.monotonic() < deadline, f"received frames {sorted(got)} of {len(frames)} in 20 s"
                if i == len(frames) - 1:  # last one through the Sink interface: RGB, alpha added
                    sender.send(Packet("image", {"step": i}, {"image": np.ascontiguousarray(sent[..., :3])}))
                else:
                    sender.send_rgba(sent)
                if receiver.receive(ReceiveFrameType.recv_video, 100) != ReceiveFrameType.recv_video:
                    continue
                assert vf.get_resolution() == (W, H)
                assert vf.get_fourcc() == FourCC.RGBA
                stride = vf.get_line_stride()
                buf = np.empty(vf.get_buffer_size(), np.uint8)
                vf.fill_p_data(buf)
                rgba = buf.reshape(H, stride)[:, : W * 4].reshape(H, W, 4)
                got.setdefault(frame_index(rgba), rgba)

        for i, rgba in got.items():
            want = frames[i].copy()
            if i == len(frames) - 1:
                want[..., 3] = 255  # sent as RGB
            diff = np.abs(rgba.astype(int) - want.astype(int))
            assert diff.max() <= TOL_MAX and diff.mean() <= TOL_MEAN, (i, diff.max(), diff.mean())
            # row order: marker stays top-left; channel order: R follows x, G follows y
            assert (rgba[1:7, 1:7, :3] >= 230).all() and (rgba[41:47, 1:7, :3] < 230).any()
            assert rgba[24, 60, 0] > rgba[24, 12, 0] + 150 and rgba[44, 30, 1] > rgba[12, 30, 1] + 120
            assert abs(float(rgba[20:30, 20:40, 2].mean()) - BLUES[i]) <= 16  # codec shifts blue (-9 at 220)
            assert abs(int(rgba[44, 60, 3]) - int(want[44, 60, 3])) <= 8 and rgba[0, 0, 3] >= 247
    finally:
        if receiver is not None:
            receiver.disconnect()
        finder.close()
        sender.close()
