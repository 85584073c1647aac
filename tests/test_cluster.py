"""cluster/: the KubeRay manifests, the AWS launcher config and cluster/local.sh.

The manifests are checked for what their CRDs require and for the promises of
cluster/README.md (shared volume everywhere, token auth, GPU tolerations), and every
entrypoint's command must pass `rayreward check` with its config. The slow test runs
cluster/local.sh end to end against a real head node on loopback.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
KUBERAY = CLUSTER / "kuberay"
SHARED_MOUNT = "/mnt/rayreward"
# The image puts the repository's examples at /app/examples (cluster/docker/Dockerfile).
IMAGE_APP_DIR = "/app/"


def load(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def rayreward(*args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rayreward", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "HF_HUB_OFFLINE": "1"})


@pytest.mark.parametrize("path", sorted(CLUSTER.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CLUSTER)))
def test_every_yaml_parses(path):
    with open(path, encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    assert docs, f"{path} holds no YAML document"
    assert all(isinstance(d, dict) for d in docs)


# -- KubeRay --------------------------------------------------------------------------


def containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def check_cluster_spec(spec: dict, where: str, pvc_name: str) -> None:
    """What the RayCluster CRD requires, plus what rayreward's storage and GPUs need."""
    head = spec["headGroupSpec"]
    assert isinstance(head.get("rayStartParams", {}), dict), where
    groups = [("head", head)] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
    assert len(groups) >= 2, f"{where}: no worker group"
    for name, group in groups:
        template = group["template"]
        assert containers(template), f"{where}/{name}: no container"
        for c in containers(template):
            assert c.get("name") and c.get("image"), f"{where}/{name}: container without name or image"
            assert c.get("resources", {}).get("limits"), f"{where}/{name}: resources not explicit"
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            assert SHARED_MOUNT in mounts, f"{where}/{name}: shared storage not mounted at {SHARED_MOUNT}"
            volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
            claim = volumes[mounts[SHARED_MOUNT]].get("persistentVolumeClaim", {}).get("claimName")
            assert claim == pvc_name, f"{where}/{name}: mounts claim {claim!r}, not the PVC {pvc_name!r}"
    gpu_groups = 0
    for group in spec["workerGroupSpecs"]:
        where_g = f"{where}/{group['groupName']}"
        for key in ("replicas", "minReplicas", "maxReplicas"):
            assert isinstance(group[key], int), f"{where_g}.{key}"
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], where_g
        assert isinstance(group["rayStartParams"], dict), where_g
        worker = containers(group["template"])[0]
        tolerations = group["template"]["spec"].get("tolerations", [])
        if "nvidia.com/gpu" in worker["resources"]["limits"]:
            gpu_groups += 1
            assert any(t.get("key") == "nvidia.com/gpu" for t in tolerations), f"{where_g}: no GPU toleration"
        check_object_store_fits_shm(group, where_g)
        if group["replicas"] == 0 and group["maxReplicas"] > 0:
            assert spec.get("enableInTreeAutoscaling") is True, f"{where_g}: starts at 0 pods with no autoscaler"
    assert gpu_groups, f"{where}: no GPU worker group"
    for name, group in groups:
        assert group["template"]["spec"].get("securityContext", {}).get("fsGroup") == RAY_GID, \
            f"{where}/{name}: the shared volume is not writable by the Ray user's group"
    assert spec.get("authOptions", {}).get("mode") == "token", f"{where}: token authentication is off"
    assert str(spec.get("rayVersion", "")).startswith("2."), f"{where}: rayVersion not set"


RAY_GID = 100  # the image's `ray` user is uid 1000, group users (cluster/docker/Dockerfile)


def memory_bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for unit, factor in units.items():
        if str(quantity).endswith(unit):
            return int(float(str(quantity)[:-2]) * factor)
    return int(quantity)


