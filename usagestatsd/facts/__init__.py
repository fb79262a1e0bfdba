"""Everything behind the trust boundary: sessions, peers, sources, Ray's head."""
