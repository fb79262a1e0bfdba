"""Allow ``python -m usagestatsd``."""

from usagestatsd.cli import entry_point

entry_point()
