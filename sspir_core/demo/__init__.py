"""Toy models: the tiny-random preset, the demo model files and the parity-fixture runner."""
