"""Shared fixtures: small diffusers pipelines with random weights, built once per session."""

from __future__ import annotations

import logging
import os
import warnings

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
warnings.filterwarnings("ignore", category=FutureWarning)
logging.getLogger("diffusers").setLevel(logging.ERROR)
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def sd_pipe():
    from bridge.models.tiny import tiny_sd_pipeline

    return tiny_sd_pipeline()


@pytest.fixture(scope="session")
def sdxl_pipe():
    from bridge.models.tiny import tiny_sdxl_pipeline

    return tiny_sdxl_pipeline()


@pytest.fixture(scope="session")
def shapes_pipe():
    """The embedded shapes model, loaded once for the session (a module may define its own)."""
    from bridge.models.loading import load_pipeline

    return load_pipeline()[0]
