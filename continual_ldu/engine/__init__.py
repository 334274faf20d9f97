"""The engine: every side effect (training loops, files, progress, tracking)."""
