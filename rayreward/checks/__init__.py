"""Checks: everything knowable about a command's inputs, before Ray starts.

One stage for every command, above the configs and the evaluation code they check and
below the run, sweep and command line that call them. Every problem is collected and
raised at once as a ``PreflightError`` whose lines read ``field: got X; expected Y``.

- ``findings``: ``PreflightError`` and ``Findings`` (problems stop, notes are printed).
- ``job``: a job's data, model, tokenizer settings and storage (``train``, ``check``,
  ``tune``; ``fit`` and ``run_sweep`` run the same ``preflight_job``).
- ``scoring``: ``evaluate``, ``score`` and ``export``.
- ``models``: a base model to train, a reward model to score or serve (folder, hub id,
  object store, adapter).
- ``storage``: a writable folder, or an object store that answers within seconds.
"""
