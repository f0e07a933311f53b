"""Several processes (``torchrun``): who does which share of the work.

SpeechBrain splits only the training data between DDP processes; here
evaluation is split too: :class:`ShardSampler` gives each process every
``world``-th clip (none twice, none dropped) and :func:`pool_stats` pools the
results, which equal one process's (a clip's score does not depend on its
batch). Evaluation runs without the DDP wrappers (:func:`unwrapped`): a
process may have fewer batches than another, and a wrapper would wait.
:func:`no_sync_batchnorm_on_cpu` keeps SpeechBrain 1.1.2 from converting
BatchNorms to ``SyncBatchNorm`` on CPU (``docs/upstream.md``).

Authors
-------
 * sb-urbansound contributors
"""

import contextlib
import types

import torch

import speechbrain.core


def world():
    """This process's rank and the number of processes (0, 1 when alone).

    Returns
    -------
    rank : int
        This process's rank.
    size : int
        The number of processes.

    Example
    -------
    >>> world()
    (0, 1)
    """
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather(obj):
    """Every process's ``obj``, in rank order (``[obj]`` when alone).

    Arguments
    ---------
    obj : object
        Anything picklable.

    Returns
    -------
    list
        One item per process.

    Example
    -------
    >>> gather({"clips": 3})
    [{'clips': 3}]
    """
    rank, size = world()
    if size == 1:
        return [obj]
    parts = [None] * size
    torch.distributed.all_gather_object(parts, obj)
    return parts


class ShardSampler(torch.utils.data.Sampler):
    """The indices of one process's share: ``rank, rank + size, ...``.

    Ours, not ``DistributedSampler``: no index is repeated to even out the
    shares (a clip would count twice), and the order is kept.

    Arguments
    ---------
    length : int
        The number of items.
    rank, size : int
        This process's rank, and the number of processes.

    Example
    -------
    >>> list(ShardSampler(5, 0, 2)), list(ShardSampler(5, 1, 2))
    ([0, 2, 4], [1, 3])
    """

    def __init__(self, length, rank, size):
        if not 0 <= rank < size:
            raise ValueError(f"rank {rank} is not in [0, {size})")
        self.indices = list(range(rank, int(length), size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def pool_stats(stats, loss_sum):
    """Every process's evaluation statistics, pooled (in every process).

    Arguments
    ---------
    stats : speechbrain.utils.metric_stats.ClassificationStats
        This process's predictions.
    loss_sum : float
        The loss summed over this process's clips.

    Returns
    -------
    stats : ClassificationStats
        The predictions of every clip.
    loss : float
        The mean loss per clip.

    Example
    -------
    >>> from speechbrain.utils.metric_stats import ClassificationStats
    >>> stats = ClassificationStats()
    >>> stats.append(["a", "b"], ["dog", "cat"], ["dog", "dog"])
    >>> pooled, loss = pool_stats(stats, 3.0)
    >>> pooled.summarize("accuracy"), loss
    (0.5, 1.5)
    """
    parts = gather((stats.ids, stats.predictions, stats.targets, loss_sum))
    if len(parts) > 1:
        stats = type(stats)()
        for ids, predictions, targets, _ in parts:
            stats.append(ids, predictions, targets)
    clips = len(stats.ids)
    return stats, sum(p[3] for p in parts) / clips if clips else 0.0


def unwrapped(modules):
    """The modules, without their DDP wrappers (for evaluation).

    Arguments
    ---------
    modules : torch.nn.ModuleDict
        A Brain's modules.

    Returns
    -------
    types.SimpleNamespace
        The same modules by name, each without its wrapper.

    Example
    -------
    >>> unwrapped(torch.nn.ModuleDict({"a": torch.nn.Linear(1, 1)})).a
    Linear(in_features=1, out_features=1, bias=True)
    """
    ddp = torch.nn.parallel.DistributedDataParallel
    return types.SimpleNamespace(
        **{
            name: module.module if isinstance(module, ddp) else module
            for name, module in modules.items()
        }
    )


class _KeepBatchNorm:
    """Stands for ``SyncBatchNorm`` in SpeechBrain: converts nothing."""

    @staticmethod
    def convert_sync_batchnorm(module, process_group=None):
        """Returns ``module`` as it is."""
        return module


@contextlib.contextmanager
def no_sync_batchnorm_on_cpu(device):
    """Within: SpeechBrain wraps modules for DDP without ``SyncBatchNorm``
    when ``device`` is the CPU (where its forward raises in training); DDP
    then broadcasts the BatchNorm statistics from the first process.

    Arguments
    ---------
    device : str
        The Brain's device.

    Example
    -------
    >>> with no_sync_batchnorm_on_cpu("cpu"):
    ...     speechbrain.core.SyncBatchNorm is _KeepBatchNorm
    True
    """
    saved = speechbrain.core.SyncBatchNorm
    if str(device).startswith("cpu"):
        speechbrain.core.SyncBatchNorm = _KeepBatchNorm
    try:
        yield
    finally:
        speechbrain.core.SyncBatchNorm = saved
