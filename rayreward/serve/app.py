"""The reward server: one Ray Serve deployment per model (or ensemble), HTTP and handle APIs.

Each replica holds a ``RewardEngine``. A request is parsed and encoded on arrival; its
texts then join ``@serve.batch`` batches shared with other requests, bounded by a token
budget (``serve.batch.max_tokens``, the sum of the texts' tokens) and scored in forward
passes bounded by ``serve.batch.forward_tokens`` with texts sorted by length.

Routes (under the route prefix, ``/<name>`` by default):
    ``POST /get_reward``: OpenRLHF's remote reward API. ``POST /score``: typed bodies
    (see ``rayreward.serve.requests``). ``GET /health``, ``GET /info`` (model name,
    max length, normalization, versions), ``GET /stats`` (this replica's batch sizes).
"""

# No ``from __future__ import annotations`` here: FastAPI reads the route parameters'
# annotations (``request: Request``) at class creation, and strings would not resolve.

import asyncio
import collections
import logging
import os
import time
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from rayreward.serve.config import ServeConfig
from rayreward.serve.requests import ParsedRequest, RequestError, parse_get_reward, parse_json, parse_score

logger = logging.getLogger(__name__)

_http = FastAPI(title="rayreward reward model server")
_RECENT = 256


class _TokenBudgetNote(logging.Filter):
    """Drops Serve's warning that ``max_batch_size`` exceeds ``max_ongoing_requests``: here
    the batch size counts tokens (``batch_size_fn``), not requests, so it does not apply."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("`max_batch_size`")


def _batch_tokens(items: list[tuple[list[int], ...]]) -> int:
    # A batch's size is its tokens (the longest member encoding of each text), not its
    # count: a burst of short texts fills one batch, a long text takes its share.
    return sum(max(len(ids) for ids in item) for item in items)


@serve.deployment
@serve.ingress(_http)
class RewardServer:
    """A replica: a loaded model (or ensemble) behind the routes and the handle methods.

    Args:
        config: the validated ``ServeConfig`` as a dict (``dataclasses.asdict``).
        members: the resolved models (``evaluation.model_ref.ModelRef``).
    """

    def __init__(self, config: dict[str, Any], members: list[Any]):
        from rayreward.job.tree import build
        from rayreward.serve.engine import RewardEngine

        problems: list[str] = []
        self.config = build(ServeConfig, config, "serve", problems)
        c = self.config
        self.engine = RewardEngine(members, c.max_length, c.truncation, c.batch.forward_tokens, c.conservative_k,
                                   num_threads=max(1, int(c.scaling.cpus_per_replica)))
        logging.getLogger("ray.serve").addFilter(_TokenBudgetNote())
        self._forward.set_max_batch_size(c.batch.max_tokens)
        self._forward.set_batch_wait_timeout_s(c.batch.wait_ms / 1000)
        self.batches = 0
        self.batched_texts = 0
        self.largest_batch = 0
        self.recent: collections.deque = collections.deque(maxlen=_RECENT)
        self.started = time.time()

    # -- HTTP routes ---------------------------------------------------------------

    @_http.post("/get_reward")
    async def http_get_reward(self, request: Request):
        return await self._http(request, parse_get_reward)

    @_http.post("/score")
    async def http_score(self, request: Request):
        return await self._http(request, parse_score)

    @_http.get("/health")
    async def http_health(self):
        return {"status": "ok"}

    @_http.get("/info")
    async def http_info(self):
        return self.info()

    @_http.get("/stats")
    async def http_stats(self):
        return self.stats()

    async def _http(self, request: Request, parse) -> JSONResponse:
        try:
            body = parse_json(await request.body())
            return JSONResponse(await self._answer(parse(body)))
        except RequestError as exc:
            return JSONResponse(exc.body(), status_code=exc.status)

    # -- handle API (``DeploymentHandle``) ----------------------------------------

    async def get_reward(self, body: dict[str, Any]) -> dict[str, Any]:
        """``/get_reward`` through a handle: ``handle.get_reward.remote({"query": [...]})``.

        Raises:
            RequestError: a bad body (the message names the field).
        """
        return await self._answer(parse_get_reward(body))

    async def score(self, body: dict[str, Any]) -> dict[str, Any]:
        """``/score`` through a handle: ``handle.score.remote({"pairs": [...]})``."""
        return await self._answer(parse_score(body))

    def info(self) -> dict[str, Any]:
        """Name, models, limits, normalization and versions."""
        return {"name": self.config.app_name, "route_prefix": self.config.prefix,
                "normalize_default": self.config.normalize, **self.engine.info()}

    def stats(self) -> dict[str, Any]:
        """This replica's batching so far: batches, texts, the largest and recent sizes."""
        context = serve.get_replica_context()
        return {
            "replica": context.replica_id.unique_id if context else None,
            "pid": os.getpid(),
            "batches": self.batches,
            "texts": self.batched_texts,
            "largest_batch": self.largest_batch,
            "recent_batch_sizes": list(self.recent),
            "uptime_s": time.time() - self.started,
        }

    # -- scoring -----------------------------------------------------------------

    async def _answer(self, request: ParsedRequest) -> dict[str, Any]:
        normalize = self.config.normalize if request.normalize is None else request.normalize
        if normalize:
            self.engine.require_normalization()
        encoded = self.engine.encode(request)
        rows = await asyncio.gather(*(self._forward(ids) for ids in encoded.ids))
        body = self.engine.summarize(np.stack(rows), encoded.n_rows, request.pairs, normalize)
        body["truncated"] = encoded.truncated
        return body

    @serve.batch(max_batch_size=16384, batch_wait_timeout_s=0.005, batch_size_fn=_batch_tokens)
    async def _forward(self, items: list[tuple[list[int], ...]]) -> list[np.ndarray]:
        self.batches += 1
        self.batched_texts += len(items)
        self.largest_batch = max(self.largest_batch, len(items))
        self.recent.append(len(items))
        # Torch releases the GIL: in a thread, the replica keeps taking and encoding
        # requests while a batch runs.
        raw = await asyncio.to_thread(self.engine.forward, items)
        return list(raw)


