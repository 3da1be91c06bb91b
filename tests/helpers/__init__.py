"""Shared test helpers (importable as ``helpers.*`` because ``tests/conftest.py`` puts ``tests/`` on
``sys.path``): paths, process environments, a private local Ray head, the core's toy problems and
the multi-process core worker."""
