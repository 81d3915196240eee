"""Per-step attention capture for diffusers pipelines (DAAM, DAAM-I2I, head-weighted).

    from bridge.capture import capture
    with capture(pipe) as cap:
        image = pipe("a red circle above a blue square").images[0]
    run = cap.last_run
    run.word_map("circle")            # [H, W] at the last step
    run.word_maps()                   # [steps, words, H, W]
"""

from .adapters import Adapter, Layer, adapter_for, register, supported_pipelines
from .config import CaptureConfig, load_head_weights, top_heads
from .errors import CaptureError, PromptTooLongError, UnsupportedPipelineError, UnsupportedProcessorError, WordNotFoundError
from .frames import CaptureRun, StepFrame
from .queries import Query
from .evaluation import graph_stats
from .session import Capture, capture
from .tokens import TokenMap, build_token_map

__all__ = [
    "Adapter", "Layer", "adapter_for", "register", "supported_pipelines",
    "CaptureConfig", "load_head_weights", "top_heads",
    "CaptureError", "PromptTooLongError", "UnsupportedPipelineError", "UnsupportedProcessorError", "WordNotFoundError",
    "CaptureRun", "StepFrame", "Query", "Capture", "capture", "graph_stats", "TokenMap", "build_token_map",
]
