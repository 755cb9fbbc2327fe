"""``python -m cplat.cli``: the same as the ``cplat`` command."""

import sys

from cplat.cli.main import main

sys.exit(main())
