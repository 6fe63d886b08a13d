"""`aspo train` under a launcher, with one rank sending SIGTERM at a chosen moment; run once per rank.

usage: python signal_at.py RANK WHEN TARGET [aspo train overrides]
WHEN: ``step-N`` (right after this rank finished step N's update, before its eval, log and the ranks'
agreement) or ``finished`` (after `Trainer.train` returned, before the process group is torn down).
TARGET: ``self`` (this rank alone is signalled) or ``launcher`` (the launcher, which passes it to every rank;
this rank then waits until its own copy has arrived, so the outcome does not depend on when it does).
"""

import os
import signal
import sys
import time

from aspo.cli import main
from aspo.trainer import Trainer

rank, when, target = int(sys.argv[1]), sys.argv[2], sys.argv[3]


def send(trainer):
    if trainer.rank != rank:
        return
    if target == "self":
        signal.raise_signal(signal.SIGTERM)
        return
    os.kill(os.getppid(), signal.SIGTERM)  # the launcher: accelerate's agent runs in the parent process
    deadline = time.time() + 60
    while trainer.graceful_stop.signum is None and time.time() < deadline:
        time.sleep(0.01)


if when.startswith("step-"):
    train_step = Trainer.train_step

    def train_step_then_signal(self):
        metrics = train_step(self)
        if self.step == int(when.removeprefix("step-")):
            send(self)
        return metrics

    Trainer.train_step = train_step_then_signal
else:
    assert when == "finished", when
    train = Trainer.train

    def train_then_signal(self):
        train(self)
        send(self)

    Trainer.train = train_then_signal

sys.argv[1:] = ["train", *sys.argv[4:]]  # the command's own entry, as `aspo train ...` runs it
sys.exit(main())
