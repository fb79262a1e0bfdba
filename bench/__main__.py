"""python -m bench: run every figure, print the table, write docs/performance.md."""

import sys

from bench.main import main

sys.exit(main())
