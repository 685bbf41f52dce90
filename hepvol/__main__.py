"""``python -m hepvol``: the ``hepvol`` command."""

import sys

from hepvol.cli import main

sys.exit(main())
