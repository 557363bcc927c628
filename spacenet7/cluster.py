"""Per-AOI work on Dask distributed: one task per AOI, failures collected and reported by AOI name.

One AOI is the unit of work (tracking runs in month order within an AOI). A stage builds a list of
``(aoi, args)`` and calls :func:`map_aois` with its ``cluster`` config (:class:`ClusterConfig`):

- ``cluster.mode=none`` (the default): ``fn(*args)`` in this process, one AOI after another, as
  before; the first error stops the stage.
- ``cluster.mode=local cluster.workers=N``: a Dask ``LocalCluster`` of N worker processes.
- ``cluster.mode=address cluster.address=tcp://HOST:8786``: an existing scheduler (``dask-scheduler``
  + ``dask-worker``s, dask-jobqueue on SLURM, ...). Workers need this package and the data paths.

On a cluster every AOI is one task (``client.submit(..., pure=False)``). The scheduler re-runs the
task of a worker that dies on another worker (``distributed.scheduler.allowed-failures``); a task
that raises an unexpected error is re-run ``cluster.retries`` times; an AOI that fails on bad data
(:class:`SN7Error`) is not re-run. The other AOIs always finish; then one :class:`SN7Error` names
every failed AOI and its reason. Writes are atomic (:mod:`spacenet7.io.atomic`), so a killed
worker leaves only ``.partial`` files, which the stage removes when its tasks are done.

Results come back in the order of ``items``, so a stage's outputs are the same as in-process.
:func:`once_per_process` keeps one expensive object (a loaded network) per worker process.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from tqdm import tqdm

from spacenet7.config import ClusterConfig, ClusterMode
from spacenet7.errors import SN7Error, os_error_line

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class _Failed:
    """An AOI's task that stopped on bad data (reported, not re-run)."""

    message: str


def _attempt(fn: Callable[..., Any], *args: Any) -> Any:
    """Run on a worker: ``fn(*args)``, with a user-facing error returned rather than raised
    (raising would make Dask re-run a task whose input will not change)."""
    try:
        return fn(*args)
    except SN7Error as exc:
        return _Failed(str(exc))


@contextlib.contextmanager
def connect(cluster: ClusterConfig) -> Iterator[Any]:
    """A ``distributed.Client`` for ``cluster`` (a LocalCluster it starts and stops, or a scheduler's).

    Raises:
        SN7Error: the scheduler at ``cluster.address`` cannot be reached.
    """
    from distributed import Client, LocalCluster

    if cluster.mode is ClusterMode.local:
        dashboard = ":8787" if importlib.util.find_spec("bokeh") else ":0"  # the dashboard needs bokeh; else only the health page
        with (
            LocalCluster(
                n_workers=cluster.workers,
                threads_per_worker=cluster.threads_per_worker,
                processes=True,
                dashboard_address=dashboard,
                silence_logs=logging.ERROR,
            ) as local,
            Client(local) as client,
        ):
            yield client
        return
    try:
        client = Client(cluster.address, timeout="30s")
    except (OSError, TimeoutError, ValueError) as exc:  # ValueError: not an address ("missing port number")
        raise SN7Error(f"cluster: cannot reach the Dask scheduler at cluster.address={cluster.address!r} ({exc})") from None
    with client:
        yield client


def map_aois(
    fn: Callable[..., T],
    items: Sequence[tuple[str, tuple]],
    cluster: ClusterConfig,
    *,
    stage: str,
    progress: bool = True,
    cleanup: Callable[[], object] | None = None,
) -> list[T]:
    """``fn(*args)`` for every ``(aoi, args)`` of ``items``, in process or one Dask task per AOI: the per-AOI
    executor of every stage that works AOI by AOI.

    Args:
        fn: a module-level function (workers import it by name).
        items: ``(aoi, args)`` pairs, one per AOI.
        cluster: where to run.
        stage: names the tasks (``<stage>-<aoi>-<run>``) and the error.
        progress: a progress bar over finished AOIs (on a cluster).
        cleanup: on a cluster, run here once the tasks are done, whatever happened (removes what a killed
            worker left: ``.partial`` files, scratch folders).

    Returns:
        The results, in the order of ``items``.

    Raises:
        SN7Error: on a cluster, after every other AOI finished: one line naming each failed AOI
            and why. In process, the first AOI's error propagates unchanged.
    """
    if cluster.mode is ClusterMode.none:
        return [fn(*args) for _, args in items]
    try:
        return _on_cluster(fn, items, cluster, stage=stage, progress=progress)
    finally:
        if cleanup is not None:
            cleanup()


def _on_cluster(
    fn: Callable[..., T], items: Sequence[tuple[str, tuple]], cluster: ClusterConfig, *, stage: str, progress: bool
) -> list[T]:
    """:func:`map_aois` on a Dask cluster."""
    from distributed import as_completed

    run = uuid.uuid4().hex[:8]
    results: dict[str, T] = {}
    failed: dict[str, str] = {}
    with connect(cluster) as client:
        n_workers = len(client.scheduler_info(n_workers=-1).get("workers", {}))
        link = getattr(client, "dashboard_link", None) if importlib.util.find_spec("bokeh") else None
        log.info(
            "%s: %d AOIs on %d Dask workers (%s)%s",
            stage,
            len(items),
            n_workers,
            client.scheduler.address,
            f", dashboard {link}" if link else "",
        )
        futures = {
            client.submit(_attempt, fn, *args, key=f"{stage}-{aoi}-{run}", retries=cluster.retries, pure=False): aoi
            for aoi, args in items
        }
        for fut in tqdm(
            as_completed(futures), total=len(futures), desc=f"{stage} ({n_workers} workers)", unit="AOI", disable=not progress
        ):
            aoi = futures[fut]
            try:
                out = fut.result()
            except Exception as exc:  # KilledWorker (died too often), or an error that outlived its retries
                failed[aoi] = _reason(exc)
                continue
            if isinstance(out, _Failed):
                failed[aoi] = out.message
            else:
                results[aoi] = out
    if failed:
        done = len(items) - len(failed)
        raise SN7Error(
            f"{stage}: {len(failed)} of {len(items)} AOIs failed ({done} finished): "
            + "; ".join(f"{aoi}: {failed[aoi]}" for aoi, _ in items if aoi in failed)
        )
    return [results[aoi] for aoi, _ in items]


def _reason(exc: BaseException) -> str:
    """One line for a task's exception."""
    from distributed import KilledWorker

    if isinstance(exc, KilledWorker):
        return "its worker died every time it ran (killed, out of memory?)"
    if isinstance(exc, OSError):
        return os_error_line(exc)
    text = str(exc).splitlines()[0][:300] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_CACHE: dict[str, tuple[Hashable, Any]] = {}
_LOADS: Counter[str] = Counter()
_LOCK = threading.Lock()


def once_per_process(kind: str, key: Hashable, load: Callable[[], T]) -> T:
    """One ``kind`` of object per process (a Dask worker): loaded on first use, reused while ``key``
    stays the same (e.g. a checkpoint's path, size and mtime), replaced when it changes."""
    with _LOCK:
        held = _CACHE.get(kind)
        if held is None or held[0] != key:
            _CACHE[kind] = (key, load())
            _LOADS[kind] += 1
        return _CACHE[kind][1]


def load_counts() -> dict[str, int]:
    """How many times this process loaded each kind of :func:`once_per_process` object."""
    return dict(_LOADS)
