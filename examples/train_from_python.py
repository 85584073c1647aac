"""Launch a distributed rayreward run from Python: the job config built in code, fit on Ray.

The same run as ``rayreward train --config FILE KEY=VALUE ...``, for when training is one
step of a larger program (a pipeline, a notebook, an experiment driver). The config is a
nested dict mirroring the YAML files of ``examples/configs``, validated in full before Ray
starts; overrides are the same dotted strings the command line takes.

    python examples/train_from_python.py                        # embedded local Ray, tiny model, 2 CPU workers
    python examples/train_from_python.py --max-steps 30 --workers 2 --storage runs
    RAY_ADDRESS=127.0.0.1:6379 python examples/train_from_python.py   # a running cluster (cluster/local.sh env)
    python examples/train_from_python.py --config examples/configs/gpt2_zero2.yaml scaling.num_workers=8

It prints the final metrics, then loads the exported model with plain transformers and
scores a chosen and a rejected answer with it.
"""

from __future__ import annotations

import argparse
import os

# The job, as a YAML file would hold it. Keys not given keep their defaults (see
# `rayreward train --help`); every value is checked before anything starts.
JOB = {
    "model": {"name_or_path": "builtin:tiny-llama"},       # a hub name or a folder for real runs
    "data": {"max_length": 256},                          # default data: the bundled sample pairs
    "train": {"max_steps": 60, "eval_steps": 20, "save_steps": 20, "logging_steps": 10},
    "deepspeed": {"stage": 2},
    "scaling": {"num_workers": 2, "use_gpu": False},
    "storage": {"path": "runs", "name": "from-python"},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="start from this YAML job config instead of the JOB dict above")
    parser.add_argument("--max-steps", type=int, help="train.max_steps")
    parser.add_argument("--workers", type=int, help="scaling.num_workers")
    parser.add_argument("--storage", help="storage.path: a folder every node sees, or s3://...")
    parser.add_argument("--name", help="storage.name: the run folder; the same name resumes the run")
    parser.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else an embedded local Ray)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, as on the command line")
    args = parser.parse_args(argv)

    # Before ray is imported: an embedded Ray (no --address, no RAY_ADDRESS) stays on 127.0.0.1.
    from rayreward.runtime.ray_session import prepare_environment, ray_session

    prepare_environment(["--address"] if args.address else [])

    from rayreward.run.fit import fit
    from rayreward.job.config import ConfigError, apply_overrides, job_from_dict, load_job_config

    # 1. Config: a dict (or a file) plus overrides, validated at once.
    overrides = list(args.overrides)
    for flag, key in ((args.max_steps, "train.max_steps"), (args.workers, "scaling.num_workers"),
                      (args.storage, "storage.path"), (args.name, "storage.name")):
        if flag is not None:
            overrides.append(f"{key}={flag}")
    try:
        if args.config:
            job = load_job_config(args.config, overrides)
        else:
            job = job_from_dict(apply_overrides(JOB, overrides), source="train_from_python.JOB")
    except ConfigError as exc:
        print(exc)
        return 2

    # 2. Ray: the cluster named by --address / RAY_ADDRESS, or one embedded in this process
    # on loopback, with CPU slots beyond the workers' for Ray Data's tasks; an embedded Ray
    # is stopped with every process it started when the block ends. (A Ray this program
    # already started is used as it is.)
    cpus = int(job.scaling.max_workers * job.scaling.cpus_per_worker) + 2
    with ray_session(args.address, num_cpus=cpus):
        # 3. Fit: trains on the workers, checkpoints to storage, exports the final model.
        outcome = fit(job)
    shown = {k: outcome.metrics[k] for k in ("eval_accuracy", "eval_loss", "loss") if k in outcome.metrics}
    print("final metrics:", ", ".join(f"{k} {v:.4f}" for k, v in shown.items()))
    print("model:", outcome.model_dir)

    # 4. Use: the export is a plain Hugging Face model directory.
    if "://" not in outcome.model_dir:
        score_pair(outcome.model_dir)
    return 0


def score_pair(model_dir: str) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt = "Human: How do I keep basil fresh?\nAssistant:"
    answers = [" Trim the stems and keep it in a glass of water on the counter, loosely covered.",
               " Why would I know that? Look it up."]
    texts = [prompt + a + tokenizer.eos_token for a in answers]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        rewards = model(**batch).logits.squeeze(-1).tolist()
    for answer, reward in zip(answers, rewards):
        print(f"reward {reward:+.3f} {answer.strip()}")


if __name__ == "__main__":
    raise SystemExit(main())
