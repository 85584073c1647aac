"""A ZeRO-3 checkpoint saved by 2 ranks resumes on 1 through DeepSpeed's universal format.

The elastic node-loss run in test_multinode covers ZeRO-2 through Ray; this covers the
stage that also shards the parameters, with DeepSpeed alone (two processes on gloo, a
small torch model), and checks that Adam's state crossed the world-size change.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from process_helpers import ROOT

pytestmark = pytest.mark.slow

_SCRIPT = r'''
import os, sys, torch, torch.multiprocessing as mp

def config(world):
    return {"train_batch_size": 4, "train_micro_batch_size_per_gpu": 4 // world, "gradient_accumulation_steps": 1,
            "zero_optimization": {"stage": 3}, "zero_allow_untested_optimizer": True, "steps_per_print": 10**9}

def adam(engine):
    slots = [v for v in engine.optimizer.optimizer.state.values() if "exp_avg" in v]
    return max(float(v["step"]) for v in slots), float(sum((v["exp_avg"].double() ** 2).sum() for v in slots))

def say(*words):
    # One write() per line: two ranks share this pipe, and print() writes word by word.
    os.write(1, (" ".join(map(str, words)) + "\n").encode())

def run(rank, world, out, port, load):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    import deepspeed
    from rayreward.core.universal import needs_universal, universal_resume_folder, with_universal_loading
    deepspeed.init_distributed(dist_backend="gloo")
    cfg, folder = config(world), out
    if load:
        assert needs_universal(out, world) and not needs_universal(out, 2)
        folder, cfg = universal_resume_folder(out), with_universal_loading(cfg)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-2), config=cfg)
    if load:
        engine.load_checkpoint(folder)
    torch.manual_seed(rank)
    before = adam(engine) if load else None
    for _ in range(1 if load else 3):
        loss = engine(torch.randn(4 // world, 16)).pow(2).mean()
        engine.backward(loss)
        engine.step()
    if load:
        say("LOADED", *before)
        say("AFTER", *adam(engine))
    else:
        say("SAVED", rank, *adam(engine))
        engine.save_checkpoint(out, tag="global_step3")
    # Leave together, close the group and exit without the interpreter's teardown: a rank
    # whose process ran its C++ destructors with gloo's threads about aborted there
    # ("terminate called without an active exception", 1 run in 5 before the group was
    # closed, once in the suite after), with all its work done.
    torch.distributed.barrier()
    say("DONE", rank)
    torch.distributed.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)

if __name__ == "__main__":
    out, port, mode = sys.argv[1:]
    if mode == "save":
        mp.spawn(run, args=(2, out, port, False), nprocs=2)
    else:
        run(0, 1, out, port, True)
'''


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def lines(result: subprocess.CompletedProcess, tag: str) -> list[list[float]]:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    found = [[float(x) for x in line.split()[1:]] for line in result.stdout.splitlines() if line.startswith(tag + " ")]
    assert found, f"no {tag} line in the ranks' output:\n" + result.stdout[-3000:]
    return found


@pytest.mark.timeout(600)
def test_zero3_checkpoint_of_two_ranks_resumes_on_one_with_its_adam_state(tmp_path):
    out, script = tmp_path / "checkpoint", tmp_path / "ranks.py"
    script.write_text(_SCRIPT)  # a file: torch's spawned ranks import their function from it

    def run(mode):
        return subprocess.run([sys.executable, str(script), str(out), free_port(), mode], cwd=ROOT,
                              capture_output=True, text=True, timeout=500, env={**os.environ, "PYTHONPATH": str(ROOT)})

    result = run("save")
    assert sorted(rank for rank, in lines(result, "DONE")) == [0, 1]
    saved = lines(result, "SAVED")
    assert sorted(rank for rank, *_ in saved) == [0, 1] and all(step == 3 for _, step, _ in saved)
    loaded = run("load")
    (step, total), = lines(loaded, "LOADED")
    # Both ranks' shards of Adam's first moment, now on one rank, and its step count: not a
    # fresh optimizer (which would have no state and step 0).
    assert step == 3 and total == pytest.approx(sum(t for *_, t in saved), rel=1e-9)
    (after_step, _), = lines(loaded, "AFTER")
    assert after_step == 4
    # The conversion went to a node-local folder: the checkpoint itself is as saved.
    assert sorted(p.name for p in out.iterdir()) == ["global_step3", "latest", "zero_to_fp32.py", "zero_to_torch.py"]
