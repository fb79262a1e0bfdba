"""The command line of a Python child of the daemon or the CLI, isolated from where it runs.

`python -m module` puts the current directory first on the child's import path, so a root
`usagestatsd preview` run in a world-writable directory would import whatever another
user planted there (`yaml.py`, `json.py`, a `usagestatsd/`) and run it as root. The child is
started with `-I` instead (no current or script directory, no user site, no PYTHON*
variables) and given, explicitly, the one directory its parent imported `usagestatsd`
from; everything else comes from the interpreter's own site-packages, as in the parent.
"""

from __future__ import annotations

import os
import sys

import usagestatsd

# Runs in the child before anything of ours: put the parent's package root first, then run
# the module as `-m` would (as __main__, with sys.argv[0] its file and the arguments after).
_BOOTSTRAP = (
    "import runpy, sys; "
    "sys.path.insert(0, sys.argv[1]); module = sys.argv[2]; del sys.argv[1:3]; "
    "runpy.run_module(module, run_name='__main__', alter_sys=True)"
)


def package_root() -> str:
    """The directory the running `usagestatsd` package was imported from."""
    return os.path.dirname(os.path.dirname(os.path.abspath(usagestatsd.__file__)))


def python_module(module: str, *args: str) -> list[str]:
    """argv that runs `module` (like `python -m module args`) in an isolated interpreter."""
    return [sys.executable, "-I", "-c", _BOOTSTRAP, package_root(), module, *args]
