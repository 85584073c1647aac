"""Where rayreward runs: storage, the Ray session, the console.

- ``storage``: local/NFS folders and object stores (``s3://``, ``gs://``) through pyarrow.
- ``ray_session``: the one way to start or join Ray; embedded Ray stays on 127.0.0.1.
- ``_reaper``: the watchdog that stops an embedded Ray's processes once its driver is gone.
- ``console``: rayreward's lines on the terminal, everything else in the run's log.
- ``local_cluster``: several Ray nodes on this machine, all on 127.0.0.1 (tests, benchmarks).
- ``native_ops``: the ninja DeepSpeed builds its C++ ops with.
- ``_framework_internals``: the one adapter that uses frameworks' private names, each named
  with its version and reason.
"""
