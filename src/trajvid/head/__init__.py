"""The multi-task head every backbone feeds, identical for all of them: the model and its loss
(`multitask.py`), camera geometry (`geometry.py`) and the per-class motion fits (`motion.py`)."""
