"""Scoring a checkpoint (`evaluate.py`, `metrics.py`, `report.py`: they write nothing),
writing predictions in the benchmark's layout (`export.py`) and what an output folder may
hold (`output_folder.py`)."""
