"""process tests."""
