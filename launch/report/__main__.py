"""``python -m launch.report``: see :mod:`launch.report.cli`."""

import sys

from launch.report.cli import main

sys.exit(main())
