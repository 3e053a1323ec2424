"""The commands that are not DVC stages: `python -m pipeline.tools.<name>` (bench, compare, dashboard, download,
estimate, submit)."""