def check_object_store_fits_shm(group: dict, where: str) -> None:
    """Ray's object store lives in /dev/shm: set explicitly, below the memory volume's size.

    Left to Ray it is 30% of the pod's memory, more than a typical /dev/shm volume.
    """
    template = group["template"]["spec"]
    store = group["rayStartParams"].get("object-store-memory")
    assert store, f"{where}: object-store-memory not set (Ray's default is 30% of the pod's memory)"
    mounts = {m["mountPath"]: m["name"] for m in containers(group["template"])[0].get("volumeMounts", [])}
    assert "/dev/shm" in mounts, f"{where}: no /dev/shm volume"
    shm = {v["name"]: v for v in template.get("volumes", [])}[mounts["/dev/shm"]]["emptyDir"]
    assert shm.get("medium") == "Memory"
    assert int(store) < memory_bytes(shm["sizeLimit"]), f"{where}: object store {store} >= /dev/shm {shm['sizeLimit']}"
    limits = containers(group["template"])[0]["resources"]["limits"]
    assert memory_bytes(shm["sizeLimit"]) < memory_bytes(limits["memory"]), f"{where}: /dev/shm counts in the pod's memory"


@pytest.fixture(scope="module")
def pvc_name() -> str:
    pvc = load(KUBERAY / "pvc.yaml")
    assert pvc["apiVersion"] == "v1" and pvc["kind"] == "PersistentVolumeClaim"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], "checkpoints and Tune need a volume every node mounts"
    assert pvc["spec"]["resources"]["requests"]["storage"]
    return pvc["metadata"]["name"]


def test_raycluster_manifest(pvc_name):
    doc = load(KUBERAY / "raycluster.yaml")
    assert doc["apiVersion"] == "ray.io/v1"
    assert doc["kind"] == "RayCluster"
    assert doc["metadata"]["name"]
    check_cluster_spec(doc["spec"], "raycluster.yaml", pvc_name)
    head_params = doc["spec"]["headGroupSpec"]["rayStartParams"]
    assert head_params.get("num-cpus") == "0", "training must not be scheduled on the head"


