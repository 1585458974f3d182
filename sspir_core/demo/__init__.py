"""Toy models: the tiny-random preset and the demo model files (below training, which builds on them)."""
