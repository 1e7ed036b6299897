#!/usr/bin/env bash
# Run in the checkout before its tree is copied to a device machine, which may get no .git: records
# the revision in benchmarks/REVISION.json (gitignored), which bicycle.bench.common.revision() and so
# every benchmark record read there. Carry it along: carry ["benchmarks/REVISION.json"].
# "dirty": `git status --porcelain` is not empty, untracked files included (they are copied too);
# ignored files do not count.
set -euo pipefail
cd "$(dirname "$0")/.."
git rev-parse --verify -q HEAD > /dev/null || { echo "gpu_prepare.sh: $PWD is not a git checkout with a commit" >&2; exit 1; }
"${PYTHON:-python3}" - <<'PYEOF'
import datetime
import json
import os
import subprocess

def git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout

status = git("status", "--porcelain").splitlines()
untracked = sum(line.startswith("??") for line in status)
diffstat = git("diff", "--shortstat", "HEAD").strip() or "no changes to tracked files"
rev = {
    "commit": git("rev-parse", "HEAD").strip(),
    "dirty": bool(status),
    "dirty_rule": "git status --porcelain not empty; untracked files count, ignored ones do not",
    "diffstat": f"{diffstat}; {untracked} untracked",
    "changed": status[:40],
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
}
tmp = "benchmarks/.REVISION.json.tmp"
with open(tmp, "w") as f:
    f.write(json.dumps(rev, indent=1) + "\n")
os.replace(tmp, "benchmarks/REVISION.json")
print(f"benchmarks/REVISION.json: {rev['commit'][:12]}{' (dirty: ' + rev['diffstat'] + ')' if rev['dirty'] else ''}")
PYEOF
