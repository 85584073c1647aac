"""``rayreward serve``: a reward model (or an ensemble) behind HTTP on Ray Serve."""

from __future__ import annotations


HELP = ("Serve a reward model (or an ensemble) on Ray Serve: OpenRLHF's POST /get_reward, a typed POST /score "
        "(texts, prompt+response, chat messages, pairs), GET /health, /info and /stats; batching across requests, "
        "optional normalization, replicas and autoscaling.")

# Flags that set a serve: key; a flag given on the command line wins over the file.
_FLAGS = {
    "name": "serve.name", "route_prefix": "serve.route_prefix", "host": "serve.host", "port": "serve.port",
    "max_length": "serve.max_length", "num_replicas": "serve.scaling.num_replicas",
    "min_replicas": "serve.scaling.min_replicas", "max_replicas": "serve.scaling.max_replicas",
    "target_ongoing_requests": "serve.scaling.target_ongoing_requests",
    "cpus_per_replica": "serve.scaling.cpus_per_replica", "gpus_per_replica": "serve.scaling.gpus_per_replica",
    "max_batch_tokens": "serve.batch.max_tokens", "batch_wait_ms": "serve.batch.wait_ms",
    "conservative_k": "serve.conservative_k", "revision": "serve.revision",
}


def add_arguments(parser) -> None:
    from rayreward.serve.config import help_text

    parser.add_argument("--model", action="append", default=None, metavar="MODEL",
                        help="model folder (save_pretrained), run folder, checkpoint, PEFT adapter folder, hub id "
                             "(org/name), object-store folder (s3://, gs://) or ensemble folder; repeat for an "
                             "ensemble")
    parser.add_argument("--revision", help="branch, tag or commit of hub-id models (default: main)")
    parser.add_argument("--config", metavar="FILE", help="YAML file with a serve: section")
    parser.add_argument("--name", help="application name (default: the model folder's name)")
    parser.add_argument("--route-prefix", help="HTTP path prefix (default: /NAME)")
    parser.add_argument("--host", help="HTTP address to bind (default: 127.0.0.1 on an embedded Ray, 0.0.0.0 on a "
                                       "cluster: --address, $RAY_ADDRESS or `ray job submit`)")
    parser.add_argument("--port", type=int, help="HTTP port (default: 8000)")
    parser.add_argument("--max-length", type=int, help="token limit per text (default: the model's)")
    parser.add_argument("--no-truncation", action="store_true", help="reject over-long texts instead of cutting them")
    parser.add_argument("--normalize", action="store_true", help="normalize rewards by default (stored statistics)")
    parser.add_argument("--num-replicas", type=int)
    parser.add_argument("--autoscaling", action="store_true", help="scale between --min-replicas and --max-replicas")
    parser.add_argument("--min-replicas", type=int)
    parser.add_argument("--max-replicas", type=int)
    parser.add_argument("--target-ongoing-requests", type=float)
    parser.add_argument("--cpus-per-replica", type=float)
    parser.add_argument("--gpus-per-replica", type=float)
    parser.add_argument("--max-batch-tokens", type=int, help="token budget of a batch across requests")
    parser.add_argument("--batch-wait-ms", type=float, help="how long a batch waits for more texts")
    parser.add_argument("--conservative-k", type=float, help="ensembles: conservative reward = mean - k * std")
    parser.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else an embedded local Ray)")
    parser.add_argument("--cpus", type=int, default=None, help="logical CPUs of the embedded Ray (default: the cores)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. serve.batch.wait_ms=2")
    parser.epilog = help_text()


def config_from_args(args):
    """The ``ServeConfig`` of the file, the overrides, then the flags.

    Raises:
        ConfigError: every problem at once.
    """
    from rayreward.serve.config import load_serve_config

    flags = {key: getattr(args, name) for name, key in _FLAGS.items() if getattr(args, name) is not None}
    if args.model:
        flags["serve.models"] = list(args.model)
    if args.no_truncation:
        flags["serve.truncation"] = False
    if args.normalize:
        flags["serve.normalize"] = True
    if args.autoscaling:
        flags["serve.scaling.autoscaling"] = True
    return load_serve_config(args.config, args.overrides, flags)


def run(args) -> int:
    import signal
    import threading

    from rayreward.job.preflight import PreflightError, check_model_ref

    # 1. config and models, checked before Ray starts (errors become exit codes in cli)
    config = config_from_args(args)
    problems = [p for m in config.models for p in check_model_ref(
        m, config.revision, "serve.models (--model)", ensemble=len(config.models) == 1)]
    if problems:
        raise PreflightError(problems, "the models to serve")
    # 2. Ray: the given cluster or an embedded one on loopback
    from ray import serve

    from rayreward.runtime.ray_session import cluster_address, ray_session
    from rayreward.serve.app import launch

    with ray_session(args.address, num_cpus=args.cpus):
        # 3. deploy and wait until the replicas are up
        served = launch(config)
        where = ("; bound to 0.0.0.0, every node's proxy, for the cluster's network (--host to change)"
                 if "://0.0.0.0:" in served.url else "")
        print(f"serving {served.name} at {served.url} (POST /get_reward, POST /score, GET /health, /info, /stats)"
              f"{where}", flush=True)
        # 4. until Ctrl-C or SIGTERM; on a cluster the application is removed, an
        # embedded Ray goes away with its session
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait()
        if cluster_address(args.address):
            serve.delete(served.name)
        else:
            serve.shutdown()
    return 0
