"""Offline work over many runs: capture over prompt sets, and what builds on it (evaluation,
head relevance, object annotation: ``bridge.analysis.objects``). Imports capture and models;
never delivery or transport."""

from .runs import CapturedRun, capture_prompts

__all__ = ["CapturedRun", "capture_prompts"]
