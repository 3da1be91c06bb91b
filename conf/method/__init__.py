"""Hydra config group `method` (YAML options only; a package so that wheels ship the files)."""
