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
        os.kill(os.getpid(), chosen)
