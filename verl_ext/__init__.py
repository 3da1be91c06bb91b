"""GXPO for verl: update-rule core, verl adapters (workers, platform and rollout plugins), rewards and data."""
