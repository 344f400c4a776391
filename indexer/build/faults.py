"""Named crash points for fault-injection tests of resumable builds.

Setting ``LORIF_CRASH_AT=<point>`` (e.g. ``rows:2``, ``curvature-pass:1``, ``before-rename``)
makes the process SIGKILL itself when it reaches that point, exactly as a power cut would;
``LORIF_CRASH_SIGNAL=SIGINT`` sends Ctrl-C instead. Unset, this costs one dictionary lookup
per checkpoint.
"""

from __future__ import annotations

import os
import signal

ENV_VAR = "LORIF_CRASH_AT"
SIGNAL_VAR = "LORIF_CRASH_SIGNAL"


def crash_point(name: str) -> None:
    if os.environ.get(ENV_VAR) == name:
        chosen = signal.Signals[os.environ.get(SIGNAL_VAR, "SIGKILL")]
        if chosen == signal.SIGINT and signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
            # A process started in the background inherits SIGINT ignored (POSIX shells do
            # that without job control): act as a terminal's Ctrl-C would in the foreground.
            signal.signal(signal.SIGINT, signal.default_int_handler)
        os.kill(os.getpid(), chosen)
