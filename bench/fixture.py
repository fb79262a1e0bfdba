"""The outside world for the benchmark, in its own process so its CPU never counts.

`python bench/fixture.py --temp-root DIR --nodes N` serves a simulated Ray session (Ray 2.60
dashboard responses, the node-sized ones grown to N nodes) on real aiohttp Unix-socket
servers, and a report receiver on 127.0.0.1. It prints `url <receiver url>` first, then
`session <dir>` once every socket accepts connections, then `report <count> <bytes> <path>`
for each report received. The line `stats` on stdin prints what each path served; with
`--defer` the session appears only after the line `start`. Stops on SIGTERM or end of stdin.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from usagestatsd.demo import recorded, recorded_responses


def _node_id(i: int) -> str:
    # 56 hex digits like Ray's NodeID, distinct per node.
    return f"{i:08x}" + "b0c1cfbdb03d56a05c0accdd22ad113b3684af73944cd83a"


def _ip(i: int) -> str:
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def state_nodes(n: int) -> bytes:
    """`GET /api/v0/nodes?detail=false` as Ray 2.60 answers it, for a cluster of `n` nodes.

    Node 0 is the recorded head node; the others are copies of it with their own id, address,
    name, `node:<ip>` resource and labels, and without the head marker.
    """
    doc: dict[str, Any] = json.loads(recorded("dash_state_nodes.json"))
    template = doc["data"]["result"]["result"][0]
    nodes = [template]
    for i in range(1, n):
        node = copy.deepcopy(template)
        ip = _ip(i)
        node.update(node_id=_node_id(i), node_ip=ip, node_name=ip, is_head_node=False)
        resources = {
            k: v for k, v in template["resources_total"].items() if not k.startswith("node:")
        }
        node["resources_total"] = {f"node:{ip}": 1.0, **resources}
        node["labels"] = {"ray.io/node-id": node["node_id"]}
        nodes.append(node)
    outer = doc["data"]["result"]
    outer.update(total=n, num_after_truncation=n, num_filtered=n, result=nodes)
    # As Ray's dashboard writes it: json.dumps defaults, one line (about 500 bytes a node).
    return json.dumps(doc).encode()


def cluster_status(n: int) -> bytes:
    """`GET /api/cluster_status` as Ray 2.60 answers it, for a cluster of `n` nodes.

    Grown the way Ray grows it: per node, an `activeNodes` and a `nodeTypeMapping` entry
    (each node is its own type in the legacy autoscaler report), a `node:<ip>` usage pair, a
    `nodeTypes` shape (the `node:<ip>` resource makes every shape unique) and a
    `usageByNode` entry; the cluster-wide usage pairs are the sums.
    """
    doc: dict[str, Any] = json.loads(recorded("dash_report_cluster_status.json"))
    status = doc["data"]["clusterStatus"]
    report, load = status["autoscalerReport"], status["loadMetricsReport"]
    head_id = next(iter(load["usageByNode"]))
    head_usage = load["usageByNode"][head_id]
    head_shape = load["nodeTypes"][0][0]
    worker_usage = {k: v for k, v in head_usage.items() if not k.startswith("node:")}
    worker_shape = {k: v for k, v in head_shape.items() if not k.startswith("node:")}
    for i in range(1, n):
        node_id, ip = _node_id(i), _ip(i)
        report["activeNodes"]["node" + node_id.title()] = 1
        report["nodeTypeMapping"][node_id] = f"node_{node_id}"
        load["usage"][f"node:{ip}"] = [0.0, 1.0]
        load["nodeTypes"].append([{f"node:{ip}": 1.0, **worker_shape}, 1])
        load["usageByNode"][node_id] = {f"node:{ip}": [0.0, 1.0], **worker_usage}
    for name, pair in load["usage"].items():
        if not name.startswith("node:"):
            pair[1] *= n
    doc["data"]["autoscalingStatus"] = doc["data"]["autoscalingStatus"].replace(
        "Cluster status: 0 nodes", f"Cluster status: {n} nodes"
    )
    return json.dumps(doc).encode()


def responses_for(n: int) -> dict[str, dict[str, bytes]]:
    """Every recorded dashboard response, with the node-sized ones for `n` nodes."""
    responses = recorded_responses()
    responses["dash_ReportHead"]["/api/cluster_status"] = cluster_status(n)
    responses["dash_StateHead"] = {"/api/v0/nodes": state_nodes(n)}
    return responses


def _say(line: str) -> None:
    print(line, flush=True)


class Served:
    """Every socket's routes, and what was served from them (requests and bytes per path)."""

    def __init__(self, responses: dict[str, dict[str, bytes]]) -> None:
        self.responses = responses
        self.counts: dict[str, list[int]] = {}

    def app(self, socket_name: str) -> web.Application:
        routes = self.responses[socket_name]

        async def handle(request: web.Request) -> web.Response:
            body = routes.get(request.path)
            if body is None:
                return web.Response(status=404, text="not found")
            tally = self.counts.setdefault(f"{socket_name} {request.path}", [0, 0])
            tally[0] += 1
            tally[1] += len(body)
            return web.Response(body=body, content_type="application/json")

        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", handle)
        return app


async def _make_session(temp_root: Path, served: Served) -> None:
    """Bind every socket in the session's own `sockets/`, then point session_latest at it.

    In place, as Ray does: the daemon checks the path a socket was bound at, so a socket
    bound in a staging directory and renamed into place is refused (docs/security.md).
    The binds take milliseconds; a cycle that looks in between sees the session as not
    running yet and tries again at the next slot.
    """
    temp_root.mkdir(parents=True, exist_ok=True)
    now = time.time()
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(now))
    session = temp_root / f"session_{stamp}_{int((now % 1) * 1e6):06d}_{os.getpid()}"
    (session / "sockets").mkdir(parents=True)
    (session / "logs").mkdir()
    for name in served.responses:
        runner = web.AppRunner(served.app(name), access_log=None)
        await runner.setup()
        await web.UnixSite(runner, str(session / "sockets" / name)).start()
    link = temp_root / f".session_latest.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        link.unlink()
    link.symlink_to(session)
    link.rename(temp_root / "session_latest")
    _say(f"session {session}")


async def main(argv: list[str]) -> int:
    """Serve until told to stop."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--temp-root", type=Path)
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--defer", action="store_true")
    args = parser.parse_args(argv)

    count = 0

    async def receive(request: web.Request) -> web.Response:
        nonlocal count
        body = await request.read()
        count += 1
        _say(f"report {count} {len(body)} {request.path}")
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/{tail:.*}", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    _say(f"url http://127.0.0.1:{runner.addresses[0][1]}/")

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    lines: asyncio.Queue[str] = asyncio.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line)
        loop.call_soon_threadsafe(lines.put_nowait, "")

    threading.Thread(target=read_stdin, daemon=True).start()

    served = Served(responses_for(args.nodes))
    started = False

    async def stdin_lines() -> None:
        nonlocal started
        if args.temp_root and not args.defer:
            await _make_session(args.temp_root, served)
            started = True
        while True:
            line = (await lines.get()).strip()
            if not line:
                break
            if line == "start" and args.temp_root and not started:
                await _make_session(args.temp_root, served)
                started = True
            elif line == "stats":
                _say(f"stats {json.dumps(served.counts)}")
        stop.set()

    reader = asyncio.ensure_future(stdin_lines())
    await stop.wait()
    reader.cancel()
    await runner.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
