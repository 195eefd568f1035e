"""`python -m flax_distil` runs the command line."""

import sys

from flax_distil.cli import main

sys.exit(main())
