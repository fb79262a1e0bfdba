# A stand-in Ray install for tests: usagestatsd reads this file, never imports it.
version = "2.40.0"
