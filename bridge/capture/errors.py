"""Errors the capture raises: each names what was wrong and what would be right."""

from __future__ import annotations


class CaptureError(RuntimeError):
    """Base class for capture errors."""


class UnsupportedPipelineError(CaptureError, TypeError):
    """The pipeline class has no capture adapter."""


class UnsupportedProcessorError(CaptureError):
    """An attention processor whose maths the capture cannot observe exactly."""


class WordNotFoundError(CaptureError, KeyError):
    """A word that is not in the prompt; the message lists the prompt's words."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class PromptTooLongError(CaptureError, ValueError):
    """A prompt longer than the tokenizer's limit, when strict truncation is asked for."""
