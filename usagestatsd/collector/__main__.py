"""`python -m usagestatsd.collector`."""

import sys

from usagestatsd.collector.cli import main

sys.exit(main())
