"""usagestatsd-collector: the endpoint an enterprise runs for its own heads.

It ingests schema-0.1 reports (from usagestatsd and from Ray's own reporter), keeps them in
SQLite or PostgreSQL, honours `usagestatsd-deletion/1`, and shows the fleet on a page.
The head-node daemon never imports this package; this package may import the daemon's pure
modules (the report schema, the privacy guard) so the same checks run on arrival.
"""
