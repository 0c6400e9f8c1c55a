"""`python -m okra_sidecar` runs the command line."""

import sys

from okra_sidecar.cli import main

sys.exit(main())
