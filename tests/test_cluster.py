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
    check_object_store_fits_shm(head, f"{where}/head")
    for name, group in groups:
        for c in containers(group["template"]):
            # Every pod may tokenize (Ray Data's actors, the driver's preflight, serve replicas).
            token = {e["name"]: e for e in c.get("env", [])}.get("HF_TOKEN", {})
            assert token.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == "hf-token", \
                f"{where}/{name}: no HF_TOKEN from the hf-token Secret"
            assert c["image"] == IMAGE_NAME, f"{where}/{name}: image {c['image']!r}, not the kustomization's entry"
        for c in group["template"]["spec"].get("initContainers", []):
            assert c["image"] == IMAGE_NAME, f"{where}/{name}: init image {c['image']!r}"
    for name, group in groups:
        assert group["template"]["spec"].get("securityContext", {}).get("fsGroup") == RAY_GID, \
            f"{where}/{name}: the shared volume is not writable by the Ray user's group"
    assert spec.get("authOptions", {}).get("mode") == "token", f"{where}: token authentication is off"
    assert str(spec.get("rayVersion", "")).startswith("2."), f"{where}: rayVersion not set"


RAY_GID = 100  # the image's `ray` user is uid 1000, group users (cluster/docker/Dockerfile)
IMAGE_NAME = "rayreward"  # replaced by kustomization.yaml's images: entry


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

# The released KubeRay CRDs (rayclusters/rayjobs, v1.5.1 and v1.7.0, from the KubeRay
# repository's config/crd/bases): $RAYREWARD_KUBERAY_CRDS, else the folder beside the project.
CRDS = Path(os.environ.get("RAYREWARD_KUBERAY_CRDS") or ROOT.parent / "shared" / "kuberay-crds")
needs_crds = pytest.mark.skipif(not CRDS.is_dir(), reason=f"KubeRay CRDs not found in {CRDS}: set "
                                "RAYREWARD_KUBERAY_CRDS to a folder of rayclusters-/rayjobs-v1.5.1.yaml and v1.7.0.yaml")


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


@needs_crds
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


@needs_crds
@pytest.mark.parametrize("version", ["v1.5.1", "v1.7.0"])
def test_rayservice_cluster_validates_against_the_released_raycluster_crd(version):
    # No RayService CRD is vendored; its rayClusterConfig is a RayCluster spec, checked as one.
    import jsonschema

    crd = load(CRDS / f"rayclusters-{version}.yaml")
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    validator = jsonschema.Draft7Validator(strict_schema(served["schema"]["openAPIV3Schema"]["properties"]["spec"]))
    spec = load(KUBERAY / "rayservice-serve.yaml")["spec"]["rayClusterConfig"]
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(spec)]
    assert not errors, errors
    spec["headGroupSpec"]["rayStartParam"] = {}
    assert any("rayStartParam" in e.message for e in validator.iter_errors(spec))


def test_rayservice_manifest(pvc_name):
    doc = load(KUBERAY / "rayservice-serve.yaml")
    spec = doc["spec"]["rayClusterConfig"]
    # Token auth, /dev/shm and object stores, the shared volume, HF_TOKEN: as the jobs.
    check_cluster_spec(spec, "rayservice-serve.yaml", pvc_name)
    app = yaml.safe_load(doc["spec"]["serveConfigV2"])["applications"][0]
    scaling = app["args"]["scaling"]
    assert scaling["autoscaling"] and 1 <= scaling["min_replicas"] <= scaling["max_replicas"]
    (gpu,) = [g for g in spec["workerGroupSpecs"] if "nvidia.com/gpu" in containers(g["template"])[0]["resources"]["limits"]]
    assert gpu["minReplicas"] >= scaling["min_replicas"] and gpu["maxReplicas"] >= scaling["max_replicas"]
    # Probes on the application's /health, through each pod's proxy.
    for group in [spec["headGroupSpec"], gpu]:
        c = containers(group["template"])[0]
        for probe in ("readinessProbe", "livenessProbe"):
            assert c[probe]["httpGet"] == {"path": f"{app['route_prefix']}/health", "port": 8000}, (probe, c[probe])
        assert c["livenessProbe"]["initialDelaySeconds"] >= 300, "model loading must not count as a dead pod"


