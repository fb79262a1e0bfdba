"""A stand-in for Ray's dashboard process: its command line, and its HTTP API on TCP.

Run as `python tests/support/fakes/ray/dashboard/dashboard.py --host=H --port=P --session-dir=S
--data=DIR [--no-listen]`, the way Ray runs its own dashboard.py (before Ray 2.47 there
are no dash_* Unix sockets; the API is on this port only). It answers GET requests with
the recorded replies in DIR (tests/data/ray-<version>/). With --no-listen it only sleeps:
a dashboard whose port someone else holds. Standard library only.
"""

from __future__ import annotations

import argparse
import http.server
import sys
import time
from pathlib import Path

FILES = {
    "/api/v0/cluster_metadata": "dash_report_cluster_metadata.json",
    "/api/cluster_status": "dash_report_cluster_status.json",
    "/api/jobs/": "dash_job_list.json",
}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=8265)
    parser.add_argument("--session-dir", required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--no-listen", action="store_true")
    args = parser.parse_args()
    if args.no_listen:
        print("ready", flush=True)
        time.sleep(3600)
        return 0
    data: Path = args.data

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            name = FILES.get(self.path)
            body = (data / name).read_bytes() if name else b"404: Not Found"
            self.send_response(200 if name else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((args.host, args.port), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
