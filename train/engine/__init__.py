"""A training run: its parts built once (`run.py`), the per-kind steps (`kinds.py`,
`steps.py`), the loop (`trainer.py`), checkpoints, logs, resume and the device."""
