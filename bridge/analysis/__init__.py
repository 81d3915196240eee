"""Offline analysis over runs and traces: objects (TITAN, text-guided detection), evaluation."""
