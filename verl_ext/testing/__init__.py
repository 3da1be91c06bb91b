"""Test and benchmark helpers: verl's real actor TrainingWorker on CPU (see :mod:`verl_ext.testing.cpu_worker`)."""
