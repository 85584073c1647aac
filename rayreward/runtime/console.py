"""A quiet console: rayreward's own lines on the terminal, everything else in a log file.

Inside ``Console(log_path)`` the process's stdout and stderr (file descriptors 1 and 2,
so Ray's C++ core, forwarded worker output, DeepSpeed, transformers, tqdm bars and
Python warnings alike) are written to the log file, and ``Console.say`` writes to the
terminal (and to the log, so that it reads in order). Progress events from the
training workers (``rayreward.run.callbacks.Progress`` with a sink) are shown as a
live bar on a terminal and as periodic lines otherwise. With ``verbose`` nothing is
redirected: the terminal shows everything, as Ray prints it.
"""

from __future__ import annotations

import os
import sys
import threading


def add_console_arguments(parser) -> None:
    """``-v/--verbose``: show Ray's, DeepSpeed's and transformers' output on the terminal."""
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show the output of Ray, DeepSpeed and transformers here instead of only in the log file")


def log_path_for(run_dir: str, name: str) -> str:
    """The log file of a run or sweep: ``<run_dir>/rayreward.log``, or a file in the
    temporary folder when the run's folder is on an object store (the log stays here)."""
    from rayreward.runtime import storage

    if storage.is_uri(run_dir):
        import tempfile

        return os.path.join(tempfile.gettempdir(), f"rayreward-{name}.log")
    return os.path.join(run_dir, "rayreward.log")


class Console:
    """The terminal for one command; use as a context manager.

    Args:
        log_path: the log file for everything that is not rayreward's own line
            (appended to; its folder is created). None: nothing is redirected. A URI
            (``s3://bucket/out/rayreward.log``): written to a local temporary file while
            the command runs and copied there when it ends (object stores take whole files).
        verbose: show everything on the terminal (nothing is redirected).

    Example:
        >>> with Console("runs/r1/rayreward.log") as console:
        ...     console.say("[rayreward] starting")
    """

    def __init__(self, log_path: str | None, verbose: bool = False):
        from rayreward.runtime import storage

        self.log_path = None if verbose else log_path
        self.log_uri = None
        if self.log_path and storage.is_uri(self.log_path):
            import tempfile

            self.log_uri = self.log_path
            self.log_path = os.path.join(tempfile.gettempdir(), f"rayreward-{os.getpid()}-{os.path.basename(self.log_uri)}")
        self._out = sys.stdout
        self._log = None
        self._saved: tuple[int, int] | None = None
        self._bar = False
        self._lock = threading.Lock()

    @property
    def redirected(self) -> bool:
        return self._saved is not None

    def __enter__(self) -> "Console":
        if self.log_path:
            os.makedirs(os.path.dirname(os.path.abspath(self.log_path)), exist_ok=True)
            self._log = open(self.log_path, "a", encoding="utf-8", buffering=1)
            sys.stdout.flush()
            sys.stderr.flush()
            self._saved = (os.dup(1), os.dup(2))
            self._out = os.fdopen(os.dup(self._saved[0]), "w", buffering=1, encoding="utf-8", errors="replace")
            os.dup2(self._log.fileno(), 1)
            os.dup2(self._log.fileno(), 2)
            where = self.log_path if self.log_uri is None else f"{self.log_uri} (when the command ends; until then {self.log_path})"
            self.say(f"[rayreward] log of Ray, DeepSpeed and transformers: {where} (-v shows it here)")
        return self

    def __exit__(self, kind, exc, tb) -> None:
        self._end_bar()
        if self._saved is None:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        for fd in self._saved:
            os.close(fd)
        self._saved = None
        self._log.close()
        log = self._upload_log()
        if kind is not None and not issubclass(kind, KeyboardInterrupt):
            self._out.write(f"[rayreward] stopped; the full log is {log}\n")
        self._out.close()
        self._out = sys.stdout

    def _upload_log(self) -> str:
        """Copies a URI's log to its place; returns where the log now is."""
        if self.log_uri is None:
            return self.log_path
        from rayreward.runtime import storage

        try:
            with open(self.log_path, "rb") as f:
                storage.write_bytes(self.log_uri, f.read())
        except OSError as exc:
            self._out.write(f"[rayreward] could not write the log to {self.log_uri} ({exc}); it stays in {self.log_path}\n")
            return self.log_path
        os.remove(self.log_path)
        return self.log_uri

    def say(self, line: str) -> None:
        """Writes one of rayreward's lines to the terminal (and to the log)."""
        with self._lock:
            self._end_bar()
            self._out.write(line + "\n")
            self._out.flush()
            if self._log is not None and self._saved is not None:
                self._log.write(line + "\n")

    def progress(self, event: dict) -> None:
        """Shows a progress event: a live bar on a terminal for training steps, else a line."""
        if event.get("kind") != "train" or not self._out.isatty():
            self.say(event["line"])
            return
        done, total = event.get("step", 0), max(event.get("total", 0), 1)
        width = 24
        filled = min(width, int(width * done / total))
        detail = event["line"].split(" | ", 1)[-1] if " | " in event["line"] else ""
        with self._lock:
            self._out.write(f"\r\033[K[rayreward] [{'#' * filled}{'.' * (width - filled)}] {done}/{total} | {detail}")
            self._out.flush()
            self._bar = True
            if self._log is not None and self._saved is not None:
                self._log.write(event["line"] + "\n")

    def follow(self, queue) -> "_Follower":
        """A context manager that shows the events put into ``queue`` (a ``ray.util.queue.Queue``) until it exits."""
        return _Follower(self, queue)

    def _end_bar(self) -> None:
        if self._bar:
            self._out.write("\n")
            self._bar = False


class _Follower:
    def __init__(self, console: Console, queue):
        self.console, self.queue = console, queue
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rayreward-progress", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        # Polls rather than blocks on get(): a blocking get's timeout comes back wrapped
        # in a Ray task error, and the queue's actor goes away with Ray on an interrupt.
        while True:
            stopping = self._stop.is_set()
            try:
                pending = self.queue.size()
                events = self.queue.get_nowait_batch(pending) if pending else []
            except Exception as exc:  # noqa: BLE001 - the queue is gone (Ray shut down)
                print(f"[rayreward] progress display stopped: {exc!r}", file=sys.stderr)  # to the log
                return
            for event in events:
                self.console.progress(event)
            if stopping:
                return
            self._stop.wait(0.5)
