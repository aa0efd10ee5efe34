"""Where and how the code runs: seeds, devices, the process group of a torchrun launch, ONNX Runtime sessions.

    >>> pick_device("cpu")
    device(type='cpu')
"""

import math
import os
import random

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from {{ cookiecutter.package_name }}.lib import models


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def use_threads(n):
    """train.threads / analyze.threads: n sets torch's CPU threads, None keeps its default (one per core). Returns
    the count used."""
    if n:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def devices():
    """The train.device names this machine has."""
    cuda = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return ["auto", "cpu", *(["cuda"] if cuda else []), *cuda, *(["mps"] if torch.backends.mps.is_available() else [])]


def pick_device(name, local_rank=0):
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"train.device={name!r} but no CUDA device is available; use 'auto' or 'cpu'")
    if name not in devices():
        raise ValueError(f"train.device={name!r}: no such device here; valid: {', '.join(devices())}")
    return torch.device(name)


def drop_last_batch(n, batch_size, world, model):
    """Whether the train loader drops its last, partial batch: when it would hold one sample per process, which
    BatchNorm cannot normalise in training mode. Raises ValueError when BatchNorm never gets two samples."""
    per_rank, per_batch = math.ceil(n / world), batch_size // world
    if (per_batch < 2 or per_rank < 2) and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ValueError(f"train.batch_size={batch_size} with {n} training images over {world} process(es) gives "
                         f"batches of one, which BatchNorm layers cannot train on; use train.batch_size >= {2 * world} "
                         "and at least 2 training images per process")
    return per_batch > 1 and per_rank % per_batch == 1


def finite_step(loss, model, max_norm, where):
    """After backward(): clip the gradients to max_norm (None: no clipping) and return their total norm, or raise
    ValueError naming `where` (epoch, batch) when the loss or the norm is NaN or infinite, before optimizer.step()
    spoils the weights. Under DDP the gradients are averaged over processes: every rank stops at the same batch."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norm = nn.utils.clip_grad_norm_(model.parameters(), max_norm) if max_norm else nn.utils.get_total_norm(grads)
    if not (torch.isfinite(loss) and torch.isfinite(norm)):
        raise ValueError(f"training diverged at {where}: loss {loss.item():.4g}, gradient norm {norm.item():.4g}; "
                         "lower lr, keep train.grad_clip_norm set, or check the data; nothing was written")
    return norm


def init_distributed(batch_size):
    """(rank, world size, local rank); joins the process group when started by torchrun (WORLD_SIZE > 1).
    NCCL between GPUs, gloo on CPU. Each process takes an equal share of every batch of batch_size."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if batch_size % world:
        raise ValueError(f"train.batch_size={batch_size}: must divide by the {world} processes (each takes an equal "
                         "share of every batch)")
    if world == 1:
        return 0, 1, 0
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world, local_rank


def data_parallel(model, world, device):
    """model wrapped in DistributedDataParallel under a torchrun launch of several processes; else itself."""
    if world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def sum_over_ranks(tensors):
    """{name: tensor} summed over the processes of a torchrun launch in one all-reduce; unchanged without one."""
    if not dist.is_initialized():
        return tensors
    packed = torch.cat([v.reshape(-1) for v in tensors.values()])
    dist.all_reduce(packed)
    sizes = [v.numel() for v in tensors.values()]
    return {k: t.reshape(v.shape) for (k, v), t in zip(tensors.items(), packed.split(sizes), strict=True)}


def ort_session(path, threads):
    """An ONNX Runtime CPU session as a function of a float32 tensor (B, 3, H, W) -> logits tensor."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # ORT's worker threads spin by default and steal the cores from PyTorch timed in the same process.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"images": x.numpy()})[0])


RUNTIMES = ("onnxruntime", "pytorch")  # how optimize's deployable variants run (deployable.json "runtime")


def deployable(path, runtime, threads=0):
    """The deployable file at `path` as a function of float32 (B, 3, H, W) tensors -> logits tensors: an ONNX
    Runtime session, or the PyTorch model rebuilt from its checkpoint (no pickle). threads 0: ORT's default."""
    if runtime == "onnxruntime":
        return ort_session(path, threads)
    if runtime == "pytorch":
        model, _ = models.load_checkpoint(path)

        def run(x):
            with torch.inference_mode():
                return model(x)

        return run
    raise ValueError(f"deployable runtime {runtime!r} is not supported; valid runtimes: {', '.join(RUNTIMES)}")
