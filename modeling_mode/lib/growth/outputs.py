"""What a changed MODE's folder guarantees: every expert it kept is its parent's, byte for byte (`expert_digests`,
checked on the saved files before a grown or shrunk MODE lands; the main job's growth report compares them too)."""

import hashlib
import os
from pathlib import Path

import torch
from safetensors import safe_open

from ...adapters import ADAPTER_STACKS

EXPERT_PREFIX = "experts."
SEED_PREFIX = "seed_model."  # a LoRA MODE's shared seed, its adapted layers holding every expert's adapters


def expert_digests(model_dir: str | os.PathLike) -> list[str]:
    """One SHA-256 per expert of the MODE saved in `model_dir`, over its tensors' names (within the expert) and
    bytes, as stored: equal digests mean the same weights, whatever the expert's index in either MODE. A LoRA
    expert's tensors are the shared seed's and its own slice of each adapter stack."""
    tensors, shared = {}, {}
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as stored:
            for name in stored.keys():
                if name.startswith(EXPERT_PREFIX):
                    index, _, within = name.removeprefix(EXPERT_PREFIX).partition(".")
                    tensors.setdefault(int(index), {})[within] = stored.get_tensor(name)
                elif name.startswith(SEED_PREFIX) and name.endswith(ADAPTER_STACKS):
                    for index, adapter in enumerate(stored.get_tensor(name)):
                        tensors.setdefault(index, {})[name.removeprefix(SEED_PREFIX)] = adapter
                elif name.startswith(SEED_PREFIX):
                    shared[name.removeprefix(SEED_PREFIX)] = stored.get_tensor(name)
    for expert in tensors.values():
        expert.update(shared)
    digests = []
    for index in sorted(tensors):
        digest = hashlib.sha256()
        for within, tensor in sorted(tensors[index].items()):
            digest.update(within.encode() + str(tensor.dtype).encode() + str(list(tensor.shape)).encode())
            digest.update(tensor.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
        digests.append(digest.hexdigest())
    return digests
