"""The ``rayreward`` command line: one module per subcommand, ``cli`` dispatches.

- ``cli``: parsing (options and overrides in any order), and every error's exit code.
- ``train``, ``check``, ``tune``, ``evaluate``, ``score``, ``serve``, ``export``: the subcommands.
- ``_job_args``: the arguments of the commands that take a job config.
- ``_scoring_args``: the arguments of ``evaluate`` and ``score``.
- ``_suite_eval``: ``evaluate --suite``.
"""
