"""The commands a person runs beside the pipeline: `trajvid report`, `status`, `ensemble` and
`explain`, with the git helpers (`git.py`) and the trained model of any revision (`revisions.py`)
they read. Nothing in the pipeline's stages imports them."""
