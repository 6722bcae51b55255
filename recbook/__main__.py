"""`python -m recbook` runs the command line."""
import sys

from recbook.cli import main

sys.exit(main())
