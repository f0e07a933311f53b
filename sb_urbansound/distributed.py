"""Several processes (``torchrun``): who does which share of the work.

SpeechBrain splits the training data between the processes of a DDP run,
but every process validates and tests on the whole data. Here evaluation is
split too: :class:`ShardSampler` gives each process every ``world``-th clip
(no clip twice, none dropped), and :func:`gather` pools what each process
found, so the statistics are computed once, from all the clips. A clip's
score does not depend on the other clips of its batch (the recipe's
normalisers work per clip in evaluation), so a sharded evaluation gives the
same accuracy, per-class accuracy and confusion matrix as one process.

Authors
-------
 * sb-urbansound contributors
"""

import torch


def world():
    """This process's rank and the number of processes (0, 1 when alone).

    Returns
    -------
    rank : int
    size : int

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

    Unlike ``torch.utils.data.DistributedSampler``, no index is repeated to
    make the shares equal (a repeated clip would be counted twice) and the
    order is kept.

    Arguments
    ---------
    length : int
        The number of items.
    rank : int
        This process's rank.
    size : int
        The number of processes.

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
