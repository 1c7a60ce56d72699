"""Run by tests/test_placement.py under torchrun: one ditched backward with the model sharded by
torch FSDP2 (``fully_shard`` per decoder layer and at the root) over CPU ranks (gloo).

Each rank takes one example of the batch and saves nothing but, on rank 0, the full
(all-gathered) gradients; the test compares them with one process on the whole batch.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, os.path.dirname(__file__))
from conftest import padded_batch, random_keep, tiny_model  # noqa: E402

from tokenseek.ditching.loss import ditched_loss_sums, kept_targets  # noqa: E402
from tokenseek.models.introspect import decoder_layers  # noqa: E402


def batch():
    """Two examples, their kept-target labels and keep mask."""
    input_ids, attention_mask, labels = padded_batch(seed=1, lengths=(31, 12))
    keep = random_keep(attention_mask, 0.3, seed=2)
    return input_ids, attention_mask, kept_targets(labels, keep), keep


def main(arch: str, out: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    input_ids, attention_mask, targets, keep = batch()
    count = int((targets != -100).sum())  # kept targets of both ranks' examples
    model = tiny_model(arch)
    mesh = init_device_mesh("cpu", (world,))
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    sharded = sum(p.to_local().numel() < p.numel() for p in model.parameters())
    mine = slice(rank, rank + 1)
    # loss_chunk=0: the LM head runs inside the root module's forward, where FSDP2 gathers its weights.
    total = ditched_loss_sums(model, input_ids[mine], targets[mine], keep[mine], attention_mask[mine], loss_chunk=0).total.sum()
    # FSDP averages gradients over ranks; the divisor already counts every rank's targets.
    (total * world / count).backward()
    grads = {k: p.grad.full_tensor() for k, p in model.named_parameters()}
    if rank == 0:
        torch.save({"grads": grads, "sharded": sharded, "params": len(grads)}, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
