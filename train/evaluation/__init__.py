"""Scoring a checkpoint (`evaluate.py`, `metrics.py`, `report.py`) and exporting test-split
predictions in the benchmark's layout (`predict.py`)."""
