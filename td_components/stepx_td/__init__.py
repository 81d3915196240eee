"""StepX TouchDesigner helpers: stream decoder, control sender, TD seam.

Imports only numpy, pyzmq and the standard library, so this folder can be put on
TouchDesigner's ``sys.path`` as is. ``protocol.py`` and ``request.py`` are byte-identical copies
of ``bridge/protocol.py`` and ``bridge/request.py`` (a test checks them): edit the originals, then
copy them here.
"""

__all__ = ["decoder", "control", "protocol", "recording", "request", "tdseam"]
