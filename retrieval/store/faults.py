"""Kill points for crash tests: nothing happens unless the TUSOU_KILL_AT variable names one.

`TUSOU_KILL_AT=name:n` SIGKILLs this process the n-th time it reaches `kill_point(name)`,
so a test can stop a build at an exact step (a file written but not yet renamed, say)
rather than at whatever moment a timer happens to hit.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

_reached: Counter[str] = Counter()


def kill_point(name: str) -> None:
    target = os.environ.get("TUSOU_KILL_AT")
    if not target:
        return
    where, _, nth = target.rpartition(":")
    if where == name:
        _reached[name] += 1
        if _reached[name] == int(nth):
            os.kill(os.getpid(), signal.SIGKILL)
