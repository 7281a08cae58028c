"""Per-output claims, so that several runs or nodes on one output folder never do one input at the same time.

Before a run works on an input it creates `<out>/_claims/<output name>.json` (an exclusive create: O_EXCL
locally, a conditional PUT on S3) holding its host, pid, time and a random token, rewrites it every `refresh_s`
while it works, and removes it when the output is written. A claim is stale, and may be taken over, when it was
not refreshed for `stale_after_s` or when its pid is dead on this host: a crashed run never blocks an input for
long. Temporary files of an output are removed only by the run that holds its claim.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from typing import Any

from glipkit.engine.output_dir import OutputDir

CLAIMS_DIR = "_claims"
REFRESH_S = 30.0
STALE_AFTER_S = 600.0


def claim_name(output_name: str) -> str:
    return f"{CLAIMS_DIR}/{output_name}.json"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Claims:
    """The claims this run holds in one output folder; a context manager that refreshes them in a thread and
    releases them all on exit."""

    def __init__(self, out: OutputDir, command: str, *, refresh_s: float = REFRESH_S,
                 stale_after_s: float = STALE_AFTER_S):
        self.out = out
        self.command = command
        self.refresh_s = refresh_s
        self.stale_after_s = stale_after_s
        self.host = socket.gethostname()
        self.held: dict[str, str] = {}  # output name -> token
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _content(self, token: str) -> dict[str, Any]:
        return {"command": self.command, "host": self.host, "pid": os.getpid(), "time": time.time(), "token": token}

    def holder(self, output_name: str) -> dict[str, Any] | None:
        """The claim on an output, or None when there is none."""
        try:
            return self.out.read_json(claim_name(output_name), "claim")
        except FileNotFoundError:
            return None
        except ValueError:  # being written right now, or left half-written by a run killed while creating it
            try:
                return {"time": self.out.modified(claim_name(output_name))}
            except (OSError, NotImplementedError):
                return {"time": time.time()}

    def is_stale(self, claim: dict[str, Any]) -> bool:
        if time.time() - float(claim.get("time", 0)) > self.stale_after_s:
            return True
        if claim.get("host") == self.host and isinstance(claim.get("pid"), int):
            if claim["pid"] == os.getpid():
                return claim.get("token") not in self.held.values()
            return not _pid_alive(claim["pid"])
        return False

    def acquire(self, output_name: str) -> dict[str, Any] | None:
        """Claim an output: None when this run now holds it, else the live claim of the run that does."""
        token = uuid.uuid4().hex
        for _ in range(3):
            if self.out.create_exclusive(claim_name(output_name), self._content(token)):
                with self._lock:
                    self.held[output_name] = token
                return None
            current = self.holder(output_name)
            if current is None:
                continue  # released meanwhile
            if not self.is_stale(current):
                return current
            # A crashed run's claim: removed only if it is still that claim, so two runs taking it over at once
            # cannot both remove it (one would remove the other's fresh claim) and both label the input.
            self.out.remove_if_token(claim_name(output_name), current.get("token"))
        return self.holder(output_name) or {"time": time.time()}

    def remove_stale(self, output_names: list[str]) -> None:
        """Remove the stale claims left on these outputs (e.g. by a run killed after writing one); one listing."""
        present = self.out.names(CLAIMS_DIR)
        for name in output_names:
            if claim_name(name).rsplit("/", 1)[-1] in present:
                claim = self.holder(name)
                if claim is not None and self.is_stale(claim):
                    self.out.remove_if_token(claim_name(name), claim.get("token"))

    def release(self, output_name: str) -> None:
        with self._lock:  # never while a refresh rewrites it
            token = self.held.pop(output_name, None)
            if token is not None and (self.holder(output_name) or {}).get("token") == token:
                self.out.remove(claim_name(output_name))

    def refresh(self) -> None:
        with self._lock:
            for name, token in self.held.items():
                try:
                    self.out.write_json(claim_name(name), self._content(token))
                except OSError:
                    pass  # refreshed next time; a claim goes stale only after stale_after_s

    def _loop(self) -> None:
        while not self._stop.wait(self.refresh_s):
            self.refresh()

    def __enter__(self) -> "Claims":
        self._thread = threading.Thread(target=self._loop, name="glipkit-claims", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for name in list(self.held):
            self.release(name)
