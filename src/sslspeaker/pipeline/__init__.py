"""From unlabelled speech to a calibrated verifier: ``sslspeaker pipeline RECIPE --out DIR``.

Stages (``stages.py``) run in a recipe's order (``config.py``) under one time budget
(``runner.py``): self-supervised training, pseudo-labels, supervised rounds on them, a scoring
back-end and its calibration, then one model file that carries all of it.
"""

from .config import PipelineConfig, StageConfig, load_pipeline
from .runner import run_pipeline

__all__ = ["PipelineConfig", "StageConfig", "load_pipeline", "run_pipeline"]
