"""A stand-in for the report endpoint, inside the e2e container: 127.0.0.1 only.

python3 receiver.py PORT DIR     every POST body is kept as DIR/<ms since epoch>.json;
                                 a POST to /delete (the deletion protocol) goes to DIR.deleted/
"""

import http.server
import os
import sys
import time

PORT, OUT = int(sys.argv[1]), sys.argv[2]
os.makedirs(OUT, exist_ok=True)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        where = OUT + ".deleted" if self.path.rstrip("/") == "/delete" else OUT
        os.makedirs(where, exist_ok=True)
        name = f"{where}/{time.time_ns() // 1_000_000}.json"
        with open(name + ".tmp", "wb") as f:
            f.write(body)
        os.rename(name + ".tmp", name)
        kind = "a deletion request" if where != OUT else "a report"
        print(f"receiver: got {kind} ({len(body)} bytes)", flush=True)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


print(f"receiver: listening on 127.0.0.1:{PORT}", flush=True)
http.server.HTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
