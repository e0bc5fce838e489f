"""``python -m hpcdd``: the ``hpcdd`` command (see :mod:`hpcdd.console`)."""

import sys

from hpcdd.console import main

sys.exit(main())