@pytest.mark.parametrize("name, command", [("rayjob-train.yaml", "train"), ("rayjob-tune.yaml", "tune")])
def test_rayjob_manifest(name, command, pvc_name):
    doc = load(KUBERAY / name)
    assert doc["apiVersion"] == "ray.io/v1"
    assert doc["kind"] == "RayJob"
    assert doc["metadata"]["name"]
    spec = doc["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["rayreward", command] and "--config" in argv, spec["entrypoint"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["env_vars"]["HF_HOME"].startswith(SHARED_MOUNT)
    check_cluster_spec(spec["rayClusterSpec"], name, pvc_name)


def test_rayjob_train_submits_from_a_sidecar_and_has_a_cpu_data_group():
    spec = load(KUBERAY / "rayjob-train.yaml")["spec"]
    assert spec["submissionMode"] == "SidecarMode"
    groups = {g["groupName"]: g for g in spec["rayClusterSpec"]["workerGroupSpecs"]}
    cpu = [g for g in groups.values() if "nvidia.com/gpu" not in containers(g["template"])[0]["resources"]["limits"]]
    assert cpu and not cpu[0]["template"]["spec"].get("tolerations")
    # The head prepares the shared volume's folders for the Ray user before anything runs.
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    init = head["initContainers"][0]
    assert init["securityContext"]["runAsUser"] == 0 and "chown 1000:100" in init["command"][-1]
    # No path in the manifest installs rayreward from PyPI (it is not published there).
    assert "rayreward==" not in (KUBERAY / "rayjob-train.yaml").read_text()


# -- the released KubeRay CRDs, unknown fields rejected as the API server's strict validation does

CRDS = ROOT.parent / "shared" / "kuberay-crds"


def strict_schema(schema):
    """A CRD's openAPIV3Schema as JSON Schema that rejects fields the CRD does not declare."""
    if isinstance(schema, list):
        return [strict_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict_schema(v) for k, v in schema.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if (out.get("type") == "object" and "properties" in out and "additionalProperties" not in out
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@functools.lru_cache(maxsize=None)
def crd_validator(kind: str, version: str):
    """One validator per released CRD (each YAML is large: loaded once for the module)."""
    import jsonschema

    crd = load(CRDS / f"{kind}-{version}.yaml")
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return jsonschema.Draft7Validator(strict_schema(served["schema"]["openAPIV3Schema"]))


@pytest.mark.parametrize("version", ["v1.5.1", "v1.7.0"])
@pytest.mark.parametrize("manifest, kind", [("raycluster.yaml", "rayclusters"), ("rayjob-train.yaml", "rayjobs"),
                                            ("rayjob-tune.yaml", "rayjobs")])
def test_manifest_validates_against_the_released_crd(manifest, kind, version):
    validator = crd_validator(kind, version)
    doc = load(KUBERAY / manifest)
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
    assert not errors, errors
    # The check has teeth: a misspelt field is rejected.
    broken = load(KUBERAY / manifest)
    (broken["spec"].get("rayClusterSpec") or broken["spec"])["headGroupSpec"]["rayStartParam"] = {}
    assert any("rayStartParam" in e.message for e in validator.iter_errors(broken))


def entrypoint_check_args(manifest: str) -> list[str]:
    """The entrypoint's `--config FILE overrides` with the image's /app/ mapped to this checkout."""
    argv = shlex.split(load(KUBERAY / manifest)["spec"]["entrypoint"])[2:]
    i = argv.index("--config")
    config = argv[i + 1]
    assert config.startswith(IMAGE_APP_DIR), f"{manifest}: config {config} is not one the image ships"
    argv[i + 1] = str(ROOT / config[len(IMAGE_APP_DIR):])
    assert Path(argv[i + 1]).is_file(), f"{manifest}: {config} is not in the repository"
    return argv


@pytest.mark.parametrize("manifest", ["rayjob-train.yaml", "rayjob-tune.yaml"])
def test_entrypoint_passes_check(manifest):
    # --config-only: the config names the cluster's model and volume, which this machine lacks.
    result = rayreward("check", "--config-only", *entrypoint_check_args(manifest))
    assert result.returncode == 0, result.stderr + result.stdout


def test_readme_commands_use_the_raycluster_names():
    readme = (CLUSTER / "README.md").read_text()
    cluster_name = load(KUBERAY / "raycluster.yaml")["metadata"]["name"]
    assert f"svc/{cluster_name}-head-svc" in readme
    assert f"secret {cluster_name} " in readme  # KubeRay names the token Secret after the cluster
    for job in ("rayjob-train.yaml", "rayjob-tune.yaml"):
        assert job in readme


# -- Ray's cluster launcher -------------------------------------------------------------


def test_aws_launcher_config_is_valid():
    from ray.autoscaler._private.commands import prepare_config
    from ray.autoscaler._private.util import validate_config

    raw = load(CLUSTER / "aws.yaml")
    validate_config(prepare_config(raw))  # Ray's own schema, as `ray up` checks it
    assert raw["provider"]["type"] == "aws"
    workers = {k: v for k, v in raw["available_node_types"].items() if k != raw["head_node_type"]}
    assert workers and all(v["node_config"]["InstanceType"].startswith(("g", "p")) for v in workers.values())
    assert raw["available_node_types"][raw["head_node_type"]]["resources"] == {"CPU": 0}
    assert any("/home/ray/rayreward" in c and "pip install" in c for c in raw["setup_commands"])
    assert any(f"-v {SHARED_MOUNT}:{SHARED_MOUNT}" == o for o in raw["docker"]["run_options"])
    assert any(SHARED_MOUNT in c and "mount" in c for c in raw["initialization_commands"])
    assert "~/.ray/auth_token" in raw["file_mounts"]
    for cmd in raw["head_start_ray_commands"][1:] + raw["worker_start_ray_commands"][1:]:
        assert "RAY_AUTH_MODE=token" in cmd


def test_example_configs_point_at_the_shared_mount():
    for name in ("gpt2_zero2.yaml", "llama8b_lora_zero3.yaml", "llama8b_full_zero3_offload.yaml"):
        storage = load(ROOT / "examples" / "configs" / name)["storage"]["path"]
        assert storage.startswith(SHARED_MOUNT), f"{name}: storage.path {storage} is not on the shared volume"


# -- cluster/local.sh, end to end --------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_processes(state_dir: Path, sid: int | None) -> list[str]:
    """Processes of the cluster in state_dir: in its session, or naming its temp dir."""
    import psutil

    found = []
    for p in psutil.process_iter():
        try:
            cmd = " ".join(p.cmdline())
            if str(state_dir) in cmd or (sid is not None and os.getsid(p.pid) == sid):
                found.append(f"{p.pid} {cmd[:120]}")
        except (OSError, psutil.Error):
            pass
    return found


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_local_sh_up_submit_down(tmp_path):
    # A short state dir: Ray's unix sockets live under it (107-byte path limit).
    state = Path(f"/tmp/rrl-{os.getpid()}")
    env = {
        **os.environ,
        "RAYREWARD_LOCAL_DIR": str(state),
        "RAYREWARD_GCS_PORT": str(free_port()),
        "RAYREWARD_DASHBOARD_PORT": str(free_port()),
        "RAYREWARD_CLIENT_PORT": str(free_port()),
        "RAYREWARD_AGENT_PORT": str(free_port()),
        "HF_HUB_OFFLINE": "1",
    }
    for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        env.pop(key, None)

    def local_sh(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
        result = subprocess.run(["bash", str(CLUSTER / "local.sh"), *args], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=timeout)
        print(f"$ local.sh {' '.join(args)} -> {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
        return result

    storage = tmp_path / "runs"
    sid = None
    try:
        up = local_sh("up", timeout=180)
        assert up.returncode == 0
        sid = int((state / "session.sid").read_text())
        assert cluster_processes(state, sid), "up returned but no process of the cluster runs"
        # Token auth is on and handled: ray status answers through local.sh.
        status = local_sh("status", timeout=120)
        assert status.returncode == 0 and "CPU" in status.stdout

        t0 = time.monotonic()
        ok = local_sh("submit", "examples/configs/tiny_cpu.yaml", "scaling.num_workers=2", "train.max_steps=6",
                      "train.eval_steps=3", "train.save_steps=3", "train.logging_steps=3",
                      f"storage.path={storage}", "storage.name=local-sh")
        assert ok.returncode == 0, "the 2-worker job did not succeed"
        # The job ran `rayreward train` from the uploaded working dir (--working-dir .),
        # its console reached the submitter, and the run landed in the shared storage.
        assert "succeeded" in ok.stdout + ok.stderr and "[rayreward] model:" in ok.stdout
        metrics = json.loads((storage / "local-sh" / "metrics.json").read_text())
        assert metrics["step"] == 6 and metrics["num_workers"] == 2 and "eval_accuracy" in metrics
        assert (storage / "local-sh" / "model" / "config.json").is_file()
        print(f"2-worker job: {time.monotonic() - t0:.0f} s")

        # A job that fails on the cluster makes submit exit non-zero.
        bad = local_sh("submit", "examples/configs/tiny_cpu.yaml", "data.train=/nonexistent/pairs.jsonl",
                       "train.max_steps=2", f"storage.path={storage}", "storage.name=local-sh-bad")
        assert bad.returncode != 0
        # A config that fails validation is refused before it is submitted.
        invalid = local_sh("submit", "examples/configs/tiny_cpu.yaml", "scaling.num_workerz=2", timeout=120)
        assert invalid.returncode == 2 and "num_workers" in invalid.stderr
    finally:
        down = local_sh("down", timeout=120)
    assert down.returncode == 0
    left = cluster_processes(state, sid)
    assert not left, "processes left running after down:\n" + "\n".join(left)
    assert not (state / "session.sid").exists()
    shutil.rmtree(state, ignore_errors=True)  # the logs, kept by down for debugging
