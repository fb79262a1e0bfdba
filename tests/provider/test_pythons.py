"""provider.py on every Python a Ray with usage stats runs on (3.7 and later), without Ray.

Each interpreter found under pyenv's versions directory imports the file as a script would,
serves one `Usage` and one failure on a real Unix socket, and runs `provider.py` itself
(which, without Ray, must exit 2 naming the missing import). A version not installed is
skipped with the reason, never silently.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

PROVIDER_DIR = Path(__file__).parents[2] / "usagestatsd"
MINORS = ("3.7", "3.8", "3.9", "3.10", "3.11", "3.12", "3.13")

# Run by the interpreter under test: standard library only, and 3.7 syntax.
SELF_CHECK = r"""
import http.client, json, socket, sys, tempfile, os
sys.path.insert(0, sys.argv[1])
import provider

class Unix(http.client.HTTPConnection):
    def __init__(self, path):
        http.client.HTTPConnection.__init__(self, "localhost", timeout=5)
        self.unix_path = path
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(5)
        self.sock.connect(self.unix_path)

def get(path):
    conn = Unix(path)
    conn.request("GET", provider.USAGE_PATH)
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read())

def failing():
    raise provider.UsageUnavailable("the GCS said no")

usage = provider.Usage(cluster_id="ab" * 28, library_usages=["core"], total_num_nodes=1)
with tempfile.TemporaryDirectory() as tmp:
    out = {}
    for name, reader in (("ok", lambda: usage), ("fail", failing)):
        path = os.path.join(tmp, name)
        with provider.ProviderServer(path, reader):
            out[name] = get(path)
print(json.dumps(out))
"""


def pythons() -> list[object]:
    """One pytest param per minor version: its interpreter, or a skip saying why not."""
    root = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    if shutil.which("pyenv"):
        done = subprocess.run(["pyenv", "root"], capture_output=True, text=True, check=False)
        root = done.stdout.strip() or root
    installed = sorted(Path(root, "versions").glob("3.*/bin/python"))
    params: list[object] = []
    for minor in MINORS:
        found = [p for p in installed if p.parts[-3].startswith(f"{minor}.")]
        marks: tuple[pytest.MarkDecorator, ...] = ()
        if not found:
            reason = f"NO PYTHON {minor} under {root}/versions: provider.py not checked on it"
            marks = (pytest.mark.skip(reason=reason),)
        params.append(pytest.param(str(found[-1]) if found else "", id=minor, marks=marks))
    return params


@pytest.mark.parametrize("python", pythons())
def test_provider_serves_on_this_python(python: str) -> None:
    """Imports, answers 200 with the usage and 503 with the reader's own error line."""
    done = subprocess.run(
        [python, "-I", "-c", SELF_CHECK, str(PROVIDER_DIR)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    status, body = out["ok"]
    assert status == 200 and body["cluster_id"] == "ab" * 28
    assert body["library_usages"] == ["core"] and body["total_num_nodes"] == 1
    assert out["fail"] == [503, {"protocol_version": 1, "error": "the GCS said no"}]


@pytest.mark.parametrize("python", pythons())
def test_provider_without_ray_exits_2_saying_so(python: str) -> None:
    """Run as the unit runs it (`python -I provider.py`): no Ray there, so exit status 2."""
    with tempfile.TemporaryDirectory() as root:
        done = subprocess.run(
            [python, "-I", str(PROVIDER_DIR / "provider.py"), "--temp-root", root],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 2, done.stderr
    assert "provider.ray.missing" in done.stderr
