"""The container tests (make e2e, make e2e-journey).

journey/compare.py is imported by the Ray tests too: its one comparison with Ray's report.
"""
