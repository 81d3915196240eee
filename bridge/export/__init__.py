"""Exports of a recorded trace: overlays, GIFs, CSV tables, timeline plots, COCO masks, ZIP.

Pure functions (``render``, ``measures``, ``coco``) take and return arrays; I/O lives at the
edges (``data.load_run`` reads a trace, ``writers`` writes files, ``pipeline`` ties them).
docs/EXPORT.md describes every file.
"""

from .coco import coco_document, mask_from_map, polygons, rle_encode
from .data import RunData, load_run, select_words
from .measures import MEASURES, auc_so_far, step_table
from .pipeline import ExportOptions, export_run, export_set, export_trace
from .render import grey_canvas, heat_rgb, overlay, resize_map

__all__ = [
    "MEASURES", "ExportOptions", "RunData", "auc_so_far", "coco_document", "export_run", "export_set", "export_trace",
    "grey_canvas", "heat_rgb", "load_run", "mask_from_map", "overlay", "polygons", "resize_map", "rle_encode",
    "select_words", "step_table",
]
