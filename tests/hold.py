"""Run the ``rrhf`` command, held at a known point so that a test can kill it there.

    python tests/hold.py MODULE:NAME N MARKER -- ARGS...

wraps the function ``NAME`` as ``MODULE`` calls it so that after its ``N``-th call returns the process writes the
file ``MARKER`` and waits (it is then killed by the test), and runs ``rrhf ARGS``. The product runs for real up to
that point; the test kills it where it means to (after the second finished shard, after the second checkpoint)
on a fast machine and on a slow one alike, instead of racing a timer.
"""

from __future__ import annotations

import functools
import importlib
import sys
import time
from pathlib import Path
from typing import Any


def hold_after(target: str, calls: int, marker: Path) -> None:
    module_name, _, name = target.partition(":")
    module = importlib.import_module(module_name)
    original = getattr(module, name)
    seen = 0

    @functools.wraps(original)
    def held(*args: Any, **kwargs: Any) -> Any:
        nonlocal seen
        result = original(*args, **kwargs)
        seen += 1
        if seen == calls:
            marker.write_text(f"held after call {seen} of {target}\n")
            while True:
                time.sleep(60)
        return result

    setattr(module, name, held)


if __name__ == "__main__":
    target, calls, marker, sep, *args = sys.argv[1:]
    assert sep == "--", "usage: hold.py MODULE:NAME N MARKER -- ARGS..."
    hold_after(target, int(calls), Path(marker))
    from rrhf_cli import main

    sys.exit(main(args))