def test_one_kustomization_names_the_image_and_every_manifest_has_its_step():
    kustomization = load(KUBERAY / "kustomization.yaml")
    assert sorted(kustomization["resources"]) == sorted(p.name for p in KUBERAY.glob("*.yaml")
                                                         if p.name != "kustomization.yaml")
    (image,) = kustomization["images"]
    assert image["name"] == IMAGE_NAME and image["newName"] and image["newTag"]
    steps = {}
    for name in kustomization["resources"]:
        doc = load(KUBERAY / name)
        steps[doc["metadata"]["labels"]["rayreward.io/step"]] = name
    assert set(steps) == {"storage", "cluster", "train", "tune", "serve"}, steps
    readme = (CLUSTER / "README.md").read_text()
    for step in ("storage", "train", "tune", "serve"):
        assert f"kubectl apply -k cluster/kuberay -l rayreward.io/step={step}" in readme
    # The image is named once, there (and in aws.yaml, which does not use kustomize).
    named = [p for p in CLUSTER.rglob("*.yaml") if image["newName"] in p.read_text()]
    assert sorted(p.name for p in named) == ["aws.yaml", "kustomization.yaml"], named


def job_of(manifest: str):
    """The JobConfig a RayJob's entrypoint runs (config from this checkout, overrides applied)."""
    from rayreward.job.config import load_job_config

    argv = entrypoint_check_args(manifest)
    i = argv.index("--config")
    return load_job_config(argv[i + 1], argv[:i] + argv[i + 2:])


def test_train_tune_serve_paths_follow_through_the_manifests():
    from rayreward.job.config import run_name, storage_uri

    # train: <storage.path>/<storage.name>/model on the shared volume.
    train = job_of("rayjob-train.yaml")
    train_model = f"{storage_uri(train)}/{run_name(train)}/model"
    # tune: a real model and the pairs on the volume, and an ensemble of its best trials.
    tune = job_of("rayjob-tune.yaml")
    assert not tune.model.name_or_path.startswith("builtin:"), tune.model.name_or_path
    assert tune.data.train.startswith(SHARED_MOUNT) and tune.data.eval.startswith(SHARED_MOUNT)
    assert (tune.data.train, tune.data.eval) == (train.data.train, train.data.eval), "one dataset for the story"
    assert tune.tune.ensemble_top_k >= 2 and tune.scaling.use_gpu
    ensemble = f"{storage_uri(tune)}/{run_name(tune)}/ensemble"
    for path in (train_model, ensemble):
        assert path.startswith(SHARED_MOUNT + "/"), path
    # serve: reads what tune wrote; the train job's model is the documented alternative.
    doc = load(KUBERAY / "rayservice-serve.yaml")
    models = yaml.safe_load(doc["spec"]["serveConfigV2"])["applications"][0]["args"]["models"]
    assert models == [ensemble], (models, ensemble)
    for text in ((KUBERAY / "rayservice-serve.yaml").read_text(), (CLUSTER / "README.md").read_text()):
        assert train_model in text and ensemble in text
    assert train_model in (KUBERAY / "rayjob-train.yaml").read_text()
    assert ensemble in (KUBERAY / "rayjob-tune.yaml").read_text()


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
    # The image's own pip (python -m pip), and its CUDA torch and DeepSpeed left as built.
    assert any(c.startswith("python -m pip install") and "--no-deps" in c and "/home/ray/rayreward" in c
               for c in raw["setup_commands"]), raw["setup_commands"]
    assert not any(c.startswith("pip ") or " pip install" in c.replace("-m pip install", "")
                   for c in raw["setup_commands"])
    assert any(f"-v {SHARED_MOUNT}:{SHARED_MOUNT}" == o for o in raw["docker"]["run_options"])
    assert any(SHARED_MOUNT in c and "mount" in c for c in raw["initialization_commands"])
    assert "~/.ray/auth_token" in raw["file_mounts"]
    for cmd in raw["head_start_ray_commands"][1:] + raw["worker_start_ray_commands"][1:]:
        assert "RAY_AUTH_MODE=token" in cmd


def test_example_configs_point_at_the_shared_mount():
    for name in ("gpt2_zero2.yaml", "llama8b_lora_zero3.yaml", "llama8b_full_zero3_offload.yaml"):
        storage = load(ROOT / "examples" / "configs" / name)["storage"]["path"]
        assert storage.startswith(SHARED_MOUNT), f"{name}: storage.path {storage} is not on the shared volume"


