"""The command line: the only place that knows argparse and exit codes."""
