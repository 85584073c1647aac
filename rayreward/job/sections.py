"""The sections of the job config other than ``data`` and ``train``: one dataclass each.

Each field's default and ``help`` live here (``--help`` prints them); each section's
``validate`` returns its problems as ``"section.field: got X; expected Y"``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from rayreward.data.config import is_int, is_number
from rayreward.job.tree import type_problems

DTYPES = ("auto", "float32", "bfloat16", "float16")
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_SPREAD", "STRICT_PACK")
CHECKPOINT_UPLOADS = ("sync", "async")
CHECKPOINT_EVALS = ("trainer", "ray")


@dataclass
class ModelSection:
    """The reward model to train."""

    name_or_path: str = field(
        default="builtin:tiny-llama",
        metadata={"help": "Hugging Face model name or local folder, or builtin:tiny-llama|tiny-gpt2|tiny-bert "
                          "(small models built from a config: no download)."},
    )
    revision: str | None = field(
        default=None, metadata={"help": "Hub revision (branch, tag or commit) of the model and its tokenizer; null: main."}
    )
    dtype: str = field(default="auto", metadata={
        "help": f"Weights dtype when loading: one of {', '.join(DTYPES)}. auto: float32 master weights whatever the "
                "checkpoint holds (bf16 compute: train.bf16); bfloat16/float16 train pure low-precision weights, "
                "with a warning."})
    attn_implementation: str | None = field(
        default=None, metadata={"help": "Attention kernel (eager, sdpa, flash_attention_2); null lets transformers choose."}
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Run model code shipped with a hub checkpoint; off unless you trust it."}
    )

    def validate(self) -> list[str]:
        problems = type_problems(self, "model")
        if isinstance(self.name_or_path, str) and not self.name_or_path.strip():
            problems.append("model.name_or_path: got ''; expected a model name, folder or builtin:tiny-llama")
        if isinstance(self.revision, str) and not self.revision.strip():
            problems.append("model.revision: got ''; expected a branch, tag or commit of the hub model, or null")
        if self.dtype not in DTYPES:
            problems.append(f"model.dtype: got {self.dtype!r}; expected one of {', '.join(DTYPES)}")
        return problems


@dataclass
class LoraSection:
    """Low-rank adapters (PEFT LoRA); the reward head is trained in full."""

    enabled: bool = field(default=False, metadata={"help": "Train LoRA adapters instead of every weight."})
    r: int = field(default=8, metadata={"help": "Rank of the adapters."})
    alpha: float = field(default=16, metadata={"help": "Scaling numerator (lora_alpha); the update is scaled by alpha/r."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout on the adapters' input."})
    target_modules: str | list[str] = field(
        default="all-linear", metadata={"help": "Modules to adapt: a list of names, or all-linear."}
    )

    def validate(self) -> list[str]:
        problems = type_problems(self, "lora")
        if isinstance(self.r, int) and not isinstance(self.r, bool) and self.r <= 0:
            problems.append(f"lora.r: got {self.r}; expected a positive integer")
        if isinstance(self.alpha, (int, float)) and self.alpha <= 0:
            problems.append(f"lora.alpha: got {self.alpha}; expected a positive number")
        if isinstance(self.dropout, (int, float)) and not 0 <= self.dropout < 1:
            problems.append(f"lora.dropout: got {self.dropout}; expected a probability in [0, 1)")
        return problems


@dataclass
class DeepSpeedSection:
    """DeepSpeed ZeRO, generated with "auto" values the Hugging Face integration fills in."""

    stage: int = field(default=2, metadata={"help": "ZeRO stage: 0 (data parallel), 1 (optimizer state sharded), "
                                                    "2 (+ gradients), 3 (+ parameters)."})
    offload_optimizer: bool = field(default=False, metadata={"help": "Keep optimizer state in CPU memory (needs stage >= 2)."})
    offload_param: bool = field(default=False, metadata={"help": "Keep parameters in CPU memory (needs stage 3)."})
    config: str | None = field(
        default=None, metadata={"help": "Path to your own DeepSpeed JSON; it replaces stage and offload_*."}
    )

    def validate(self) -> list[str]:
        problems = type_problems(self, "deepspeed")
        if self.stage not in (0, 1, 2, 3):
            problems.append(f"deepspeed.stage: got {self.stage!r}; expected 0, 1, 2 or 3")
        elif self.offload_optimizer is True and self.stage < 2:
            problems.append(f"deepspeed.offload_optimizer: got true with deepspeed.stage={self.stage}; "
                            "expected deepspeed.stage >= 2 (ZeRO-Offload), or offload_optimizer=false")
        elif self.offload_param is True and self.stage < 3:
            problems.append(f"deepspeed.offload_param: got true with deepspeed.stage={self.stage}; "
                            "expected deepspeed.stage=3, or offload_param=false")
        if isinstance(self.config, str):
            if self.offload_optimizer or self.offload_param:
                problems.append("deepspeed.config: got a file and offload_* set; expected one or the other "
                                "(put the offload settings in the file)")
            try:
                with open(self.config, encoding="utf-8") as f:
                    if not isinstance(json.load(f), dict):
                        problems.append(f"deepspeed.config: got {self.config!r}; expected a JSON object in it")
            except OSError as exc:
                problems.append(f"deepspeed.config: got {self.config!r}; cannot read it ({exc.strerror})")
            except json.JSONDecodeError as exc:
                problems.append(f"deepspeed.config: got {self.config!r}; not valid JSON ({exc})")
        return problems


@dataclass
class ScalingSection:
    """Training workers and what each one reserves."""

    num_workers: int | list[int] = field(
        default=2,
        metadata={"help": "Training workers (one process each, one rank of DeepSpeed); [min, max] for elastic "
                          "training: the run goes on with as few as min workers when nodes are lost and grows back "
                          "to max, keeping the global batch (see README: elastic training)."},
    )
    placement_strategy: str = field(
        default="PACK",
        metadata={"help": f"How workers are spread over nodes: {', '.join(PLACEMENT_STRATEGIES)} (Ray placement "
                          "group strategies; STRICT_SPREAD needs a node per worker)."},
    )
    resize_check_s: float = field(
        default=60.0,
        metadata={"help": "Elastic runs: seconds between checks for room to grow the worker group back."},
    )
    use_gpu: bool | str = field(
        default="auto",
        metadata={"help": "Give each worker GPUs (gpus_per_worker): true, false, or auto (GPUs when the cluster has "
                          "them; the run's first lines say which was chosen)."})
    cpus_per_worker: float = field(
        default=1.0, metadata={"help": "Logical CPUs each worker reserves; also its torch thread count (fractions allowed)."}
    )
    gpus_per_worker: float = field(default=1.0, metadata={"help": "GPUs each worker reserves when use_gpu is true."})
    resources: dict = field(
        default_factory=dict, metadata={"help": "Other Ray resources each worker reserves, e.g. {memory: 4e9}."}
    )

    def validate(self) -> list[str]:
        problems = type_problems(self, "scaling")
        if is_int(self.num_workers) and self.num_workers < 1:
            problems.append(f"scaling.num_workers: got {self.num_workers}; expected a positive integer")
        elif isinstance(self.num_workers, list) and (
                len(self.num_workers) != 2 or not all(is_int(n) and n >= 1 for n in self.num_workers)
                or self.num_workers[0] > self.num_workers[1]):
            problems.append(f"scaling.num_workers: got {self.num_workers}; expected a positive integer or "
                            "[min, max] with 1 <= min <= max")
        if self.placement_strategy not in PLACEMENT_STRATEGIES:
            problems.append(f"scaling.placement_strategy: got {self.placement_strategy!r}; expected one of "
                            f"{', '.join(PLACEMENT_STRATEGIES)}")
        if is_number(self.resize_check_s) and self.resize_check_s <= 0:
            problems.append(f"scaling.resize_check_s: got {self.resize_check_s}; expected a positive number")
        if is_number(self.cpus_per_worker) and self.cpus_per_worker <= 0:
            problems.append(f"scaling.cpus_per_worker: got {self.cpus_per_worker}; expected a positive number")
        if isinstance(self.use_gpu, str) and self.use_gpu != "auto":
            problems.append(f"scaling.use_gpu: got {self.use_gpu!r}; expected true, false or auto")
        if self.use_gpu is True and is_number(self.gpus_per_worker) and self.gpus_per_worker <= 0:
            problems.append(f"scaling.gpus_per_worker: got {self.gpus_per_worker} with use_gpu=true; "
                            "expected a positive number")
        if isinstance(self.resources, dict):
            for key, value in self.resources.items():
                if key in ("CPU", "GPU"):
                    problems.append(f"scaling.resources.{key}: use scaling.{key.lower()}s_per_worker")
                elif not is_number(value) or value < 0:
                    problems.append(f"scaling.resources.{key}: got {value!r}; expected a non-negative number")
        return problems

    def resolved(self, cluster_gpus: float) -> "ScalingSection":
        """This section with ``use_gpu: auto`` decided by the GPUs the cluster has (a copy)."""
        if self.use_gpu != "auto":
            return self
        return dataclasses.replace(self, use_gpu=cluster_gpus > 0)

    @property
    def elastic(self) -> bool:
        """Whether the worker count is a [min, max] range."""
        return isinstance(self.num_workers, list)

    @property
    def min_workers(self) -> int:
        return self.num_workers[0] if self.elastic else self.num_workers

    @property
    def max_workers(self) -> int:
        """The most workers the run uses: the world size its global batch is planned for."""
        return self.num_workers[1] if self.elastic else self.num_workers


@dataclass
class StorageSection:
    """Where checkpoints, the final model and the metrics go."""

    path: str = field(
        default="runs",
        metadata={"help": "A local/NFS folder (relative paths are made absolute) or an object-store URI "
                          "(s3://bucket/prefix; AWS_ENDPOINT_URL selects an S3-compatible endpoint)."},
    )
    name: str | None = field(
        default=None,
        metadata={"help": "Run name: its folder under path. Re-running with the same name resumes its latest "
                          "checkpoint; null makes a new reward-<date>-<time> run."},
    )
    num_to_keep: int | None = field(default=2, metadata={"help": "Checkpoints kept in storage; null keeps all."})
    checkpoint_score_attribute: str | None = field(
        default=None,
        metadata={"help": "Metric that ranks checkpoints (e.g. eval_accuracy): the worst are deleted first and the "
                          "best is exported; null keeps the latest and exports the last."},
    )
    checkpoint_score_order: str = field(default="max", metadata={"help": "max or min: which scores are better."})
    checkpoint_upload: str = field(
        default="sync",
        metadata={"help": "sync: training waits while a checkpoint is copied to storage; async: the copy runs in "
                          "the background and training goes on (Ray's CheckpointUploadMode.ASYNC)."},
    )
    checkpoint_eval: str = field(
        default="trainer",
        metadata={"help": "trainer: the workers evaluate at train.eval_steps and wait for it; ray: each checkpoint "
                          "is scored on the eval pairs in a Ray task beside training (Ray Train's checkpoint "
                          "validation), its eval_* metrics join the checkpoint's, and the in-loop evaluation is "
                          "off unless train.eval_strategy is set."},
    )

    def validate(self) -> list[str]:
        problems = type_problems(self, "storage")
        if isinstance(self.path, str) and not self.path.strip():
            problems.append("storage.path: got ''; expected a folder or a URI such as s3://bucket/runs")
        if isinstance(self.name, str) and (not self.name or "/" in self.name or self.name in (".", "..")):
            problems.append(f"storage.name: got {self.name!r}; expected a folder name without '/'")
        if is_int(self.num_to_keep) and self.num_to_keep < 1:
            problems.append(f"storage.num_to_keep: got {self.num_to_keep}; expected a positive integer or null")
        if self.checkpoint_score_order not in ("max", "min"):
            problems.append(f"storage.checkpoint_score_order: got {self.checkpoint_score_order!r}; expected max or min")
        if self.checkpoint_upload not in CHECKPOINT_UPLOADS:
            problems.append(f"storage.checkpoint_upload: got {self.checkpoint_upload!r}; expected sync or async")
        if self.checkpoint_eval not in CHECKPOINT_EVALS:
            problems.append(f"storage.checkpoint_eval: got {self.checkpoint_eval!r}; expected trainer or ray")
        return problems


@dataclass
class FailureSection:
    """What happens when a worker dies."""

    max_failures: int = field(
        default=1, metadata={"help": "Restarts of the worker group (from the latest checkpoint) before the run "
                                     "fails; -1 retries forever."})

    def validate(self) -> list[str]:
        problems = type_problems(self, "failure")
        if is_int(self.max_failures) and self.max_failures < -1:
            problems.append(f"failure.max_failures: got {self.max_failures}; expected -1 or more")
        return problems


def elastic_problems(job) -> list[str]:
    """What an elastic run (``scaling.num_workers: [min, max]``) cannot do, found at config time.

    ZeRO-1/2/3 checkpoints hold one shard per rank; a resume at another world size
    converts them to DeepSpeed's universal format first (``rayreward.core.universal``).
    DeepSpeed cannot do that for optimizer state swapped to NVMe (a user's DeepSpeed
    file), which is refused here. The exact data position needs a repeatable order of a
    stream of known length: materialized data.
    """
    s = job.scaling
    if not s.elastic or not isinstance(s.num_workers, list):
        return []
    problems = []
    if isinstance(job.deepspeed.config, str):
        try:
            with open(job.deepspeed.config, encoding="utf-8") as f:
                zero = json.load(f).get("zero_optimization", {})
            nvme = [k for k in ("offload_optimizer", "offload_param") if (zero.get(k) or {}).get("device") == "nvme"]
        except (OSError, ValueError, AttributeError):
            nvme = []  # the deepspeed section reports an unreadable file itself
        if nvme:
            problems.append(f"scaling.num_workers: got {s.num_workers} (elastic) with {job.deepspeed.config} "
                            f"offloading to NVMe ({', '.join(f'zero_optimization.{k}' for k in nvme)}); DeepSpeed's "
                            "universal checkpoint, which reloads ZeRO state at another world size, does not cover "
                            "NVMe-swapped state; expected device cpu or none, or a fixed scaling.num_workers")
    if job.data.materialize is False:
        problems.append(f"scaling.num_workers: got {s.num_workers} (elastic) with data.materialize=false; elastic "
                        "runs need the data materialized (one repeatable order, so no pair is skipped or seen "
                        "twice when the world size changes)")
    return problems
