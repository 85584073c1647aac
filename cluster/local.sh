#!/usr/bin/env bash
# A one-machine Ray cluster for rayreward: the same `ray job submit` flow as a real
# cluster, bound to loopback, with Ray's token authentication on.
#
#   cluster/local.sh up                      start a head node on 127.0.0.1
#   cluster/local.sh submit CONFIG [KEY=VAL ...]
#                                            ray job submit --working-dir . -- rayreward train
#                                            --config CONFIG [KEY=VAL ...]; follows the logs and
#                                            exits non-zero unless the job SUCCEEDED
#   cluster/local.sh run CONFIG [KEY=VAL ...]  up (if needed), submit, then down (if it was
#                                            not up before)
#   cluster/local.sh status                  ray status and ray job list against the cluster
#   cluster/local.sh env                     prints the exports that let your own `ray status`,
#                                            `ray job ...` and `rayreward train` reach it:
#                                            eval "$(cluster/local.sh env)"
#   cluster/local.sh down                    stops every process of this cluster, and only those
#
# Settings (environment variables; defaults in brackets):
#   RAYREWARD_LOCAL_DIR       state folder: token, Ray's temp dir and logs [/tmp/rayreward-local-$UID]
#                             (keep it short: Ray's unix sockets live under it, 107-byte limit)
#   RAYREWARD_GCS_PORT        head (GCS) port [6379]
#   RAYREWARD_DASHBOARD_PORT  dashboard / job-submission port [8265]
#   RAYREWARD_CLIENT_PORT     Ray client server port [10001]
#   RAYREWARD_AGENT_PORT      dashboard agent port [52365]
#   RAYREWARD_NUM_CPUS        logical CPUs of the head [max(4, cores)]: more logical CPUs than
#                             cores keeps 2 CPU workers and their Ray Data tasks from starving
#   RAYREWARD_RAY_START_ARGS  extra `ray start` arguments, e.g. "--num-gpus=1"
#   RAYREWARD_DOWN_GRACE_S    seconds `down` waits after SIGTERM before SIGKILL [5]: Ray's
#                             raylet, GCS and runtime-env agent take 10 s or more to stop
#                             on SIGTERM alone (`ray stop` waits up to 16 s)
#
# Why not `ray stop`: it kills every Ray process of the machine, including clusters
# this script did not start. `down` stops the process session `up` created instead.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# The repository's venv when there is one, otherwise whatever `ray` is on PATH.
if [[ -x "$ROOT/.venv/bin/ray" ]]; then
  BIN="$ROOT/.venv/bin"
  RAY="$BIN/ray"
  PY="$BIN/python"
  export PATH="$BIN:$PATH" # so a job's `rayreward` entrypoint resolves to this install
else
  RAY="$(command -v ray || true)"
  if [[ -z "$RAY" ]]; then
    echo "local.sh: no 'ray' found: create $ROOT/.venv (make demo) or put ray on PATH" >&2
    exit 2
  fi
  # Ray's own interpreter (it has psutil, which `down` uses).
  PY="$(head -n1 "$RAY" | sed -n 's/^#! *//p')"
  [[ -x "${PY%% *}" ]] || PY="$(command -v python3)"
fi

STATE="${RAYREWARD_LOCAL_DIR:-/tmp/rayreward-local-$(id -u)}"
GCS_PORT="${RAYREWARD_GCS_PORT:-6379}"
DASH_PORT="${RAYREWARD_DASHBOARD_PORT:-8265}"
CLIENT_PORT="${RAYREWARD_CLIENT_PORT:-10001}"
AGENT_PORT="${RAYREWARD_AGENT_PORT:-52365}"
CORES="$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)"
NUM_CPUS="${RAYREWARD_NUM_CPUS:-$((CORES > 4 ? CORES : 4))}"
DOWN_GRACE_S="${RAYREWARD_DOWN_GRACE_S:-5}"
SID_FILE="$STATE/session.sid"
TOKEN_FILE="$STATE/auth_token"
JOBS_URL="http://127.0.0.1:$DASH_PORT"

# Token auth with this cluster's own token file (not ~/.ray/auth_token, which other
# clusters may use). Every ray command below, and every process the head starts,
# inherits these.
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH="$TOKEN_FILE"
# Keeps the node IP at 127.0.0.1: on Linux `ray start` otherwise swaps a loopback
# --node-ip-address for the machine's routable address. Single-node only, which is
# what this script is for.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
export RAY_USAGE_STATS_ENABLED=0
export RAY_ADDRESS="127.0.0.1:$GCS_PORT"

log() { echo "local.sh: $*" >&2; }

# Small Python pieces, run with Ray's interpreter (psutil comes with Ray).

