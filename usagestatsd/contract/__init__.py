"""The report declared once, its guard, and Ray's tag names: both ends use it."""
