"""Evaluation metrics computed from validation samples (pure Python, no verl imports)."""
