#!/usr/bin/env bash
# The packaged settings file and usagestatsd.toml(5) keep up with the daemon's settings:
#   - packaging/usagestatsd.toml is accepted as it is, and sets consent_file to
#     /etc/usagestatsd/consent.json;
#   - with every commented example uncommented it is still accepted, and it then shows every
#     key the daemon accepts in a settings file (so none is undocumented there);
#   - docs/usagestatsd.toml.5 names every key.
# Runs the settings parser from the checkout (standard library only). No root needed.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
PYTHONPATH=$top exec python3 - "$top/packaging/usagestatsd.toml" "$top/docs/usagestatsd.toml.5" <<'PY'
import re
import sys
import tomllib
from pathlib import Path

from usagestatsd.config import settings as S
from usagestatsd.config.declare import flatten

packaged, manpage = Path(sys.argv[1]), Path(sys.argv[2])
failures = []

def check(ok, what):
    print(f"check-settings-file: {'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        failures.append(what)

env = {"HOME": "/root"}
try:
    got = S.load_settings(env, {}, packaged, euid=0)
    check(str(got.consent_file) == "/etc/usagestatsd/consent.json",
          f"{packaged.name} as packaged: accepted, consent_file = {got.consent_file}")
except S.SettingsError as exc:
    check(False, f"{packaged.name} as packaged: {exc}")

text = packaged.read_text()
uncommented = re.sub(r"(?m)^#([a-z\[])", r"\1", text)
tmp = Path("/tmp") / f"usagestatsd-uncommented-{__import__('os').getpid()}.toml"
tmp.write_text(uncommented)
try:
    S.load_settings(env, {}, tmp, euid=0)
    check(True, f"{packaged.name} with every example uncommented: accepted")
except S.SettingsError as exc:
    check(False, f"{packaged.name} with every example uncommented: {exc}")
finally:
    tmp.unlink()
# Every key a settings file may hold, from the declarations; a table that is one setting's
# value (extra_tags) is one key.
file_keys = frozenset(d.file_key for d in S.DECLARED if d.file_key)
whole = frozenset(d.file_key for d in S.DECLARED if d.file_key and isinstance(d.default, dict))
shown = set(flatten(tomllib.loads(uncommented), whole))
missing = sorted(file_keys - shown)
check(not missing, f"{packaged.name} shows every setting" + (f"; missing: {missing}" if missing else ""))

man = manpage.read_text().replace("\\-", "-")
missing = []
for key in sorted(file_keys):
    *table, leaf = key.split(".")
    words = [leaf] + [f"[{table[0]}]"] if table else [leaf]
    if key in ("endpoints",):
        words = ["[[endpoints]]"]
    if key == "extra_tags":
        words = ["[extra_tags]"]
    if not all(w in man for w in words):
        missing.append(key)
check(not missing, f"{manpage.name} names every setting" + (f"; missing: {missing}" if missing else ""))
sys.exit(1 if failures else 0)
PY
