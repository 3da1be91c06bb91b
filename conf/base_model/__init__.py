"""Hydra config group `base_model` (YAML options only; a package so that wheels ship the files)."""
