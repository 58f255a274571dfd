"""`python -m app.cli`: the `nessa` command without the console script."""
import sys

from app.cli import main

sys.exit(main())
