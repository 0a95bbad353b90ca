"""``python -m cldl`` runs the command line."""

import sys

from .commands.main import main

sys.exit(main())
