"""Tracking backends that plug into verl's ``verl.utils.tracking.Tracking`` (see :mod:`.console`)."""
