"""Episode events: one JSON line per finished episode, appended by `policyrt sim serve --events PATH`
as each episode ends, followed by another process while the server runs.

The closed-loop harness (sim/processes.py) reads them for progress and for accounting, instead of
parsing the server's log lines. A line is `{"event": "episode", ...}` with the fields of the sim
server's EpisodeStats (index, episode_return, length, terminated, truncated, slot, seed), written
whole and flushed, so a reader sees complete lines or none (a torn last line waits for its end).
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable
from pathlib import Path

EPISODE = "episode"
POLL_S = 0.05  # how often the follower looks for new lines: progress, not control, rides on it


class EpisodeEventWriter:
    """The sim server's `on_episode` callback: appends one line per finished episode."""

    def __init__(self, path: str | Path):
        self._file = open(path, "a", encoding="utf-8")  # closed by close()

    def __call__(self, stats) -> None:
        self._file.write(json.dumps({"event": EPISODE, **dataclasses.asdict(stats)}) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> EpisodeEventWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class EpisodeEventFollower:
    """Follows an events file that another process appends to, on a thread: `on_event(event)` for
    each complete line, in order. `stop()` reads what is left and returns every event seen."""

    def __init__(self, path: str | Path, on_event: Callable[[dict], None] | None = None):
        self.path, self.on_event = Path(path), on_event
        self.events: list[dict] = []
        self._offset, self._partial = 0, ""
        self._stopped = threading.Event()
        self._error: str | None = None
        self._thread = threading.Thread(target=self._follow, name="episode-events", daemon=True)

    def start(self) -> EpisodeEventFollower:
        self._thread.start()
        return self

    def stop(self) -> list[dict]:
        """Stop following and read the rest; raises RuntimeError if a line was not an event."""
        self._stopped.set()
        self._thread.join()
        self._read()
        if self._error:
            raise RuntimeError(f"{self.path}: {self._error}")
        return self.events

    def _follow(self) -> None:
        while not self._stopped.wait(POLL_S):
            self._read()

    def _read(self) -> None:
        if self._error or not self.path.exists():  # the server has not opened it yet
            return
        with open(self.path, encoding="utf-8") as f:
            f.seek(self._offset)
            chunk = f.read()
            self._offset = f.tell()
        *lines, self._partial = (self._partial + chunk).split("\n")
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            if not isinstance(event, dict) or event.get("event") != EPISODE:
                self._error = f"not an episode event: {line[:200]!r}"
                return
            self.events.append(event)
            if self.on_event is not None:
                self.on_event(event)
