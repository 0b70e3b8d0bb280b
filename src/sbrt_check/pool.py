"""The worker processes of `audit` and `listen`: one way to start, feed and stop a pool of them.

Why one: both check plans in worker processes and both need the same things done right. A
start method that never forks a process with threads (forkserver, with the checker preloaded
so each worker pays its imports once; spawn where there is no forkserver), workers that leave
Ctrl-C to the parent (which decides what finishes), a fresh pool when a worker dies (killed for
memory: the executor is then broken for good), and workers that never outlive a stop.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.context import BaseContext
from typing import Any


def default_jobs() -> int:
    """The cores this process may use (a cluster job's allocation, not the whole machine)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def ignore_sigint() -> None:
    """Workers leave Ctrl-C to the parent, which keeps the finished work and stops them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def pool_context(preload: Sequence[str]) -> BaseContext:
    """forkserver with `preload` imported once in the server (each worker starts with it), else spawn."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(list(preload))
        return context
    return multiprocessing.get_context("spawn")


class WorkerPool:
    """A process pool that replaces itself when a worker dies, and ends its workers on request.

    `initializer(*initargs)` runs in each worker at its start; it must leave SIGINT ignored
    (`ignore_sigint` does; the node's `warm` does more).
    """

    def __init__(self, workers: int, preload: Sequence[str], initializer: Callable[..., Any] = ignore_sigint,
                 initargs: tuple = ()) -> None:
        self.workers = workers
        self._preload = tuple(preload)
        self._initializer = initializer
        self._initargs = initargs
        self._executor = self._start()

    def _start(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.workers, mp_context=pool_context(self._preload),
                                   initializer=self._initializer, initargs=self._initargs)

    def submit(self, function: Callable[..., Any], *args: Any) -> Future:
        """`function(*args)` in a worker. A pool a dead worker broke (killed for memory?) cannot take
        work any more: a fresh one is started and takes it."""
        try:
            return self._executor.submit(function, *args)
        except BrokenProcessPool:
            self._executor = self._start()
            return self._executor.submit(function, *args)

    def warm(self) -> None:
        """Start every worker now (each runs the initializer), not when the first plan arrives."""
        for _ in range(self.workers):
            self._executor.submit(int, 0)

    def kill(self) -> None:
        """Kill every worker at once (checks that overran their deadline)."""
        for process in self._processes():
            process.kill()

    def close(self, wait: bool = True) -> None:
        """Take no more work and cancel what has not started; `wait` for the running work to end."""
        self._executor.shutdown(wait=wait, cancel_futures=True)

    def terminate(self) -> None:
        """Cancel what has not started and end the workers now, without waiting (an audit stopped)."""
        workers = self._processes()
        self.close(wait=False)
        for process in workers:
            if process.is_alive():
                process.terminate()

    def _processes(self) -> list:
        return list((getattr(self._executor, "_processes", None) or {}).values())
