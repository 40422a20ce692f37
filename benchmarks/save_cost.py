"""What one periodic checkpoint costs, measured directly rather than as a difference of runs.

    python benchmarks/save_cost.py SPEC --server-pid PID [--saves 5]

Builds the spec's trainer, trains a few steps (so the optimizer holds its state), then
saves the training state `--saves` times through runner's own code, each step timed:

- snapshot: serialising the state on the training thread; training waits for this.
- client CPU: this process's CPU time while the upload, verify and commit run (all its
  threads: gcsfs uploads from a thread of its own).
- server CPU: the store's CPU time meanwhile (fake-gcs-server, read from /proc), which
  on a real run is Google's, not the training machine's.

The sum per save bounds what training can lose to it, if a save costs training nothing
but CPU time (not, say, caches the upload evicts): at worst all of that CPU is taken from
the training threads. Prints one JSON line of medians. A child of bench.py, run in a
fresh process like everything it measures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid`, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


class FewSteps:
    """Training events that stop the loop after `steps` steps."""

    def __init__(self, steps: int):
        self.left = steps

    def epoch_start(self, epoch: int, batch: int, batches: int) -> None:
        pass

    def step(self, batch: int, running: object) -> None:
        self.left -= 1

    def epoch_end(self, record: dict) -> None:
        pass

    def done(self) -> bool:
        return self.left <= 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", help="a job spec whose checkpoint.dir is the store to save to")
    parser.add_argument("--server-pid", type=int, required=True, help="the store's process, for its CPU time")
    parser.add_argument("--saves", type=int, default=5)
    args = parser.parse_args()

    from runner.rundir.layout import RunDir
    from runner.rundir.writer import encode
    from runner.spec import load_spec, to_toml
    from runner.training.session import build_trainer

    spec = load_spec(args.spec)
    trainer = build_trainer(spec)
    events = FewSteps(3)
    trainer.fit(events, events.done)
    state, spec_toml, pre = trainer.state, to_toml(spec), trainer.info.preprocessing.to_dict()
    store = RunDir(spec.checkpoint.dir).checkpoint_writer(keep=2)
    store.refresh()
    store.claim(None)

    snapshot, client, server, size = [], [], [], 0
    for _ in range(args.saves):
        started = time.perf_counter()
        payload = encode(state.state_dict(), spec_toml, pre)  # what the training thread does per save
        snapshot.append(time.perf_counter() - started)
        client_before, server_before = time.process_time(), cpu_s(args.server_pid)
        store.commit(payload, {"epoch": state.epoch, "batch": state.batch, "step": state.step})
        client.append(time.process_time() - client_before)
        server.append(cpu_s(args.server_pid) - server_before)
        size = len(payload)
    timings = {"snapshot_s": snapshot, "client_cpu_s": client, "server_cpu_s": server}
    medians = {name: statistics.median(values) for name, values in timings.items()}
    print(json.dumps({"model": spec.model, "state_mb": size / 1e6, "saves": args.saves, **medians}))


if __name__ == "__main__":
    main()
