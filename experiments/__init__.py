"""Experiments on top of the library: the demo, and its figures (matplotlib, the `experiments` extra)."""
