"""The ``serve:`` section: what ``rayreward serve`` deploys, and how it scales.

A YAML file mirrors ``ServeConfig`` (``serve:`` at the top); command-line flags and
dotted overrides (``serve.batch.max_tokens=8192``) go through the same tree, so both are
checked by ``ServeConfig.validate`` before Ray starts, every problem at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from rayreward.job.tree import ConfigError, apply_overrides, build, field_docs, load_yaml, type_problems


@dataclass
class BatchSection:
    """Batching across requests (``@serve.batch``)."""

    max_tokens: int = field(default=16384, metadata={
        "help": "Most tokens (sum over texts) gathered into one batch across requests; a text never exceeds "
                "max_length, so one long text cannot blow memory."})
    forward_tokens: int = field(default=16384, metadata={
        "help": "Most tokens (rows x longest row, padding included) in one forward pass inside a batch; texts "
                "are sorted by length first."})
    wait_ms: float = field(default=5.0, metadata={
        "help": "How long a batch waits for more texts after its first one (milliseconds)."})


@dataclass
class ScalingSection:
    """Replicas and their resources."""

    num_replicas: int = field(default=1, metadata={"help": "Replicas when autoscaling is off."})
    autoscaling: bool = field(default=False, metadata={"help": "Let Serve scale between min and max replicas."})
    min_replicas: int = field(default=1, metadata={"help": "Autoscaling: fewest replicas."})
    max_replicas: int = field(default=4, metadata={"help": "Autoscaling: most replicas."})
    target_ongoing_requests: float = field(default=8.0, metadata={
        "help": "Autoscaling: requests in flight per replica that Serve aims for."})
    max_ongoing_requests: int = field(default=64, metadata={
        "help": "Requests one replica takes at once (more wait at the proxy)."})
    cpus_per_replica: float = field(default=1.0, metadata={"help": "CPUs per replica (torch uses as many threads)."})
    gpus_per_replica: float = field(default=0.0, metadata={"help": "GPUs per replica (0: run on CPU)."})


@dataclass
class ServeConfig:
    """A reward model (or an ensemble) served on Ray Serve."""

    models: list[str] = field(default_factory=list, metadata={
        "help": "Models: folders (save_pretrained, run folder, checkpoint, PEFT adapter), hub ids (org/name) or "
                "object-store folders (s3://, gs://), or one ensemble folder (ensemble.json, as `rayreward tune` "
                "exports; local or in an object store). Several make an ensemble."})
    revision: str | None = field(default=None, metadata={
        "help": "Branch, tag or commit of the hub-id models; null: main."})
    name: str | None = field(default=None, metadata={
        "help": "Deployment and application name; default: the (first) model folder's name."})
    route_prefix: str | None = field(default=None, metadata={"help": "HTTP path prefix; default: /<name>."})
    host: str | None = field(default=None, metadata={
        "help": "Address Serve's HTTP proxy binds to; null: 127.0.0.1 on an embedded Ray (or a cluster all on "
                "127.0.0.1), 0.0.0.0 on a cluster (a Ray address given, or under `ray job submit`), where the "
                "cluster's proxy serves every node."})
    port: int = field(default=8000, metadata={"help": "Port of Serve's HTTP proxy."})
    max_length: int | None = field(default=None, metadata={"help": "Token limit per text; null: the model's."})
    truncation: bool = field(default=True, metadata={
        "help": "Texts over max_length keep their last tokens (as `rayreward score`); false rejects them (422)."})
    normalize: bool = field(default=False, metadata={
        "help": "Default for requests: (reward - mean) / std with the statistics stored at export."})
    conservative_k: float = field(default=1.0, metadata={
        "help": "Ensembles: the conservative reward is mean - conservative_k * std."})
    batch: BatchSection = field(default_factory=BatchSection)
    scaling: ScalingSection = field(default_factory=ScalingSection)

    def validate(self) -> list[str]:
        """Every problem of the section, as ``serve.field: got X; expected Y`` lines."""
        problems = type_problems(self, "serve") + type_problems(self.batch, "serve.batch")
        problems += type_problems(self.scaling, "serve.scaling")
        if problems:
            return problems
        if not self.models:
            problems.append("serve.models: got []; expected at least one model (--model MODEL)")
        if self.name is not None and (not self.name or "/" in self.name):
            problems.append(f"serve.name: got {self.name!r}; expected a non-empty name without '/'")
        if self.route_prefix is not None and not self.route_prefix.startswith("/"):
            problems.append(f"serve.route_prefix: got {self.route_prefix!r}; expected a path starting with '/'")
        if not 0 < self.port < 65536:
            problems.append(f"serve.port: got {self.port}; expected a port number 1-65535")
        if self.max_length is not None and self.max_length < 1:
            problems.append(f"serve.max_length: got {self.max_length}; expected a positive integer or null")
        if not math.isfinite(self.conservative_k) or self.conservative_k < 0:
            problems.append(f"serve.conservative_k: got {self.conservative_k}; expected a number >= 0")
        b, s = self.batch, self.scaling
        for key in ("max_tokens", "forward_tokens"):
            if getattr(b, key) < 1:
                problems.append(f"serve.batch.{key}: got {getattr(b, key)}; expected a positive integer")
        if self.max_length and b.max_tokens >= 1 and b.max_tokens < self.max_length:
            problems.append(f"serve.batch.max_tokens: got {b.max_tokens}; expected at least max_length "
                            f"({self.max_length}), or a longest text could never be batched")
        if b.wait_ms < 0:
            problems.append(f"serve.batch.wait_ms: got {b.wait_ms}; expected a number >= 0")
        for key in ("num_replicas", "min_replicas", "max_replicas", "max_ongoing_requests"):
            floor = 0 if key == "min_replicas" else 1
            if getattr(s, key) < floor:
                problems.append(f"serve.scaling.{key}: got {getattr(s, key)}; expected an integer >= {floor}")
        if s.autoscaling and s.min_replicas > s.max_replicas:
            problems.append(f"serve.scaling.min_replicas: got {s.min_replicas}; expected at most max_replicas "
                            f"({s.max_replicas})")
        if s.target_ongoing_requests <= 0:
            problems.append(f"serve.scaling.target_ongoing_requests: got {s.target_ongoing_requests}; "
                            "expected a number > 0")
        if s.cpus_per_replica < 0 or s.gpus_per_replica < 0 or (s.cpus_per_replica == 0 and s.gpus_per_replica == 0):
            problems.append(f"serve.scaling: got cpus_per_replica={s.cpus_per_replica}, "
                            f"gpus_per_replica={s.gpus_per_replica}; expected numbers >= 0, not both 0")
        return problems

    @property
    def app_name(self) -> str:
        from pathlib import Path

        return self.name or Path(str(self.models[0]).rstrip("/")).name or "reward"

    @property
    def prefix(self) -> str:
        return self.route_prefix or f"/{self.app_name}"


def serve_config(raw: dict[str, Any] | None, overrides: list[str] | dict[str, Any] = (), source: str | None = None
                 ) -> ServeConfig:
    """Builds and validates a ``ServeConfig`` from a mapping (a YAML file's contents).

    Args:
        raw: the whole file (its ``serve:`` section is read) or None.
        overrides: dotted ``serve.key=value`` strings, or a mapping of dotted keys.
        source: the file name, for messages.

    Raises:
        ConfigError: every problem found (unknown keys with suggestions, wrong types,
            values out of range).

    Example:
        >>> serve_config({"serve": {"models": ["runs/rm/model"]}}, ["serve.scaling.num_replicas=2"]).scaling.num_replicas
        2
    """
    raw = dict(raw or {})
    unknown = [k for k in raw if k != "serve"]
    problems = [f"{k}: unknown section; a serve file has only 'serve:'" for k in unknown]
    tree = apply_overrides({"serve": raw.get("serve") or {}}, overrides)
    extra = [k for k in tree if k != "serve"]
    problems += [f"{k}: unknown section in an override; expected serve.<key>=<value>" for k in extra]
    config = build(ServeConfig, tree["serve"], "serve", problems)
    if not problems:
        problems += config.validate()
    if problems:
        raise ConfigError(problems, source, what="serve config")
    return config


def load_serve_config(path: str | None, overrides: list[str] | dict[str, Any] = (),
                      flags: dict[str, Any] | None = None) -> ServeConfig:
    """The ``ServeConfig`` of a YAML file (None: defaults), then dotted overrides, then the
    command line's flags (``{"serve.port": 8001}``), checked.

    Raises:
        ConfigError: every problem at once.
    """
    raw = apply_overrides(load_yaml(path) if path else {}, list(overrides) if not isinstance(overrides, dict)
                          else overrides)
    return serve_config(raw, flags or {}, source=path)


def help_text() -> str:
    """The ``serve:`` keys with their defaults and help, for ``--help``."""
    lines = ["serve: section keys (YAML or KEY=VALUE overrides):"]
    for key, default, text in field_docs(ServeConfig, "serve"):
        lines.append(f"  {key} (default {default!r}): {text}")
    return "\n".join(lines)
