"""Offline analysis over many runs: head relevance, objects, evaluation."""
