"""Where and how the code runs: seeds, devices, the process group of a torchrun launch, ONNX Runtime sessions.

    >>> pick_device("cpu")
    device(type='cpu')
"""

import os
import random

import numpy as np
import torch
import torch.distributed as dist


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def pick_device(name, local_rank=0):
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"train.device={name!r} but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


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
