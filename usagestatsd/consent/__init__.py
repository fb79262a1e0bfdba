"""Whether usage stats are reported, and the files that say so."""
