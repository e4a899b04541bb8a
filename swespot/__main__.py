"""``python -m swespot ...``: the same command line as the ``swespot`` console script."""

import sys

from swespot.cli import main

sys.exit(main())
