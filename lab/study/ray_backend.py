"""Cells as Ray tasks: a :func:`lab.study.run` backend for a machine's cores or a cluster.

    rows = lab.study.run(my_study, out, map=lab.study.ray_map(address="auto"))
    python -m experiments <study> --backend ray [--address ADDR] [--cpus-per-cell N]

Each pending cell becomes one task; the driver alone writes rows, in the order tasks
finish, through the runner (atomically, resumably, exactly as with the local backends).
A task whose worker process dies (killed, out of memory, a lost node) is retried
(``max_retries``); an exception inside a cell is not retried and stops the run as it
would locally. Cells compute on one torch thread each (:func:`lab.study.execute`), so
their rows equal the local backend's.

Workers import the study by module name: the checkout holding ``lab/`` and
``experiments/`` goes on their ``PYTHONPATH``, which on a cluster means every node has
the checkout at the same path (a shared folder, or the same clone).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable, Iterator

from .provenance import SOURCE
from .runner import StudyError

__all__ = ["ray_map", "RayBackendError", "INSTALL"]

INSTALL = 'pip install "sampler-lab[ray]"'


class RayBackendError(StudyError):
    """``--backend ray`` cannot run as asked (ray missing, a cluster out of reach, a
    resource request no node can meet)."""


def _ray():
    try:
        import ray
    except ImportError as err:
        raise RayBackendError(f"--backend ray needs the ray package ({err}); install it with "
                              f"{INSTALL}, or use the local backend (--workers N)") from None
    return ray


def _check_reachable(address: str | None, timeout: float) -> None:
    """Fail within ``timeout`` seconds when ``host:port`` does not answer, instead of
    waiting for Ray's own, much longer, connection retries."""
    if address in (None, "", "auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise RayBackendError(f"--address {address!r} is not host:port (or ray://host:port, "
                              "or auto for the cluster this machine joined with ray start)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise RayBackendError(
            f"no Ray cluster answers at {address} within {timeout:g} s ({err}); start one "
            "with `ray start --head` there, check the address it printed, or leave out "
            "--address to run on this machine alone") from None


def _connect(ray, address: str | None, timeout: float) -> bool:
    """Join the cluster at ``address`` (or start a local one); True if this call did. A
    Ray session this process already holds is used as it is."""
    _check_reachable(address, timeout)
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address or None, log_to_driver=False, include_dashboard=False)
    except ConnectionError as err:
        raise RayBackendError(f"cannot join the Ray cluster at {address} ({err}); with "
                              "--address auto, first run `ray start --head` on this machine "
                              "(or `ray start --address <head>` to join one)") from None
    return True


def _check_resources(ray, cpus: float, gpus: float) -> None:
    """A task no node can hold would wait forever: refuse it at once."""
    have = ray.cluster_resources()
    for name, want in (("CPU", cpus), ("GPU", gpus)):
        if want > have.get(name, 0):
            raise RayBackendError(
                f"a cell asks for {want:g} {name}(s) but the Ray cluster has "
                f"{have.get(name, 0):g} in all; lower --{name.lower()}s-per-cell or add "
                "nodes that have them")


def _runtime_env() -> dict:
    """What a worker needs to import a study and run it as the driver would."""
    paths = [str(SOURCE), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}
    from ..config import COMPILE_ENV

    if COMPILE_ENV in os.environ:
        env[COMPILE_ENV] = os.environ[COMPILE_ENV]
    return {"env_vars": env}


def _call(fn: Callable, item):
    return fn(item)


def check_resources_per_cell(cpus: float, gpus: float) -> None:
    """``--cpus-per-cell`` > 0; ``--gpus-per-cell`` >= 0, whole above 1 (Ray's rule)."""
    if not isinstance(cpus, (int, float)) or not cpus > 0:
        raise RayBackendError(f"--cpus-per-cell must be a number > 0, got {cpus!r}")
    if not isinstance(gpus, (int, float)) or not gpus >= 0 or (gpus > 1 and gpus % 1):
        raise RayBackendError(f"--gpus-per-cell must be >= 0, a fraction of one GPU or a whole "
                              f"number of them, got {gpus!r}")


def ray_map(address: str | None = None, *, cpus_per_cell: float = 1, gpus_per_cell: float = 0,
            max_retries: int = 3, connect_timeout: float = 10.0) -> Callable:
    """A :func:`lab.study.run` backend: each cell a Ray task of ``cpus_per_cell`` CPUs and
    ``gpus_per_cell`` GPUs, retried up to ``max_retries`` times if its worker dies; rows
    yielded as tasks finish. ``address``: a cluster's ``host:port``, ``"auto"`` (the one
    ``ray start`` joined on this machine), or None: the running Ray session if there is
    one, else a new one on this machine's cores (shut down at the end)."""
    check_resources_per_cell(cpus_per_cell, gpus_per_cell)
    ray = _ray()  # a missing install fails before any cell, not at the first one

    def map_on_ray(fn: Callable, items: Iterable) -> Iterator:
        items = list(items)
        if not items:
            return
        started = _connect(ray, address, connect_timeout)
        try:
            _check_resources(ray, cpus_per_cell, gpus_per_cell)
            task = ray.remote(_call).options(num_cpus=cpus_per_cell, num_gpus=gpus_per_cell,
                                             max_retries=max_retries,
                                             runtime_env=_runtime_env())
            work = ray.put(fn)
            pending = [task.remote(work, item) for item in items]
            try:
                while pending:
                    done, pending = ray.wait(pending, num_returns=1)
                    yield ray.get(done[0])
            finally:
                for ref in pending:  # stopped early (an error, Ctrl-C): drop the rest
                    ray.cancel(ref, force=True)
        finally:
            if started:
                ray.shutdown()

    return map_on_ray
