"""torch.distributed on loopback for a cluster whose nodes are all on 127.0.0.1.

Ray Train's torch backend (Ray 2.60) points the workers at ``MASTER_ADDR`` = rank 0's
node address (127.0.0.1 on an embedded Ray), but torch's ``TCPStore`` server binds
every interface whatever that address is (torch 2.13 has no bind-address option), and
gloo binds the interface of the machine's hostname. Here rank 0 first opens the store
itself on a socket bound to 127.0.0.1 (``master_listen_fd``); torch's own
``init_process_group`` then reuses that server (the store is multi-tenant, shared per
port within a process), and gloo is pinned to the loopback interface.

The backend extends Ray's own torch backend and reuses its two setup helpers (the only
place where the rendezvous can be set up before ``init_process_group``); those private
Ray names are reached through ``rayreward.runtime._framework_internals``. Multi-node
clusters keep Ray's default backend.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

from ray.train.torch import TorchConfig
from rayreward.runtime._framework_internals import ray_torch_backend, ray_torch_process_group

# Rank 0's store and its listening socket, kept for the life of the worker process.
_HOSTED: list = []


def loopback_torch_config(timeout_s: int = 1800) -> TorchConfig:
    """A ``TorchConfig`` whose rendezvous and gloo sockets all listen on 127.0.0.1 only."""
    return _LoopbackTorchConfig(timeout_s=timeout_s)


class _LoopbackTorchConfig(TorchConfig):
    @property
    def backend_cls(self):
        return _LoopbackTorchBackend


class _LoopbackTorchBackend(ray_torch_backend()):
    def on_start(self, worker_group, backend_config):
        import ray

        gpus = worker_group.get_resources_per_worker().get("GPU", 0)
        backend = backend_config.backend or ("nccl" if gpus else "gloo")
        port = worker_group.execute_single(0, _host_store)
        size = len(worker_group)
        ray.get([worker_group.execute_single_async(i, _join, backend=backend, world_rank=i, world_size=size,
                                                   port=port, timeout_s=backend_config.timeout_s)
                 for i in range(size)])


def _loopback_interface() -> str | None:
    import psutil

    for name, addresses in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == "127.0.0.1" for a in addresses):
            return name
    return None


def _host_store() -> int:
    from torch.distributed import TCPStore

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    store = TCPStore("127.0.0.1", port, None, True, timedelta(seconds=300), wait_for_workers=False,
                     multi_tenant=True, master_listen_fd=listener.fileno())
    _HOSTED[:] = [listener, store]
    return port


def _join(backend: str, world_rank: int, world_size: int, port: int, timeout_s: int) -> None:
    interface = _loopback_interface()
    if interface and backend == "gloo":
        os.environ.setdefault("GLOO_SOCKET_IFNAME", interface)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # Then as Ray's own backend does: torchrun's variables, and the process group.
    ray_torch_process_group(backend, world_rank, world_size, timeout_s)
