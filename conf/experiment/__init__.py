"""Hydra config group `experiment` (YAML options only; a package so that wheels ship the files)."""
