"""``python -m scanfleet.daemon`` is the ``scanfleet`` console script."""

import sys

from scanfleet.daemon.cli import main

sys.exit(main())
