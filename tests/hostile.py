"""Running ``tltf`` on hostile input in a child process: exit code, output and the child's peak memory.

Tests of hostile files (``tests/test_hostile_*.py``) use :func:`run_tltf` where memory or a real process matters
(bombs, kill -9, two runs at once); everything else is tested in-process through ``conftest.cli``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

#: what a hostile input may cost beyond TensorFlow's own start-up (the issue's ceiling)
EXTRA_MB = 1024


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    peak_mb: float  # the child's peak resident set size

    @property
    def one_line_error(self) -> bool:
        """Exit 2, a single ``error:`` line on stderr (after any warnings), no traceback."""
        lines = [line for line in self.stderr.strip().splitlines() if line.strip()]
        return (self.returncode == 2 and "Traceback" not in self.stderr and bool(lines)
                and sum(line.startswith("error:") or line.startswith("Error:") for line in lines) == 1)


_CHILD = """
import atexit, resource, sys
def _peak(path=sys.argv[1]):
    with open(path, "w") as f:
        f.write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
atexit.register(_peak)
sys.argv = ["tltf", *sys.argv[2:]]
from tltf.cli import main
main()
"""


def run_tltf(*args, timeout: float = 300, env: dict | None = None, cwd=None) -> Outcome:
    """``tltf ARGS`` in a child process; ``peak_mb`` is the child's own peak RSS (written at its exit; a child
    killed by a signal reports ``inf``)."""
    import tempfile

    child_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", **(env or {})}
    with tempfile.TemporaryDirectory() as tmp:
        peak_file = os.path.join(tmp, "peak")
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, peak_file, *map(str, args)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=child_env, cwd=cwd, text=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"tltf {' '.join(map(str, args))}: still running after {timeout} s\n{err[-2000:]}")
        try:
            peak = int(open(peak_file).read()) / 1024.0  # ru_maxrss is in KiB on Linux
        except (OSError, ValueError):
            peak = float("inf")
    return Outcome(proc.returncode, out, err, peak)


def rss_growth_mb(fn, interval: float = 0.001):
    """``(fn(), MB)``: the call's result and how far this process's resident set grew above where it started, at
    its highest while ``fn`` ran (a thread samples ``/proc/self/statm``; a decode of a large image maps fresh
    memory, so it shows)."""
    import threading

    page = os.sysconf("SC_PAGE_SIZE")

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    start, peak, done = rss(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            done.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = fn()
    finally:
        done.set()
        sampler.join()
    return result, max(0, max(peak[0], rss()) - start) / 2**20


def baseline_mb() -> float:
    """Peak RSS of a child that only starts tltf (TensorFlow's own start-up), measured once per session."""
    global _BASELINE
    if _BASELINE is None:
        _BASELINE = run_tltf("--help").peak_mb
    return _BASELINE


_BASELINE: float | None = None
