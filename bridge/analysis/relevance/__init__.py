"""Head relevance vectors (HRV) and selective aggregation: see docs/RELEVANCE.md."""
