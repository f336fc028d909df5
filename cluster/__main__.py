"""``python -m cluster status|logs|cancel|retry|collect SWEEP_OR_RUN``: see ``cluster.cli``."""

import sys

from cluster.cli import main

sys.exit(main())
