"""`python -m ingest`: the command line (ingest.cli)."""

import sys

from .cli import main

sys.exit(main())