def deployment_options(config: ServeConfig) -> dict[str, Any]:
    """``Deployment.options`` of a config: name, replicas or autoscaling, resources."""
    s = config.scaling
    options: dict[str, Any] = {
        "name": config.app_name,
        "max_ongoing_requests": s.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": s.cpus_per_replica, "num_gpus": s.gpus_per_replica},
    }
    if s.autoscaling:
        options["num_replicas"] = None
        options["autoscaling_config"] = {"min_replicas": s.min_replicas, "max_replicas": s.max_replicas,
                                         "target_ongoing_requests": s.target_ongoing_requests}
    else:
        options["num_replicas"] = s.num_replicas
    return options


def build_app(config: ServeConfig):
    """The Serve application of a config (not yet running): ``serve.run(build_app(c))``.

    Models are resolved here, on the driver (hub snapshots found, object-store folders
    downloaded, adapters merged), so a missing model fails before any replica starts.

    Raises:
        FileNotFoundError, ValueError: a model folder holds no model.
    """
    import dataclasses

    from rayreward.serve.engine import resolve_members

    members = resolve_members(config.models, config.revision)
    return RewardServer.options(**deployment_options(config)).bind(dataclasses.asdict(config), members)


class Served:
    """A running deployment: its handle and its HTTP address.

    Attributes:
        handle: a ``DeploymentHandle`` (``handle.score.remote(body).result()``).
        url: the HTTP base URL, e.g. ``http://127.0.0.1:8000/rm``.
        name: the Serve application name.
    """

    def __init__(self, handle, url: str, name: str):
        self.handle, self.url, self.name = handle, url, name


def launch(config: ServeConfig) -> Served:
    """Deploys a config on the running Ray and waits until its replicas are up.

    Ray must already be running (``ray.init``; ``rayreward serve`` joins a cluster or
    starts a local one). Serve's HTTP proxy is started on ``config.host:config.port``
    (``bind_host``: 0.0.0.0 on a cluster, 127.0.0.1 on loopback, when ``host`` is unset)
    unless Serve already runs on this cluster, in which case its proxy keeps the
    address it started with (and the returned URL names the one asked for).

    Returns:
        A ``Served`` with the handle and the URL.

    Example:
        >>> ray.init(address="local", _node_ip_address="127.0.0.1")
        >>> served = launch(serve_config({"serve": {"models": ["runs/rm/model"]}}))
        >>> served.handle.get_reward.remote({"query": ["Human: hi Assistant: hello"]}).result()
        {'rewards': [0.53], ...}
    """
    import ray

    if not ray.is_initialized():
        raise RuntimeError("launch: Ray is not running; call ray.init(...) first (or use `rayreward serve`)")
    app = build_app(config)
    host = bind_host(config)
    serve.start(http_options={"host": host, "port": config.port})
    handle = serve.run(app, name=config.app_name, route_prefix=config.prefix, blocking=False)
    return Served(handle, f"http://{host}:{config.port}{config.prefix}", config.app_name)


def bind_host(config: ServeConfig) -> str:
    """Where Serve's HTTP proxy listens: ``serve.host`` when set; else 127.0.0.1 when every
    node of the connected Ray is on loopback (embedded, or a local test cluster), and
    0.0.0.0 on a real cluster, where the proxy on each node must be reachable from
    the cluster's network (a Kubernetes Service, a load balancer)."""
    from rayreward.runtime.ray_session import on_loopback

    if config.host:
        return config.host
    return "127.0.0.1" if on_loopback() else "0.0.0.0"



def app_builder(args: dict[str, Any]):
    """Entry point for a Serve config file or a KubeRay RayService
    (``import_path: rayreward.serve.app:app_builder``); ``args`` is a ``serve:`` section.

    Raises:
        ConfigError: the section has problems (every one listed).
    """
    from rayreward.serve.config import serve_config

    return build_app(serve_config({"serve": dict(args or {})}))
