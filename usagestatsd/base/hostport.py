"""`host:port` as operators write it and URLs need it: an IPv6 host in brackets.

The one formatter; settings_values.split_host_port reads the same form back.
"""

from __future__ import annotations


def host_port(host: str, port: int | str) -> str:
    """`127.0.0.1:8265`, `[::1]:18922`: never the ambiguous `::1:18922`."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
