"""`python -m usagestatsd.collector`."""

import sys

from usagestatsd.collector.cli import main

if __name__ == "__main__":  # not when a validation worker process imports it
    sys.exit(main())