# argv: SID. Exits 0 when some process still belongs to that session.
PY_ALIVE='
import os, sys
import psutil
sid = int(sys.argv[1])
for p in psutil.process_iter():
    try:
        if os.getsid(p.pid) == sid:
            sys.exit(0)
    except (OSError, psutil.Error):
        pass
sys.exit(1)
'

# argv: SID_FILE COMMAND... Runs COMMAND in a new session and records its id.
PY_SETSID_EXEC='
import os, sys
sid_file, argv = sys.argv[1], sys.argv[2:]
try:
    os.setsid()
except PermissionError:  # a process-group leader cannot: setsid in a child instead
    pid = os.fork()
    if pid:
        sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    os.setsid()
with open(sid_file, "w") as f:
    f.write(str(os.getpid()))
os.execv(argv[0], argv)
'

# argv: SID TEMP_DIR GRACE_S. Stops this cluster: the processes of session SID or whose
# command line names TEMP_DIR, and all their descendants (job drivers start their own
# sessions). SIGTERM, then SIGKILL whatever is left after GRACE_S seconds.
PY_KILL_CLUSTER='
import os, sys
import psutil
sid, temp_dir = int(sys.argv[1]), sys.argv[2]
me = os.getpid()
def ours(p):
    try:
        if sid and os.getsid(p.pid) == sid:
            return True
        return any(temp_dir in a for a in p.cmdline())
    except (OSError, psutil.Error):
        return False
procs = {p.pid: p for p in psutil.process_iter() if p.pid != me and ours(p)}
for p in list(procs.values()):
    try:
        for c in p.children(recursive=True):
            procs.setdefault(c.pid, c)
    except psutil.Error:
        pass
procs.pop(me, None)
if not procs:
    print("local.sh: no process of this cluster is running", file=sys.stderr)
    sys.exit(0)
print(f"local.sh: stopping {len(procs)} processes", file=sys.stderr)
for p in procs.values():
    try:
        p.terminate()
    except psutil.Error:
        pass
_, alive = psutil.wait_procs(list(procs.values()), timeout=float(sys.argv[3]))
for p in alive:
    try:
        p.kill()
    except psutil.Error:
        pass
_, alive = psutil.wait_procs(alive, timeout=5)
if alive:
    print(f"local.sh: could not stop pids {[p.pid for p in alive]}", file=sys.stderr)
    sys.exit(1)
'

# argv: CONFIG OVERRIDES... Validates the job config as `rayreward check` does (exit 2
# with every problem) and, when storage.path is a relative folder, prints the override
# that makes it absolute: a job runs in a temporary copy of the working dir, where a
# relative folder would vanish with the job.
PY_STORAGE_OVERRIDE='
import os, sys
from rayreward.job.config import ConfigError, load_job_config
try:
    job = load_job_config(sys.argv[1], sys.argv[2:])
except ConfigError as exc:
    print(f"local.sh: {exc}", file=sys.stderr)
    sys.exit(2)
path = job.storage.path
if "://" not in path and not os.path.isabs(os.path.expanduser(path)):
    print(f"storage.path={os.path.abspath(path)}")
'

# argv: JOBS_URL JOB_ID. Prints the job status (SUCCEEDED, FAILED, STOPPED, ...).
PY_JOB_STATUS='
import sys
from ray.job_submission import JobSubmissionClient
print(JobSubmissionClient(sys.argv[1]).get_job_status(sys.argv[2]).value)
'

session_alive() {
  [[ -s "$SID_FILE" ]] && "$PY" -c "$PY_ALIVE" "$(cat "$SID_FILE")"
}

cmd_env() {
  cat <<EOF
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH='$TOKEN_FILE'
export RAY_ADDRESS='127.0.0.1:$GCS_PORT'
export RAY_API_SERVER_ADDRESS='$JOBS_URL'
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
EOF
}

