"""Objects from attention: the prompt handler, text-guided detection, TITAN datasets, evaluation.

    from bridge.analysis.objects import annotate, grid_queries
    with capture(pipe, CaptureConfig(queries=grid_queries())) as cap:
        image = pipe(prompt).images[0]
    found = annotate(from_capture(cap.last_run, image), prompt)   # list[Instance]
    annotate("run.stepx", prompt)                                  # a recorded trace (word maps alone)

Needs the ``objects`` extra (lemminflect's lexicon, pycocotools). docs/OBJECTS.md has the method
and its measured figures.
"""

from .annotate import Category, Instance, align, annotate, categories, decode_rle, detect_words, encode_rle
from .detect import METHODS, DetectConfig, grid_queries
from .evidence import Evidence, EvidenceRecorder, from_capture, from_trace
from .prompt import Parsed, PromptObject, parse_prompt

__all__ = [
    "Category", "Instance", "align", "annotate", "categories", "decode_rle", "detect_words", "encode_rle",
    "METHODS", "DetectConfig", "grid_queries",
    "Evidence", "EvidenceRecorder", "from_capture", "from_trace",
    "Parsed", "PromptObject", "parse_prompt",
]
