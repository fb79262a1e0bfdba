"""Read the autoscaler's cluster config YAML without letting it stall the daemon.

The file lives in Ray's user's home, where any Ray job can write (1 MiB
of hostile YAML cost 26 s of CPU on the event loop every cycle). So it is:

- capped small (`MAX_CONFIG_BYTES`; real configs are a few KB, setup commands included);
- parsed in a child process (`usagestatsd.facts.clusterconfig` in an isolated interpreter:
  base/childproc.py), off the event loop,
  under a CPU and memory rlimit and a wall-clock deadline, and killed the moment the daemon
  stops (the child has nothing to finish);
- parsed once per version of the file: the result (facts or problem) is kept under the
  file's (device, inode, size, mtime) and reused while those are unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import stat
import sys
from dataclasses import asdict
from pathlib import Path

from usagestatsd.base.childproc import python_module
from usagestatsd.base.files import read_regular_file
from usagestatsd.contract.report import ClusterConfigFacts
from usagestatsd.facts.sources import SourceError, parse_cluster_config

MAX_CONFIG_BYTES = 256 << 10
PARSE_DEADLINE_S = 3.0
_CHILD_CPU_S = 2
_CHILD_MEMORY = 512 << 20

FileKey = tuple[int, int, int, int]
_cache: dict[Path, tuple[FileKey, ClusterConfigFacts | str]] = {}


def _key(path: Path) -> FileKey | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


async def load_cluster_config(path: Path) -> ClusterConfigFacts:
    """The facts in the YAML file at `path`, parsed at most once per version of the file.

    Raises FileNotFoundError when absent, SourceError (naming the file) when unusable.
    """
    source = f"cluster config file {path}"
    key = _key(path)
    cached = _cache.get(path)
    if key is not None and cached is not None and cached[0] == key:
        return _unpack(source, cached[1])
    try:
        raw = read_regular_file(path, MAX_CONFIG_BYTES)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise SourceError(source, reason) from None
    result = await _parse_in_child(raw)
    if key is not None:
        _cache.clear()  # one file is read: keep one entry
        _cache[path] = (key, result)
    return _unpack(source, result)


def _unpack(source: str, result: ClusterConfigFacts | str) -> ClusterConfigFacts:
    if isinstance(result, str):
        raise SourceError(source, result)
    return result


async def _parse_in_child(raw: bytes) -> ClusterConfigFacts | str:
    """Facts, or the reason they could not be had (a str)."""
    proc = await asyncio.create_subprocess_exec(
        *python_module("usagestatsd.facts.clusterconfig"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(raw), PARSE_DEADLINE_S)
    except TimeoutError:
        return f"not parsed within {PARSE_DEADLINE_S:g}s (too costly to read)"
    finally:
        # Also when the daemon stops mid-parse (cancelled): the child is not waited for.
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        return f"not parsed (the parser stopped with status {proc.returncode}: too costly?)"
    return _facts_from(out)


def _facts_from(out: bytes) -> ClusterConfigFacts | str:
    try:
        doc = json.loads(out)
        if "problem" in doc:
            return str(doc["problem"])[:200]
        workers = doc["worker_node_instance_types"]
        return ClusterConfigFacts(
            cloud_provider=doc["cloud_provider"],
            min_workers=doc["min_workers"],
            max_workers=doc["max_workers"],
            head_node_instance_type=doc["head_node_instance_type"],
            worker_node_instance_types=None if workers is None else tuple(workers),
        )
    except (ValueError, KeyError, TypeError):
        return "not parsed (the parser's answer was unreadable)"


def _child() -> int:
    """In the child: YAML on stdin, facts (or a problem) as JSON on stdout."""
    try:
        resource.setrlimit(resource.RLIMIT_CPU, (_CHILD_CPU_S, _CHILD_CPU_S))
        resource.setrlimit(resource.RLIMIT_AS, (_CHILD_MEMORY, _CHILD_MEMORY))
    except OSError:
        # A system call filter may refuse setrlimit: the parent's deadline (and kill) and
        # the unit's own memory limit still bound this process.
        pass
    raw = sys.stdin.buffer.read(MAX_CONFIG_BYTES + 1)
    try:
        import yaml

        facts = parse_cluster_config(yaml.safe_load(raw))
        out: dict[str, object] = asdict(facts)
    except SourceError as exc:
        out = {"problem": exc.problem}
    except MemoryError:
        out = {"problem": "not parsed (too costly to read)"}
    except Exception as exc:  # yaml.YAMLError and friends: the file is garbage
        out = {"problem": f"not valid YAML ({type(exc).__name__})"}
    sys.stdout.write(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(_child())
