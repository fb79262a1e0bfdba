"""provider tests."""
