"""The machine: CPU cores for loader workers, torch threads and thread
pools, progress bars for the long steps, and a one-line description for
reports.

Authors
-------
 * sb-urbansound contributors
"""

import collections
import contextlib
import itertools
import logging
import os
import platform
from concurrent.futures import ThreadPoolExecutor

import torch
from sb_urbansound.errors import UserError
from tqdm import tqdm

from speechbrain.utils.distributed import if_main_process

logger = logging.getLogger(__name__)

# torch's own default (one thread per physical core), before anyone changes it.
_DEFAULT_TORCH_THREADS = torch.get_num_threads()


def available_cores():
    """The number of CPU cores this process may run on.

    Returns
    -------
    int
        The cores of this process's CPU affinity.

    Example
    -------
    >>> available_cores() >= 1
    True
    """
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_num_workers(data_source="files", cores=None, max_workers=8):
    """DataLoader workers: half the cores of this ``torchrun`` process, from 1
    to ``max_workers``; none for a bank or shards (nothing left to load).

    Arguments
    ---------
    data_source : str
        The run's ``data_source`` (``sb_urbansound.data.loader.SOURCES``).
    cores : int, optional
        CPU cores available (default: :func:`available_cores`).
    max_workers : int
        Upper bound.

    Returns
    -------
    int
        The number of workers.

    Example
    -------
    >>> default_num_workers(cores=2), default_num_workers(cores=64)
    (1, 8)
    >>> default_num_workers("bank")
    0
    """
    if data_source != "files":
        return 0
    cores = available_cores() if cores is None else cores
    cores //= max(int(os.environ.get("LOCAL_WORLD_SIZE", 1)), 1)
    return max(1, min(max_workers, cores // 2))


def set_torch_threads(num_workers, cores=None):
    """Give torch's threads the cores that the loader workers leave free.

    ``cores - num_workers`` threads per ``torchrun`` process (1 to torch's
    default): more busy threads than cores make OpenMP wait. The count
    follows the machine, not its load (it orders torch's sums); a busy
    machine gets a warning. ``OMP_NUM_THREADS``, when set, wins.

    Arguments
    ---------
    num_workers : int
        DataLoader worker processes per training process.
    cores : int, optional
        CPU cores available (default: :func:`available_cores`).

    Returns
    -------
    int
        The number of threads torch now uses.

    Example
    -------
    >>> before = torch.get_num_threads()
    >>> set_torch_threads(num_workers=3, cores=4) >= 1
    True
    >>> torch.set_num_threads(before)
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    cores = available_cores() if cores is None else cores
    local_processes = max(int(os.environ.get("LOCAL_WORLD_SIZE", 1)), 1)
    own = cores // local_processes
    threads = max(1, min(own - int(num_workers or 0), _DEFAULT_TORCH_THREADS))
    busy = int(os.getloadavg()[0]) // local_processes
    if threads > 1 and threads + busy > own:
        logger.warning(
            "Other jobs keep %d of %d cores busy (load average): torch's %d "
            "threads will wait for each other; OMP_NUM_THREADS=1 trains "
            "faster here (the last digits of the results then differ).",
            busy * local_processes,
            cores,
            threads,
        )
    torch.set_num_threads(threads)
    return threads


@contextlib.contextmanager
def core_pool(threads=None):
    """A pool of threads, one per core, in which torch runs one thread each
    (more would oversubscribe the cores); torch's count is restored after.

    Arguments
    ---------
    threads : int, optional
        Threads in the pool (default: the CPU cores, at most 8).

    Yields
    ------
    concurrent.futures.ThreadPoolExecutor
        The pool; on exit, queued work is cancelled, running work finishes.

    Example
    -------
    >>> with core_pool(2) as pool:
    ...     list(pool.map(lambda _: torch.get_num_threads(), range(2)))
    [1, 1]
    """
    threads = min(available_cores(), 8) if threads is None else threads
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # new threads take this (torch's lazy init)
    pool = ThreadPoolExecutor(max(1, int(threads)))
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(before)


def ordered_map(pool, function, items, ahead=None):
    """``pool.map``, holding at most ``ahead`` results not yet taken (ours:
    ``Executor.map`` submits every item at once, so memory is unbounded).

    Arguments
    ---------
    pool : concurrent.futures.Executor
        The pool.
    function : callable
        Called on each item.
    items : iterable
        The items.
    ahead : int, optional
        Items submitted ahead (default: 4 per thread of the pool).

    Yields
    ------
    object
        The results, in the order of ``items``.

    Example
    -------
    >>> with core_pool(2) as pool:
    ...     list(ordered_map(pool, abs, [-1, -2, 3], ahead=1))
    [1, 2, 3]
    """
    ahead = 4 * pool._max_workers if ahead is None else ahead
    items = iter(items)
    pending = collections.deque(
        pool.submit(function, item) for item in itertools.islice(items, ahead)
    )
    while pending:
        result = pending.popleft().result()
        for item in itertools.islice(items, 1):
            pending.append(pool.submit(function, item))
        yield result


def progress_bar(iterable=None, enabled=True, **kwargs):
    """A tqdm bar, shown on the main process's terminal only (not to a file).

    Arguments
    ---------
    iterable : iterable, optional
        What the bar wraps (or None, then call ``update``).
    enabled : bool
        False: no bar at all.
    **kwargs
        tqdm's options (``total``, ``desc``, ``unit``, ...).

    Returns
    -------
    tqdm.tqdm
        The bar.

    Example
    -------
    >>> bar = progress_bar(range(3), desc="Clips")  # no terminal: no bar
    >>> bar.disable, list(bar)
    (True, [0, 1, 2])
    """
    show = enabled and if_main_process()
    return tqdm(iterable, disable=None if show else True, **kwargs)


def _cpu_model():
    """The CPU's model name, best effort."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def hardware_description():
    """Describe the machine in one line: CPU, GPU, torch and Python.

    Returns
    -------
    str
        The description.

    Example
    -------
    >>> "torch" in hardware_description()
    True
    """
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    names = sorted({torch.cuda.get_device_name(i) for i in range(n)})
    gpu = f"{n} × {', '.join(names)}" if n else "none"
    return (
        f"CPU: {_cpu_model()} ({available_cores()} cores available); "
        f"GPU: {gpu}; "
        f"torch {torch.__version__}; "
        f"Python {platform.python_version()} on {platform.system()}"
    )


def check_device(device, backend=None):
    """Stop at once with a one-line UserError (naming the devices torch
    finds) when torch cannot use ``device``, or under ``torchrun`` a backend
    other than gloo lacks one GPU per process (SpeechBrain finds out late,
    with a traceback).

    Arguments
    ---------
    device : str or None
        ``--device`` (``cpu``, ``cuda:1``, ``mps``...); None: SpeechBrain's.
    backend : str, optional
        ``--distributed_backend`` (checked only under ``torchrun``).

    Example
    -------
    >>> check_device("cpu")
    >>> check_device("gpu")
    Traceback (most recent call last):
     ...
    sb_urbansound.errors.UserError: --device=gpu is not a device name: ...
    """
    local_rank = os.environ.get("LOCAL_RANK")
    if local_rank is not None and backend not in (None, "gloo"):
        gpus = torch.cuda.device_count()
        if int(local_rank) >= gpus:
            raise UserError(
                f"--distributed_backend={backend} needs one GPU per torchrun "
                f"process, and torch finds {gpus} GPU(s) for process "
                f"{local_rank}: on CPUs pass --distributed_backend=gloo "
                "--device=cpu, or start fewer processes (--nproc_per_node)"
            )
    if device is None:
        return
    try:
        wanted = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(
            f"--device={device} is not a device name: use cpu, cuda, cuda:N "
            "or mps"
        ) from None
    if wanted.type in ("cpu", "meta"):
        return
    found = torch.accelerator.current_accelerator(check_available=True)
    have = "no GPU or other accelerator"
    if found is not None:
        count = torch.accelerator.device_count()
        if found.type == wanted.type and (wanted.index or 0) < count:
            return
        have = f"{count} {found.type} device(s)"
    raise UserError(
        f"--device={device} cannot be used: torch finds {have} on this "
        "machine; pass --device=cpu or a device it has"
    )


def stop_loader_workers(loaders):
    """Stop DataLoaders' worker processes now (SpeechBrain's checkpointer
    keeps the training loader; stopping workers at exit takes seconds).

    Arguments
    ---------
    loaders : iterable of torch.utils.data.DataLoader
        The loaders (others are ignored).

    Returns
    -------
    int
        How many loaders had live workers.

    Example
    -------
    >>> loader = torch.utils.data.DataLoader(range(4), num_workers=0)
    >>> stop_loader_workers([loader])
    0
    """
    stopped = 0
    for loader in loaders:
        iterator = getattr(loader, "_iterator", None)
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
            loader._iterator = None
            stopped += 1
    return stopped