def test_example_configs_trigger_no_warning_of_the_package():
    import warnings

    from rayreward.job.config import load_job_config

    for path in sorted((ROOT / "examples" / "configs").glob("*.yaml")):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            job = load_job_config(str(path), [])
        ours = [str(w.message) for w in caught if "rayreward" in w.filename]
        assert not ours, (path.name, ours)
        # Pure bf16/fp16 weights are the one warning of model loading: fp32 masters, bf16 compute.
        assert job.model.dtype == "auto", f"{path.name}: model.dtype {job.model.dtype}"


def test_setuptools_floor_matches_the_license_metadata():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert isinstance(project["project"]["license"], str)  # an SPDX expression (PEP 639)
    (req,) = [r for r in project["build-system"]["requires"] if r.startswith("setuptools")]
    assert req.replace(" ", "") == "setuptools>=77", req


# -- the image: build args and build-time asserts (no Docker daemon here: the file is checked)


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (CLUSTER / "docker" / "Dockerfile").read_text()
    lines = [line for line in text.replace("\\\n", "").splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "") for line in lines]


def build_args(instructions) -> dict[str, str]:
    args = {}
    for op, rest in instructions:
        if op == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default.strip('"')
    return args


def python_checks(instructions, args: dict[str, str]) -> list[str]:
    """The `python -c` programs of the RUN lines, with the build args substituted as the shell would."""
    codes = []
    for op, rest in instructions:
        if op != "RUN":
            continue
        for part in rest.split(" && "):
            part = part.strip()
            if part.startswith("python -c "):
                for name, value in args.items():
                    part = part.replace("${" + name + "}", value)
                codes.append(shlex.split(part)[2])
    return codes


def test_dockerfile_build_args_stages_and_asserts():
    instructions = dockerfile_instructions()
    args = build_args(instructions)
    for name in ("CUDA_VERSION", "TORCH_INDEX_URL", "TORCH_CUDA", "DEEPSPEED_OPS", "TORCH_CUDA_ARCH_LIST"):
        assert args.get(name), f"build arg {name} missing or without a default"
    # One CUDA line: the torch index and the expected torch.version.cuda follow CUDA_VERSION.
    major, minor = args["CUDA_VERSION"].split(".")[:2]
    assert args["TORCH_CUDA"] == f"{major}.{minor}" and args["TORCH_INDEX_URL"].endswith(f"/cu{major}{minor}")
    stages = [rest for op, rest in instructions if op == "FROM"]
    assert len(stages) == 2 and "-devel-" in stages[0] and stages[0].endswith("AS build"), stages
    assert "-base-" in stages[1] or "-runtime-" in stages[1], stages
    assert any(op == "COPY" and rest.startswith("--from=build /opt/venv") for op, rest in instructions)
    run = " ".join(rest for op, rest in instructions if op == "RUN")
    assert '--index-url "${TORCH_INDEX_URL}"' in run and 'DS_BUILD_${op}=1' in run
    assert "ds_report | grep" not in run, "a grep matches an op whether or not it is compatible"
    # The asserts are real programs: they parse, and here (a CPU torch, DeepSpeed's ops not
    # built) they stop the build with the reason, as they would on a wrong CUDA line.
    codes = python_checks(instructions, args)
    assert len(codes) == 2, codes
    for code in codes:
        compile(code, "Dockerfile", "exec")
    torch_check = subprocess.run([sys.executable, "-c", codes[0]], capture_output=True, text=True, timeout=120)
    assert torch_check.returncode == 1 and f"expected {args['TORCH_CUDA']}: check TORCH_INDEX_URL" in torch_check.stderr
    ds_check = subprocess.run([sys.executable, "-c", codes[1]], capture_output=True, text=True, timeout=120)
    assert ds_check.returncode == 1, ds_check.stderr
    assert "DeepSpeed ops not usable: fused_adam, cpu_adam, deepspeed_shm_comm" in ds_check.stderr, ds_check.stderr[-2000:]


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
        began = time.monotonic()
        result = subprocess.run(["bash", str(CLUSTER / "local.sh"), *args], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=timeout)
        print(f"$ local.sh {' '.join(args)} -> {result.returncode} in {time.monotonic() - began:.0f} s\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
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
