"""Progress of long work: a bar on a terminal, a line now and then in a log.

On a terminal the bar redraws in place (carriage return); when the stream is a file or
a pipe (CI logs, `nohup`, a job scheduler) it prints one line per tenth of the work, or
every `every_seconds`, whichever comes first, and a final line.
"""

import sys
import time


class Progress:
    """`update(done, **counts)` after each unit of work; `counts` are shown beside it
    ("12/40 images, 1 failed, 3.2/s").

    Args:
        total: the amount of work, or None when unknown.
        unit: what is counted ("image", "shard").
        stream: where to write (default stderr, so stdout can carry results).
        every_seconds: at most this long between lines when not on a terminal.
    """

    def __init__(self, total, unit="item", stream=None, every_seconds=30.0, width=30):
        self.total = total
        self.unit = unit
        self.stream = stream or sys.stderr
        self.every_seconds = float(every_seconds)
        self.width = width
        self.start = time.monotonic()
        self._last_time = self.start
        self._last_tenth = -1
        self._closed = False
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())

    def _text(self, done, counts):
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = f"{done / elapsed:.1f}/s"
        extra = "".join(f", {value} {name}" for name, value in counts.items())
        if self.total:
            filled = int(self.width * min(done, self.total) / self.total)
            bar = f"[{'#' * filled}{'.' * (self.width - filled)}] " if self.interactive else ""
            return f"{bar}{done}/{self.total} {self.unit}s{extra}, {rate}"
        return f"{done} {self.unit}s{extra}, {rate}"

    def update(self, done, **counts):
        if self._closed:
            return
        finished = self.total is not None and done >= self.total
        now = time.monotonic()
        if self.interactive:
            self.stream.write("\r" + self._text(done, counts) + ("\n" if finished else ""))
        else:
            tenth = int(10 * done / self.total) if self.total else -1
            if finished or tenth > self._last_tenth or now - self._last_time >= self.every_seconds:
                self.stream.write(self._text(done, counts) + "\n")
                self._last_tenth, self._last_time = tenth, now
        self.stream.flush()
        self._closed = finished

    def close(self, done, **counts):
        """The final line, for work whose total was not known."""
        if not self._closed:
            if self.interactive:
                self.stream.write("\r" + self._text(done, counts) + "\n")
            else:
                self.stream.write(self._text(done, counts) + "\n")
            self.stream.flush()
            self._closed = True
