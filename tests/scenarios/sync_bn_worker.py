"""Run by test_distributed.py under torchrun (2 CPU processes, gloo): one synchronized batch-norm
forward/backward on this rank's half of a fixed batch; saves what the test compares."""
import os
import sys

import torch
import torch.distributed as dist

from medseg.training.distributed import convert_sync_batchnorm

if __name__ == "__main__":
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    data = torch.load(sys.argv[1])
    bn = convert_sync_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm3d(data["x"].shape[1])), torch.device("cpu"))
    part = data["x"].chunk(world)[rank].clone().requires_grad_(True)
    y = bn(part)
    y.backward(data["grad_out"].chunk(world)[rank])
    torch.save({"y": y.detach(), "grad": part.grad, "running_mean": bn[0].running_mean, "running_var":
                bn[0].running_var, "weight_grad": bn[0].weight.grad, "type": type(bn[0]).__name__},
               f"{sys.argv[2]}.rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()
    # Both ranks have saved their results. Skip interpreter teardown: gloo's worker threads can abort
    # the process there ("terminate called without an active exception", seen once in a fresh-clone CI run).
    sys.stdout.flush()
    os._exit(0)
