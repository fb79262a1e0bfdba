"""usagestatsd: anonymous Ray usage statistics, collected under a strict policy."""

__version__ = "1.0.0"
