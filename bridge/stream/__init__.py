"""Delivery: host snapshots, fan-out to sinks, the sink process, and the packet recipes it runs."""
