"""What runs inside the journey's container, with only the standard library."""
