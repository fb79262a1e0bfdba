"""One report, start to end: gather, decide, build, guard, send, keep."""
