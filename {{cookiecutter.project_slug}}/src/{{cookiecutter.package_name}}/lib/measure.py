"""Measurements of a model, shared by analyze and optimize: counts, FLOPs, memory, latency, the machine.

    >>> import torchvision
    >>> parameters(torchvision.models.resnet18())
    {'total': 11689512, 'trainable': 11689512}

Every figure here is measured on the model in hand; nothing is looked up or assumed.
"""

import contextlib
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode


def parameters(model):
    return {"total": sum(p.numel() for p in model.parameters()),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def layers(model):
    """`modules`: len(list(model.modules())), what model summaries often call layers (68 for resnet18);
    `leaf`: modules without children (the ones that compute)."""
    mods = list(model.modules())
    return {"modules": len(mods), "leaf": sum(1 for m in mods if not list(m.children()))}


def layer_table(model, x):
    """One row per leaf module, in execution order: name, type, params, output shape, FLOPs at input x.
    Returns (rows, total FLOPs). FLOPs count a multiply-add as 2 (torch.utils.flop_counter)."""
    shapes, order, hooks = {}, [], []
    root = type(model).__name__
    for name, m in model.named_modules():
        if name and not list(m.children()):
            def hook(mod, inp, out, name=name):
                if name not in shapes:
                    order.append(name)
                first = out[0] if isinstance(out, (tuple, list)) else out
                shapes[name] = list(first.shape) if isinstance(first, torch.Tensor) else None
            hooks.append(m.register_forward_hook(hook))
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        for h in hooks:
            h.remove()
    counts = counter.get_flop_counts()
    modules = dict(model.named_modules())
    rows = [{"name": name, "type": type(modules[name]).__name__,
             "params": sum(p.numel() for p in modules[name].parameters(recurse=False)),
             "output_shape": shapes[name],
             "flops": sum(counts.get(f"{root}.{name}", {}).values())} for name in order]
    return rows, counter.get_total_flops()


@contextlib.contextmanager
def _quiet_stderr():
    # The profiler's C++ side (kineto) writes status lines and, on machines without a GPU, an "ERROR ...
    # gpuGetDeviceCount" line straight to fd 2. Python exceptions still surface: they are raised, not printed.
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def memory(model, x):
    """Bytes: parameters + buffers; the activation peak of one forward pass, from the profiler's allocation
    events replayed in time order (tracemalloc can't see torch's allocator); the process's peak RSS so far."""
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    with _quiet_stderr(), torch.inference_mode(), profile(activities=[ProfilerActivity.CPU],
                                                           profile_memory=True) as prof:
        model(x)
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return {"weights_bytes": weights, "activation_peak_bytes": peak,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def latency_samples(fn, warmup, runs):
    """Seconds per call of fn(), after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - start) / 1e9)
    return samples


def latency_stats(samples, batch_size):
    """Milliseconds: p50, p90, mean, IQR; p99 only from 1000 samples on (fewer can't support it);
    throughput in items per second from the mean."""
    ms = sorted(s * 1000 for s in samples)
    q = statistics.quantiles(ms, n=100, method="inclusive")  # q[k-1] = k-th percentile
    stats = {"p50_ms": statistics.median(ms), "p90_ms": q[89], "mean_ms": statistics.fmean(ms),
             "iqr_ms": q[74] - q[24], "runs": len(ms), "throughput_per_s": batch_size * 1000 / statistics.fmean(ms),
             "p90_p50": q[89] / statistics.median(ms)}  # dispersion: 1.0 = every run alike
    if len(ms) >= 1000:
        stats["p99_ms"] = q[98]
    return stats


def model_latency(model, x, warmup, runs):
    model.eval()
    with torch.inference_mode():
        return latency_stats(latency_samples(lambda: model(x), warmup, runs), x.shape[0])


def interleaved_latency(fns, x, warmup, rounds, baseline="fp32"):
    """Time every fn(x) once per round, the order rotating each round so no variant always runs first.
    Returns {name: latency stats + speedup (median of per-round baseline / variant ratios) and its 95% interval
    (bootstrap over rounds)}."""
    names = list(fns)
    with torch.inference_mode():
        for fn in fns.values():
            for _ in range(warmup):
                fn(x)
        times = {n: [] for n in names}
        for r in range(rounds):
            for n in names[r % len(names):] + names[:r % len(names)]:
                start = time.perf_counter_ns()
                fns[n](x)
                times[n].append((time.perf_counter_ns() - start) / 1e9)
    out = {}
    for n in names:
        low, high = median_interval(round_ratios(times[baseline], times[n]))
        out[n] = {**latency_stats(times[n], x.shape[0]), "speedup": pairwise_speedup(times[baseline], times[n]),
                  "speedup_ci_low": low, "speedup_ci_high": high}
    return out


def round_ratios(baseline, variant):
    """baseline / variant time of each interleaved round."""
    return [b / v for b, v in zip(baseline, variant, strict=True)]


def pairwise_speedup(baseline, variant):
    return statistics.median(round_ratios(baseline, variant))


def median_interval(values, resamples=1000, level=0.95, seed=0):
    """Percentile bootstrap interval of the median of `values` (seeded: the same values, the same interval)."""
    x = torch.tensor(values, dtype=torch.float64)
    idx = torch.randint(0, len(x), (resamples, len(x)), generator=torch.Generator().manual_seed(seed))
    medians = x[idx].quantile(0.5, dim=1)
    low, high = torch.quantile(medians, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    return low.item(), high.item()


def reliability(stats, max_p90_p50, max_interval_width):
    """Whether a latency figure (and its speedup, when it has one) can be trusted: dispersion within
    max_p90_p50, and the speedup's 95% interval no wider than max_interval_width x the speedup. Returns
    (reliable, reason); the reason names the figure that failed."""
    if stats["p90_p50"] > max_p90_p50:
        return False, f"p90/p50 {stats['p90_p50']:.2f} > {max_p90_p50} (the machine was busy while timing)"
    if "speedup" in stats:
        width = (stats["speedup_ci_high"] - stats["speedup_ci_low"]) / stats["speedup"]
        if width > max_interval_width:
            return False, (f"speedup {stats['speedup']:.2f}x has a 95% interval [{stats['speedup_ci_low']:.2f}, "
                           f"{stats['speedup_ci_high']:.2f}] wider than {max_interval_width:.0%} of it")
    return True, "ok"


def environment():
    """What a latency figure depends on, recorded beside it."""
    cpu, flags = platform.processor() or platform.machine(), []
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                cpu = value.strip()
            elif key.strip() == "flags":
                flags = sorted(set(value.split()) & {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8",
                                                      "amx_bf16", "fma"})
                break
    return {"device": "cpu", "cpu": cpu, "cpu_flags": flags, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version()}


def family(model):
    """The network's class, under the normalisation wrapper (Unet, ResNet, MobileNetV2...)."""
    net = getattr(model, "net", model)
    return type(net).__name__ if isinstance(net, nn.Module) else type(model).__name__
