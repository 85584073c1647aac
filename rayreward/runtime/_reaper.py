"""Watchdog of an embedded Ray: stops its session's processes once the driver is gone.

Run as ``python -m rayreward.runtime._reaper DRIVER_PID SESSION_DIR`` by
``ray_session``. Ray ties its GCS server and raylet to the driver, but not the dashboard
and runtime-env agents (Ray 2.60: they outlive a SIGKILLed driver), and a worker can be
left behind; this process polls the driver and, when it has gone, stops every process
of that one session (``stop_session_processes``), nothing else.
"""

from __future__ import annotations

import sys
import time

POLL_S = 0.5
# Let Ray's own teardown go first: most processes exit by themselves within a second.
SETTLE_S = 2.0


def main(driver_pid: int, session_dir: str) -> None:
    import psutil

    from rayreward.runtime.ray_session import stop_session_processes

    try:
        driver = psutil.Process(driver_pid)
        while driver.is_running() and driver.status() != psutil.STATUS_ZOMBIE:
            time.sleep(POLL_S)
    except psutil.NoSuchProcess:
        pass
    time.sleep(SETTLE_S)
    stop_session_processes(session_dir)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
