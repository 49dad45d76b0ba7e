"""Evaluation and inference: full-size prediction, the evaluation loop, the photo loop."""
