"""GPU pinning for `cleantrain bench --jobs N`: each run sees one GPU (CUDA_VISIBLE_DEVICES).

With G visible GPUs and N jobs, a new run goes to the GPU with the fewest runs on it, so N ≤ G gives
one run per GPU and N > G shares them evenly. Without GPUs nothing is pinned.
"""

from __future__ import annotations

import os


def visible_gpus(environ: dict[str, str] | None = None) -> list[str]:
    """The GPUs runs may use: the entries of CUDA_VISIBLE_DEVICES when it is set, else every GPU torch sees."""
    env = os.environ if environ is None else environ
    listed = env.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        ids = [g.strip() for g in listed.split(",") if g.strip()]
        return [] if not ids or ids[0] == "-1" else ids
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # no usable CUDA runtime
        return []


def pick_gpu(gpus: list[str], busy: list[str | None]) -> str | None:
    """The GPU for the next run: the one with the fewest of the `busy` runs on it (first such); None without GPUs."""
    if not gpus:
        return None
    return min(gpus, key=lambda g: sum(b == g for b in busy))
