"""``python -m forgeline``: the same as the ``forgeline`` command."""

import sys

from forgeline.cli import main

sys.exit(main())