cmd_up() {
  if session_alive; then
    log "already up (state in $STATE); 'cluster/local.sh down' stops it"
    return 0
  fi
  mkdir -p "$STATE"
  chmod 700 "$STATE"
  if [[ ! -s "$TOKEN_FILE" ]]; then
    (umask 077 && "$PY" -c 'import secrets; print(secrets.token_hex(32), end="")' >"$TOKEN_FILE")
  fi
  log "starting a head node on 127.0.0.1:$GCS_PORT ($NUM_CPUS logical CPUs, dashboard $JOBS_URL)"
  # `ray start` runs in a new process session whose id is written to $SID_FILE: every
  # daemon it leaves behind, and every worker and job driver those start, belongs to
  # that session or descends from it, which is how `down` finds them and nothing else.
  # shellcheck disable=SC2086
  if ! "$PY" -c "$PY_SETSID_EXEC" "$SID_FILE" "$RAY" start --head \
    --node-ip-address=127.0.0.1 \
    --port="$GCS_PORT" \
    --dashboard-host=127.0.0.1 \
    --dashboard-port="$DASH_PORT" \
    --ray-client-server-port="$CLIENT_PORT" \
    --dashboard-agent-listen-port="$AGENT_PORT" \
    --num-cpus="$NUM_CPUS" \
    --temp-dir="$STATE/ray" \
    --disable-usage-stats \
    ${RAYREWARD_RAY_START_ARGS:-} </dev/null; then
    log "ray start failed; cleaning up (logs: $STATE/ray/session_latest/logs)"
    cmd_down || true
    return 1
  fi
  local i
  for i in $(seq 1 60); do
    # `ray status` answers (exit 0) before the head has reported its resources
    # ("No cluster status"): ready means the CPUs are listed.
    if "$RAY" status 2>/dev/null | grep -q "CPU"; then
      log "up. Submit with: cluster/local.sh submit CONFIG   (or eval \"\$(cluster/local.sh env)\" for plain ray commands)"
      return 0
    fi
    sleep 1
  done
  log "the head did not answer 'ray status' within 60 s; stopping it (logs: $STATE/ray/session_latest/logs)"
  cmd_down || true
  return 1
}

cmd_down() {
  local sid=""
  [[ -f "$SID_FILE" ]] && sid="$(cat "$SID_FILE")"
  # Processes of this cluster: those in the session `up` created, or whose command line
  # names this cluster's temp dir, plus all their descendants (job drivers start their
  # own sessions). SIGTERM, then SIGKILL whatever is left after a grace period.
  "$PY" -c "$PY_KILL_CLUSTER" "${sid:-0}" "$STATE/ray" "$DOWN_GRACE_S"
  rm -f "$SID_FILE"
  log "down (logs kept in $STATE/ray)"
}

cmd_status() {
  session_alive || { log "not up"; return 1; }
  "$RAY" status
  "$RAY" job list --address "$JOBS_URL"
}

cmd_submit() {
  if [[ $# -lt 1 ]]; then
    log "usage: cluster/local.sh submit CONFIG [KEY=VALUE ...]"
    return 2
  fi
  local config="$1"
  shift
  if [[ ! -f "$config" ]]; then
    log "config file not found: $config"
    return 2
  fi
  # The job runs in a copy of the working dir (.), so a config inside it is passed by
  # its path relative to it; one outside it by its absolute path (same machine).
  local abs rel
  abs="$(cd "$(dirname "$config")" && pwd)/$(basename "$config")"
  case "$abs" in
    "$PWD"/*) rel="${abs#"$PWD"/}" ;;
    *) rel="$abs" ;;
  esac
  local storage
  storage="$("$PY" -c "$PY_STORAGE_OVERRIDE" "$config" "$@")" || return 2
  if ! session_alive; then
    log "no local cluster is up: run 'cluster/local.sh up' first (or use 'run')"
    return 2
  fi
  if [[ -n "$storage" ]]; then
    log "relative storage.path made absolute (the job runs in a copy of this directory): $storage"
    set -- "$@" "$storage"
  fi
  local job_id
  job_id="rayreward-$(date +%Y%m%d-%H%M%S)-$$"
  # Ctrl-C stops the job, not only the log tail.
  trap 'log "interrupted: stopping $job_id"; "$RAY" job stop --address "$JOBS_URL" "$job_id" >/dev/null 2>&1 || true; exit 130' INT TERM
  log "submitting $job_id: rayreward train --config $rel $*"
  local rc=0
  "$RAY" job submit --address "$JOBS_URL" --submission-id "$job_id" --working-dir . \
    -- rayreward train --config "$rel" "$@" || rc=$?
  trap - INT TERM
  local status
  status="$("$PY" -c "$PY_JOB_STATUS" "$JOBS_URL" "$job_id" 2>/dev/null | tail -n1 || true)"
  if [[ "$status" == "SUCCEEDED" && $rc -eq 0 ]]; then
    log "job $job_id SUCCEEDED"
    return 0
  fi
  log "job $job_id ended ${status:-in an unknown state} (ray job submit exit code $rc); logs: $RAY job logs --address $JOBS_URL $job_id"
  return 1
}

cmd_run() {
  local started=0 rc=0
  [[ $# -ge 1 && -f "$1" ]] || { cmd_submit "$@"; return; } # usage or missing-file error
  # A config that fails validation should not cost a cluster start.
  "$PY" -c "$PY_STORAGE_OVERRIDE" "$@" >/dev/null || return 2
  if ! session_alive; then
    cmd_up
    started=1
  fi
  cmd_submit "$@" || rc=$?
  if [[ $started -eq 1 ]]; then
    cmd_down || rc=$((rc ? rc : 1))
  fi
  return "$rc"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) cmd_env ;;
  submit) shift && cmd_submit "$@" ;;
  run) shift && cmd_run "$@" ;;
  *)
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
