"""Texture senders: platform checks through a seam; NDI sender runs here if cyndilib does."""

import numpy as np
import pytest

from bridge.protocol import Packet
from bridge.transport import textures


def test_spout_on_linux_names_what_can_run():
    with pytest.raises(textures.TransportUnavailable, match=r"spout runs only on win32; this is linux.*ndi"):
        textures.check("spout", platform="linux", importer=lambda m: True)


def test_syphon_on_windows_and_missing_package():
    with pytest.raises(textures.TransportUnavailable, match="syphon runs only on darwin.*spout"):
        textures.check("syphon", platform="win32", importer=lambda m: True)
    with pytest.raises(textures.TransportUnavailable, match="pip install cyndilib"):
        textures.check("ndi", platform="linux", importer=lambda m: False)
    assert textures.available("darwin", importer=lambda m: True) == ["syphon", "ndi"]


def test_to_rgba():
    out = textures.to_rgba(np.zeros((3, 5, 3), np.uint8))
    assert out.shape == (3, 5, 4) and (out[..., 3] == 255).all()


@pytest.mark.skipif("ndi" not in textures.available(), reason="cyndilib not importable here")
def test_ndi_sender_sends_frames():
    s = textures.open_texture_sender("ndi", "stepx-pytest")
    try:
        for i in range(3):
            s.send(Packet("image", {"step": i}, {"image": np.full((64, 96, 3), i * 40, np.uint8)}))
        with pytest.raises(ValueError, match="size changed"):
            s.send_rgba(np.zeros((32, 32, 4), np.uint8))
    finally:
        s.close()
