"""A Dask worker plugin that binds each local worker process to cores of its own.

Imported only where ``mobs-ppl batch --cores-per-worker`` asks for it (it imports
``distributed``, which the command line's ``--help`` must not wait for).
"""

from __future__ import annotations

import os

from distributed import WorkerPlugin


class PinCores(WorkerPlugin):
    """Bind local worker ``k`` (its name in a ``LocalCluster``) to cores ``k*K .. k*K+K-1``.

    It runs when a worker starts, before any fit imports JAX, so XLA sizes its thread
    pool to the worker's own cores (it counts the cores a process may run on) and the
    workers no longer compete for the same cores. Every thread of the worker process is
    bound; threads started later inherit the binding.

    Parameters
    ----------
    cores_per_worker : int
        ``K``, cores per worker.
    cores : list of int
        The cores to share out, in order (those the client process may use).
    """

    name = "mobs-ppl-pin-cores"

    def __init__(self, cores_per_worker: int, cores: list[int]):
        self.cores_per_worker = cores_per_worker
        self.cores = list(cores)

    def setup(self, worker) -> None:
        first = int(worker.name) * self.cores_per_worker
        mine = set(self.cores[first : first + self.cores_per_worker])
        for thread in os.listdir("/proc/self/task"):
            os.sched_setaffinity(int(thread), mine)
