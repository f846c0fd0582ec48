"""``python -m ccid``: the ``ccid`` command."""

import sys

from ccid.cli import main

sys.exit(main())
