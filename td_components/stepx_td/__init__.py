"""StepX TouchDesigner helpers: stream decoder, control sender, TD seam.

Imports only numpy, pyzmq and the standard library, so this folder can be put on
TouchDesigner's ``sys.path`` as is. ``protocol.py`` is a byte-identical copy of
``bridge/protocol.py`` (a test checks it): edit the original, then copy it here.
"""

__all__ = ["decoder", "control", "protocol", "tdseam"]
