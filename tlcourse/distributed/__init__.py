"""Data-parallel training on several processes: PyTorch's ``torch.distributed`` and
``DistributedDataParallel`` (DDP), started by ``torchrun`` (``torch.distributed.run``).

``torchrun --nproc-per-node 2 -m tlcourse train ...``, or ``python -m tlcourse train --nproc-per-node 2
...`` (which calls ``torch.distributed.run`` for you, see ``launcher.launch``), starts one process per
device. Every process runs the same ``tlcourse.engine.train``; this package holds what changes:

* **Process group**: ``nccl`` on CUDA (process ``LOCAL_RANK`` uses ``cuda:LOCAL_RANK``), ``gloo`` on
  the CPU. ``group.session`` joins it and always leaves it (``destroy_process_group``), on success, error
  and Ctrl-C. Collectives give up after ``TLCOURSE_DIST_TIMEOUT`` seconds (``--dist-timeout``), so a
  process whose peer died cannot wait forever.
* **Batches**: ``batch_size`` is per process; one optimizer step sees ``batch_size x processes``
  images. ``samplers.ShuffledShards`` is a ``DistributedSampler`` whose shuffle is the one-process
  shuffle (each epoch one ``randperm`` of the loader's seeded generator, as ``RandomSampler`` draws
  it), rank ``r`` taking positions ``r, r + W, ...``. So step ``k`` of ``W`` processes x batch ``b``
  sees exactly the images of step ``k`` of one process x batch ``W*b``; DDP averages the gradients,
  so both take the same step with the same learning rate, and a run can resume with another
  number of processes.
* **Metrics**: each rank evaluates its share of the validation set (``r, r + W, ...``, no padding)
  and the sums (loss x images, correct, images) are all-reduced: every image counts exactly once.
* **Files**: only rank 0 creates the run folder and writes checkpoints and history (atomically, as
  in one process); the others wait and learn whether it worked (``saver.MainOnlySaver``). DDP wraps
  only the module that is fed batches, so checkpoints hold the plain model (no ``module.`` prefix).
* **Caches** (``tlcourse.fast``): rank 0 runs the frozen prefix and writes the persistent feature
  cache; the other ranks wait, then read it (``Group.main_first``), so every rank holds the
  whole cache that its shuffled shards need. Decoded images (the ``decode`` route) are split: each
  rank decodes its share and the shares are all-gathered (``Group.decode_images``).
* **BatchNorm**: frozen BatchNorm (``bn_eval``) stays frozen. A BatchNorm layer that trains
  normalises each process's share of the batch, unless ``sync_bn``: then ``SyncBatchNorm`` on
  CUDA; on the CPU, where PyTorch's ``SyncBatchNorm`` is CUDA-only, ``batchnorm.CPUSyncBatchNorm`` (the
  same statistics, all-reduced over gloo).

One job per module: ``process`` (where this process stands), ``samplers``, ``batchnorm``, ``group`` (the
process group, and what DDP changes in a run: ``Group.fast_hooks`` for ``fast.prepare``,
``Group.fit_hooks`` for ``loops.fit``), ``saver``, ``errors`` (a failure as one line), ``launcher`` (torchrun).
"""

from .batchnorm import CPUSyncBatchNorm, training_batchnorms
from .errors import describe_error, record_error, report_errors
from .group import GATHER_BYTES, Group, session
from .launcher import launch, root_failure, torchrun_arguments
from .process import (
           ENV_LAUNCHED,
           epoch_seed,
           is_main_process,
           process_rank,
           seed_process,
           timeout_seconds,
           under_torchrun,
)
from .samplers import EvalShard, ShuffledShards
from .saver import MainOnlySaver

__all__ = ["CPUSyncBatchNorm", "ENV_LAUNCHED", "EvalShard", "GATHER_BYTES", "Group", "MainOnlySaver", "ShuffledShards",
           "describe_error", "epoch_seed", "is_main_process", "launch", "process_rank", "record_error",
           "report_errors", "root_failure", "seed_process", "session", "timeout_seconds", "torchrun_arguments",
           "training_batchnorms", "under_torchrun"]
