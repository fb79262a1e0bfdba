"""Keep every distinct content of the current session's usage_stats.json, as written.

    python3 watch.py TEMP_ROOT DIR    each new content is saved as DIR/<ms since epoch>.json

Ray's reporter writes the file right after each POST (to the intake, when routed), and
usagestatsd puts back its own copy a second later: polling every 20 ms keeps Ray's.
"""

import hashlib
import os
import sys
import time

ROOT, OUT = sys.argv[1], sys.argv[2]
os.makedirs(OUT, exist_ok=True)
seen: set[str] = set()
while True:
    try:
        with open(os.path.join(ROOT, "session_latest", "usage_stats.json"), "rb") as f:
            data = f.read()
    except OSError:
        data = b""
    digest = hashlib.sha256(data).hexdigest()
    if data and digest not in seen:
        seen.add(digest)
        with open(f"{OUT}/{time.time_ns() // 1_000_000}.json", "wb") as f:
            f.write(data)
    time.sleep(0.02)
