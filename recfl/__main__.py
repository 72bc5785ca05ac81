"""``python -m recfl``: the same as the ``recfl`` command."""

import sys

from recfl.app.cli import main

sys.exit(main())
