"""`aspo.distributed.close` frees the gloo process group inside the call: run under a launcher, 2 processes.

usage: python teardown.py ddp|fsdp
The group's destructor joins its worker threads (named ``pt_gloo_runloop``), with the GIL released only when
a Python handle drops the last reference; left to the DDP reducer's release (GIL held) it can deadlock with a
worker that needs the GIL to retire a finished work. With DDP the workers must be gone when ``close``
returns. Under FSDP (torch 2.13) an owner in torch's C++ keeps the group alive past ``close`` and past the
model; the check there is that ``close`` returns and the process exits.
"""

import os
import sys
import weakref

import torch
import torch.distributed as dist
from accelerate import Accelerator

from aspo.distributed import before_process_group, close, shard


def gloo_workers() -> int:
    names = [open(f"/proc/self/task/{tid}/comm").read().strip() for tid in os.listdir("/proc/self/task")]
    return sum(name.startswith("pt_gloo") for name in names)


def main(mode):
    before_process_group()
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    if mode == "fsdp":
        shard(model)
    else:
        model = accelerator.prepare(model)
    model(torch.ones(2, 4)).sum().backward()  # DDP: the reducer's all-reduce; FSDP: gathers and scatters
    handle = weakref.ref(dist.group.WORLD)
    assert gloo_workers() > 0, "no gloo worker threads found: the check below would prove nothing"
    close(accelerator, model)
    if mode == "ddp":
        assert handle() is None and gloo_workers() == 0, "the process group outlived close()"


main(sys.argv[1])
print("torn down", flush=True)
