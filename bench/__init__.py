"""`make bench`: how light usagestatsd is, each figure beside its reference in the same run.

The package is laid out by figure: each module measures one figure and returns plain data
(`bench.results`), `bench.render` turns the data into docs/performance.md, and
`bench.__main__` runs them in order. Processes it starts (the daemon, the simulated
cluster in `bench/fixture.py`, a real Ray head from `tests/ray/harness.py`) are stopped by
pid, never by name.
"""
