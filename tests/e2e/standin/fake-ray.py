#!/usr/bin/python3
"""What the stand-in talks to: a Ray-like temp root with an HTTP server on a Unix socket in
<session>/sockets/ (created with Ray's permissions, as whoever runs this), and an HTTP
endpoint on 127.0.0.1:18080 and [::1]:18080."""

import http.server
import os
import socket
import socketserver
import threading
from typing import Any


class Handler(http.server.BaseHTTPRequestHandler):
    """Answers 200 to everything."""

    def do_GET(self) -> None:
        """Answer every GET with a short 200."""
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        """Keep the journal quiet."""


class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """A threaded HTTP server on a Unix socket."""

    def get_request(self) -> tuple[Any, Any]:
        """A Unix peer has no address; give socketserver a placeholder."""
        request, _ = super().get_request()
        return request, ("unix", 0)


class Server6(http.server.ThreadingHTTPServer):
    """The same on ::1."""

    address_family = socket.AF_INET6


def main() -> None:
    """Create the temp root and serve until killed."""
    os.umask(0o022)
    session = "/tmp/ray/session_2026-01-01_00-00-00_000000_1"
    os.makedirs(f"{session}/sockets", exist_ok=True)
    for directory in ("/tmp/ray", session, f"{session}/sockets"):
        os.chmod(directory, 0o777)  # as Ray does
    if not os.path.islink("/tmp/ray/session_latest"):
        os.symlink(session, "/tmp/ray/session_latest")
    servers = [
        UnixServer(f"{session}/sockets/dash.sock", Handler),  # srwxr-xr-x, like Ray's
        http.server.ThreadingHTTPServer(("127.0.0.1", 18080), Handler),
        Server6(("::1", 18080), Handler),
    ]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("fake-ray ready", flush=True)
    threading.Event().wait()


main()
