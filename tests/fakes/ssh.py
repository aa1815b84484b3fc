"""A stand-in for the `ssh` client: runs the remote command locally with sh, so local run folders act as the remote's.

Creating its `fail` flag file makes it behave like an unreachable host (exit 255).
"""

from __future__ import annotations

import stat
from pathlib import Path

SCRIPT = """#!/bin/sh
# fake ssh: the last argument is the remote command; everything before it (options, user@host) is ignored.
if [ -e "{fail_flag}" ]; then echo "ssh: connect to host: Connection refused" >&2; exit 255; fi
for last in "$@"; do :; done
echo "$@" >> "{calls}"
exec sh -c "$last"
"""


def make_fake_ssh(folder: Path) -> tuple[Path, Path, Path]:
    """(script path, fail-flag path, calls log) of a fake ssh in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    script, flag, calls = folder / "ssh", folder / "fail", folder / "calls.log"
    script.write_text(SCRIPT.format(fail_flag=flag, calls=calls))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, flag, calls
