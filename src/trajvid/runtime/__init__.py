"""How a process runs, not what it computes: atomic writes and full-disk errors (`files.py`), CPU
threads shared among the trainings of a machine (`devices.py`), one free GPU per run (`gpus.py`),
and the heartbeat `trajvid status` reads (`heartbeat.py`)."""
