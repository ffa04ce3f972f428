"""The Node.js receiver the HTTP benchmarks post to (bench/node/receiver.js), and CPU accounting.

Node's HTTP server answers a small POST in a few microseconds, so what a benchmark
measures is the sender, not the receiver; :class:`CpuClock` reports the receiver's CPU
(and the relay's, and PostgreSQL's) next to each figure so that can be checked.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

SCRIPT = Path(__file__).parent / "node" / "receiver.js"
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of ``pids`` and their children still running, from /proc."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def children(pid: int) -> list[int]:
    """``pid`` and every process below it (PostgreSQL's backends, for instance)."""
    found = [pid]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                found += children(int(entry.name))
    return found


class CpuClock:
    """CPU used by some processes between :meth:`start` and :meth:`percent` (100 = one core)."""

    def __init__(self, pids: list[int], tree: bool = False) -> None:
        self.pids = pids
        self.tree = tree
        self.start()

    def _now(self) -> float:
        pids = [p for pid in self.pids for p in (children(pid) if self.tree else [pid])]
        return cpu_seconds(pids)

    def start(self) -> None:
        self.cpu, self.wall = self._now(), time.monotonic()

    def percent(self) -> float:
        wall = time.monotonic() - self.wall
        return 100 * (self._now() - self.cpu) / wall if wall > 0 else 0.0


@contextlib.contextmanager
def node_receiver(port: int, *, record: bool = False, status: int = 204) -> Iterator[subprocess.Popen[bytes]]:
    """``node bench/node/receiver.js PORT`` until the block ends."""
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("the HTTP benchmarks need Node.js (node) on PATH for their receiver")
    env = {**os.environ, "RECEIVER_RECORD": "1" if record else "0", "RECEIVER_STATUS": str(status)}
    proc = subprocess.Popen([node, str(SCRIPT), str(port)], env=env, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the Node receiver did not start")
            time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)
