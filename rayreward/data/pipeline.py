"""``build_datasets``: preference pairs from files to tokenized Ray Datasets.

Steps, on the driver:
    1. check the config and resolve every source to its files (no Ray);
    2. read the first rows of each source with pyarrow to fix its format, and encode
       them with the tokenizer, so a wrong column, a missing chat template or a bad
       first row fails in seconds (no Ray);
    3. build the Ray Data plan: read tasks that check every row where it is read,
       then ``map_batches`` tokenizer tasks (``PairEncoder``, the same code
       ``RewardTrainer`` uses, so the ids are the same), at most
       ``data.tokenize_actors`` at once; each Ray worker process loads the tokenizer
       once for every batch it is given, train's and eval's;
    4. by default, materialize it: the blocks stay in Ray's object store (spilling to
       disk), the driver holds only references, and the counts are exact.

Why materialize by default (a deadlock seen with Ray 2.60): a lazy ``map_batches`` plan is
executed while the training workers iterate their shards; on a cluster whose CPUs
are all taken by training workers, its tasks never get a CPU and training waits
forever. Tokenizing before the trainer starts removes the contention, and gives the
pair count that turns epochs into ``max_steps``. ``data.materialize: false`` streams
instead, for data larger than object store + disk: then ``max_steps`` is required
and the training side must leave CPUs over (fractional ``resources_per_worker`` or
spare logical CPUs) for the tokenizer tasks.

Why tasks, not an actor pool: an actor pool holds its CPUs for the whole execution
(two 1-CPU actors on a 2-CPU cluster starved the read tasks feeding them: a hang,
seen), and each pool starts new processes: 4-5 s for each of train and eval on a
2-core machine, most of a small run's data time. Tasks free their CPU after each
batch and run in Ray's reused worker processes.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import dataclass, field
from typing import Any

from rayreward.data.formats import BadRowError, ColumnNames, DataFormatError, LengthStats, PairEncoder
from rayreward.data.groups import GROUP_FORMATS, GroupEncoder
from rayreward.data.config import DataConfig
from rayreward.data.reader import ReadSpec, pair_datasource, probe
from rayreward.data.sources import Source, resolve_source
from rayreward.data.tokenizer import TokenizerSpec

logger = logging.getLogger(__name__)

MAX_BAD_ROW_EXAMPLES = 5
# Logical CPUs of one read task (parsing and checking rows is light next to tokenizing).
READ_TASK_CPUS = 0.5


@dataclass
class DataCounts:
    """What happened to the rows of one data set.

    Attributes:
        rows_read: rows read from the files (this split's share when split).
        bad_rows: malformed rows skipped (``on_bad_rows: skip``).
        filtered: pairs dropped by ``length_policy: filter``.
        truncated: pairs cut by ``length_policy: truncate``.
        pairs: tokenized pairs kept.
        longest: longest side seen, in tokens, before the length policy.
        bad_examples: the first few bad rows, as ``file, row N, field 'x': problem``.
        nodes: Ray nodes whose tokenizer tasks took part (one on a single machine).
    """

    rows_read: int = 0
    bad_rows: int = 0
    filtered: int = 0
    truncated: int = 0
    pairs: int = 0
    longest: int = 0
    bad_examples: list[str] = field(default_factory=list)
    nodes: int = 0

    def metrics(self, prefix: str) -> dict[str, float]:
        """Counts for a run's metrics, e.g. ``{"data/train_filtered": 3, ...}``."""
        keys = ("rows_read", "bad_rows", "filtered", "truncated", "pairs", "nodes")
        return {f"data/{prefix}_{k}": float(getattr(self, k)) for k in keys}

    def describe(self, name: str, cfg: DataConfig) -> str:
        text = f"{name}: {self.pairs} pairs from {self.rows_read} rows"
        if self.nodes > 1:
            text += f", tokenized on {self.nodes} nodes"
        if self.filtered or cfg.length_policy == "filter":
            text += f"; {self.filtered} longer than max_length={cfg.max_length} filtered out"
        if self.truncated:
            text += f"; {self.truncated} truncated to max_length={cfg.max_length}"
        if self.bad_rows:
            text += f"; {self.bad_rows} bad rows skipped, first ones:\n  " + "\n  ".join(self.bad_examples)
        return text


@dataclass
class PreparedData:
    """Tokenized train and eval data, ready for ``TorchTrainer(datasets=...)``.

    Each dataset has the columns ``input_ids_chosen`` and ``input_ids_rejected``
    (``list<int32>``, no padding; no masks: every id is a real token) and ``margin``
    (``float32``) when the data has one. Feed them with
    ``rayreward.data.iter_pair_batches``.

    Attributes:
        train: the training pairs.
        eval: the evaluation pairs, or None.
        format: the data format of the training source.
        materialized: True when tokenization is done and the counts are exact.
        train_counts: counts of the training data (None when streaming).
        eval_counts: counts of the evaluation data (None when streaming or no eval).
    """

    train: Any
    eval: Any | None
    format: str
    materialized: bool
    train_counts: DataCounts | None = None
    eval_counts: DataCounts | None = None
    _tally: Any = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        """What the data holds: ``pairs``, ``groups`` (ranked responses) or ``ratings``."""
        if self.format == "ratings":
            return "ratings"
        return "groups" if self.format in GROUP_FORMATS else "pairs"

    @property
    def unit(self) -> str:
        """What one training example is called on the console (``pairs``, ``ranked groups``, ...)."""
        return {"pairs": "pairs", "groups": "ranked groups", "ratings": "rated responses"}[self.kind]

    @property
    def num_train_pairs(self) -> int | None:
        """Number of training pairs, or None for a stream (known only once read)."""
        return self.train_counts.pairs if self.train_counts else None

    def datasets(self) -> dict[str, Any]:
        """The ``datasets`` argument of ``TorchTrainer``: ``train`` and, if any, ``eval``."""
        return {"train": self.train, **({"eval": self.eval} if self.eval is not None else {})}

    def counts_so_far(self, name: str = "train") -> DataCounts:
        """Counts gathered until now; for a stream, call it after training."""
        import ray

        return DataCounts(**ray.get(self._tally.snapshot.remote(name)))

    def release(self) -> None:
        """Stops the actor that counts rows for the tokenizer tasks, once the data is used.

        The datasets cannot run again afterwards (their tasks report to that actor),
        and a stream's counts are gone: read ``counts_so_far`` first.
        A Ray that outlives the run (a notebook, a sweep's driver) would otherwise keep
        an idle actor process: Ray does not always collect it once the datasets have
        been handed to a ``TorchTrainer``.
        """
        import ray

        if self._tally is not None and ray.is_initialized():  # else gone with its Ray already
            ray.kill(self._tally)
        self._tally = None

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, counts in (("train", self.train_counts), ("eval", self.eval_counts)):
            if counts is not None:
                out.update(counts.metrics(name))
        return out


def build_datasets(cfg: DataConfig, tokenizer: TokenizerSpec | str, attributes=None) -> PreparedData:
    """Reads, checks and tokenizes the train (and eval) pairs with Ray Data.

    Ray must be initialised by the caller (``ray.init(...)``).

    Args:
        cfg: the ``data:`` section of the job config.
        tokenizer: the job's ``TokenizerSpec`` (model, revision, chat template, EOS/pad
            tokens: the one the training workers load too), or a model id/folder/``builtin:``
            name with ``cfg.chat_template``; each worker process that tokenizes loads it once.
        attributes: the rated attributes (``train.attributes``), for ratings data.

    Returns:
        A ``PreparedData``.

    Raises:
        ValueError: the config has problems (all listed).
        DataSourceError: a source is missing, unreachable, or a hub name.
        DataFormatError: the columns fit no format, the data is conversational and no
            chat template is available, or no pair is left.
        BadRowError: a malformed row, with ``on_bad_rows: error`` (names file and row).

    Example:
        >>> prepared = build_datasets(DataConfig(train="data/train.jsonl", eval_split=0.05), "builtin:tiny-llama")
        >>> trainer = TorchTrainer(loop, datasets=prepared.datasets(), ...)
        >>> result = trainer.fit()
        >>> prepared.release()  # its row-count actor, once the data is used
    """
    # 1. Config and sources, before anything costly.
    problems = cfg.validate()
    if problems:
        raise ValueError("invalid data config:\n  " + "\n  ".join(problems))
    names = cfg.columns.names()
    train_source = resolve_source(cfg.train, "data.train", role="train")
    eval_source = resolve_source(cfg.eval, "data.eval", role="eval") if cfg.eval else None

    # 2. Format and tokenizer, checked on a few rows.
    spec = tokenizer if isinstance(tokenizer, TokenizerSpec) else TokenizerSpec(str(tokenizer), chat_template=cfg.chat_template)
    tokenizer = spec.load()
    attributes = tuple(attributes) if attributes else None
    plans = {"train": _plan(train_source, cfg, names, tokenizer, attributes)}
    if eval_source is not None:
        plans["eval"] = _plan(eval_source, cfg, names, tokenizer, attributes)
    elif cfg.eval_split:
        base = plans["train"]
        plans = {
            part: ReadSpec(base.source, base.fmt, names, base.has_prompt, base.has_margin, part, cfg.eval_split, cfg.seed,
                           attributes)
            for part in ("train", "eval")
        }

    # 3. The Ray Data plans, and 4. their execution.
    # One actor counts the rows of both parts (an actor is a process of its own).
    tally = _Tally.options(num_cpus=0).remote()
    prepared = PreparedData(train=None, eval=None, format=plans["train"].fmt, materialized=cfg.materialize,
                            _tally=tally)
    build = uuid.uuid4().hex
    for name, plan in plans.items():
        ds = _tokenized(plan, cfg, spec, build, tally, name)
        if name == "train" and cfg.shuffle == "global":
            ds = ds.random_shuffle(seed=cfg.seed)
        if cfg.materialize:
            ds, counts = _run(ds, tally, plan, cfg, name)
            setattr(prepared, f"{name}_counts", counts)
        setattr(prepared, name, ds)
    return prepared


def _plan(source: Source, cfg: DataConfig, names: ColumnNames, tokenizer, attributes=None) -> ReadSpec:
    fmt, has_prompt, has_margin, samples = probe(source, cfg.format, names, cfg.on_bad_rows, attributes=attributes)
    # Fails now, not inside a Ray task, on a missing chat template or an untokenizable row.
    _encoder(tokenizer, fmt, names, cfg.max_length, cfg.length_policy, attributes).encode_rows(
        [json.loads(r["_group"]) for r in samples] if fmt in GROUP_FORMATS else samples)
    logger.info("%s: %d %s file(s), format %s", source.field, len(source.files), source.kind, fmt)
    return ReadSpec(source, fmt, names, has_prompt, has_margin, attributes=attributes)


def _encoder(tokenizer, fmt: str, names: ColumnNames, max_length, length_policy, attributes=None):
    """The encoder of a format: ``PairEncoder`` for pairs (internal column names), ``GroupEncoder`` for the rest."""
    if fmt in GROUP_FORMATS:
        return GroupEncoder(tokenizer, fmt, names, max_length, length_policy, attributes)
    return PairEncoder(tokenizer, fmt, ColumnNames(), max_length, length_policy)


def _tokenized(plan: ReadSpec, cfg: DataConfig, spec: TokenizerSpec, build: str, tally, part: str):
    import ray

    ds = ray.data.read_datasource(pair_datasource(plan), num_cpus=READ_TASK_CPUS)
    ds = ds.map_batches(
        tokenize_batch,
        fn_kwargs={
            "encoder_args": EncoderArgs(spec, plan.fmt, plan.names, cfg.max_length, cfg.length_policy,
                                        plan.attributes, build),
            "has_margin": plan.has_margin,
            "on_bad_rows": cfg.on_bad_rows,
            "tally": tally,
            "part": part,
        },
        batch_format="pyarrow",
        batch_size=cfg.tokenize_batch_size,
        compute=ray.data.TaskPoolStrategy(size=cfg.tokenize_actors),
        num_cpus=cfg.tokenize_num_cpus,
    )
    return ds


def _run(ds, tally, plan: ReadSpec, cfg: DataConfig, name: str):
    import ray

    try:
        ds = ds.materialize()
    except Exception:
        first = ray.get(tally.first_bad.remote(name))
        if first is not None:
            raise BadRowError(*first) from None
        raise
    if len(ray.nodes()) > 1:
        ds = _home_on_driver_node(ds)
    counts = DataCounts(**ray.get(tally.snapshot.remote(name)))
    where = plan.source.spec + (f" ({name} part of the eval split)" if plan.part else "")
    if counts.rows_read == 0:
        raise DataFormatError(f"data.{name}: {where} holds no rows")
    if counts.pairs == 0:
        raise DataFormatError(
            f"data.{name}: no pair left of {counts.rows_read} rows from {where} ({counts.bad_rows} bad, "
            f"{counts.filtered} longer than max_length={cfg.max_length}, the longest {counts.longest} tokens); "
            "raise data.max_length, use data.length_policy=truncate, or fix the rows"
        )
    log = logger.warning if counts.bad_rows or counts.filtered or counts.truncated else logger.info
    log("%s", counts.describe(f"data.{name}", cfg))
    return ds, counts


def _home_on_driver_node(ds):
    """The materialized blocks, copied into the object store of the driver's node.

    Blocks made by tokenizer tasks live on the node that ran the task. When that node
    is lost (a preempted spot node), every training retry would wait for Ray to rebuild
    them from lineage (reading and tokenizing again), or fail where the source cannot be
    read again. Put by the driver, they live on its node (the head, in a cluster), which
    a run needs anyway. Tokenized pairs are small (about 2 KiB a pair at 512 tokens).
    """
    import ray

    return ray.data.from_arrow_refs([ray.put(ray.get(ref)) for ref in ds.to_arrow_refs()])


@dataclass(frozen=True)
class EncoderArgs:
    """What a tokenizer task builds its encoder from; ``build`` names one ``build_datasets`` call."""

    spec: TokenizerSpec
    fmt: str
    names: ColumnNames
    max_length: int
    length_policy: str
    attributes: tuple[str, ...] | None
    build: str


# Encoders of this process, by ``EncoderArgs``: a Ray worker process runs many tokenizer
# tasks in turn (train's, then eval's) and loads the tokenizer once for all of them.
# Keyed by one ``build_datasets`` call, so that a later call (an edited tokenizer folder,
# a new chat template file) loads afresh; the last two are kept.
_ENCODERS: dict[EncoderArgs, Any] = {}


def _process_encoder(args: EncoderArgs):
    encoder = _ENCODERS.pop(args, None)
    if encoder is None:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one task per CPU already
        encoder = _encoder(args.spec.load(), args.fmt, args.names, args.max_length, args.length_policy, args.attributes)
    _ENCODERS[args] = encoder
    while len(_ENCODERS) > 2:
        _ENCODERS.pop(next(iter(_ENCODERS)))
    return encoder


def tokenize_batch(batch, encoder_args: EncoderArgs, has_margin: bool, on_bad_rows: str, tally, part: str):
    """``map_batches`` function: checked rows in, tokenized pairs (or groups) out.

    Runs as a Ray task; each worker process loads the tokenizer once
    (``_process_encoder``). Bad rows (marked by the read task) either stop the run
    (``on_bad_rows: error``) or are dropped; every bad, filtered and truncated row is
    counted in the tally, under ``part`` (train or eval).
    """
    import ray

    encoder, fmt = _process_encoder(encoder_args), encoder_args.fmt
    rows = batch.to_pylist()
    good = [r for r in rows if r["_problem"] is None]
    bad = [(r["_source"], r["_row"], r["_field"], r["_problem"]) for r in rows if r["_problem"] is not None]
    if bad and on_bad_rows == "error":
        ray.get(tally.add.remote(part, {"bad_rows": len(bad)}, bad))
        raise RuntimeError(f"{BadRowError(*bad[0])} (data.on_bad_rows: skip drops such rows instead)")
    encoder.stats = LengthStats()
    if fmt in GROUP_FORMATS:
        good = [json.loads(r["_group"]) for r in good]
    pairs = [p for p in encoder.encode_rows(good) if p is not None] if good else []
    s = encoder.stats
    delta = {"rows_read": len(rows), "bad_rows": len(bad), "filtered": s.filtered,
             "truncated": s.truncated, "pairs": len(pairs), "longest": s.longest}
    node = ray.get_runtime_context().get_node_id()
    ray.get(tally.add.remote(part, delta, bad[:MAX_BAD_ROW_EXAMPLES], node))
    if fmt in GROUP_FORMATS:
        return groups_table(pairs, fmt)
    return pairs_table(pairs, has_margin)


def pairs_table(pairs: list[dict[str, Any]], has_margin: bool):
    """The Arrow block of tokenized pairs (int32 ids, float32 margin)."""
    import pyarrow as pa

    ids = pa.list_(pa.int32())
    columns = {
        "input_ids_chosen": pa.array([p["input_ids_chosen"] for p in pairs], type=ids),
        "input_ids_rejected": pa.array([p["input_ids_rejected"] for p in pairs], type=ids),
    }
    if has_margin:
        columns["margin"] = pa.array([p["margin"] for p in pairs], type=pa.float32())
    return pa.table(columns)


def groups_table(examples: list[dict[str, Any]], fmt: str):
    """The Arrow block of tokenized groups (``input_ids_responses``, ``scores``) or ratings
    (``input_ids``, ``labels`` with NaN where not rated)."""
    import pyarrow as pa

    if fmt == "ratings":
        return pa.table({
            "input_ids": pa.array([e["input_ids"] for e in examples], type=pa.list_(pa.int32())),
            "labels": pa.array([e["labels"] for e in examples], type=pa.list_(pa.float32())),
        })
    return pa.table({
        "input_ids_responses": pa.array([e["input_ids_responses"] for e in examples],
                                        type=pa.list_(pa.list_(pa.int32()))),
        "scores": pa.array([e["scores"] for e in examples], type=pa.list_(pa.float32())),
    })


def _tally_class():
    import ray

    @ray.remote(num_cpus=0)
    class Tally:
        """Counts reported by the tokenizer tasks of one build, by part (train, eval), for the driver."""

        def __init__(self):
            self.parts: dict[str, PartCounts] = {}

        def _part(self, part: str) -> "PartCounts":
            return self.parts.setdefault(part, PartCounts())

        def add(self, part: str, delta: dict[str, int], bad: list[tuple], node: str | None = None) -> None:
            self._part(part).add(delta, bad, node)

        def first_bad(self, part: str):
            return self._part(part).first_bad()

        def snapshot(self, part: str) -> dict[str, Any]:
            return self._part(part).snapshot()

    return Tally


class PartCounts:
    """The counts of one part (train or eval) in the tally actor."""

    def __init__(self):
        self.counts = {k: 0 for k in ("rows_read", "bad_rows", "filtered", "truncated", "pairs", "longest")}
        self.bad: list[tuple] = []
        self.nodes: set[str] = set()

    def add(self, delta: dict[str, int], bad: list[tuple], node: str | None = None) -> None:
        if node:
            self.nodes.add(node)
        for k, v in delta.items():
            self.counts[k] = max(self.counts[k], v) if k == "longest" else self.counts[k] + v
        if len(self.bad) < 1000:
            self.bad.extend(bad)

    def first_bad(self):
        return min(self.bad, key=lambda b: (b[0], b[1])) if self.bad else None

    def snapshot(self) -> dict[str, Any]:
        first = sorted(self.bad, key=lambda b: (b[0], b[1]))[:MAX_BAD_ROW_EXAMPLES]
        return {**self.counts, "bad_examples": [str(BadRowError(*b)) for b in first], "nodes": len(self.nodes)}


class _LazyTally:
    _cls = None

    def options(self, **kwargs):
        if _LazyTally._cls is None:
            _LazyTally._cls = _tally_class()
        return _LazyTally._cls.options(**kwargs)


_Tally = _LazyTally()
