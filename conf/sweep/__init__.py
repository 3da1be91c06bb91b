"""Hydra config group `sweep` (YAML options only; a package so that wheels ship the files)."""
