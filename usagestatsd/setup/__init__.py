"""`usagestatsd setup`: what a head node is missing and what fixes it."""
