"""Allow ``python -m usagestatsd``."""

from usagestatsd.cli.commands import entry_point

entry_point()
