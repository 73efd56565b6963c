#!/usr/bin/env bash
# The deployment artefacts (deploy/, docs/operations.md "Deploying"), checked as far as this
# machine allows, without a container engine: every YAML and JSON file parses; the
# Dockerfile's shape (tests/deploy_check.py) and the runtime packages of the real binary;
# the compose file (docker-compose config when installed); the systemd unit
# (systemd-analyze verify and its offline security score); the Prometheus configuration and
# alert rules (promtool check and promtool test rules); the Kubernetes manifests (kubectl
# kustomize, kubernetes-validate against the API schemas); the Grafana dashboard (its
# generator's output, its layout); and, against a real daemon started with the shipped
# configuration files, every metric the dashboard and the alerts query and the image's
# health check. A missing tool skips its checks with a message. Ends with "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
source tests/serve_lib.sh
skip() { echo "skipped: $*"; }
have() { command -v "$1" >/dev/null 2>&1; }
# pycheck DESCRIPTION SUBCOMMAND ARGS...: tests/deploy_check.py, its problems printed
pycheck() {
  local what=$1; shift
  if python3 tests/deploy_check.py "$@" >"$T/py.out" 2>&1; then ok
  else bad "$what:"; cat "$T/py.out" >&2; fi
}

# ---- every YAML and JSON file parses ----
mapfile -t yamls < <(find deploy -name '*.yaml' -o -name '*.yml' | sort)
pycheck "YAML parses (${#yamls[@]} files)" yaml "${yamls[@]}"
[ "${#yamls[@]}" -ge 9 ] && ok || bad "only ${#yamls[@]} YAML files under deploy/"
for j in deploy/grafana/dashboards/*.json; do
  check "$j parses" -- python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$j"
done

# ---- Dockerfile: shape, and the packages of the libraries the real binary links ----
pycheck "deploy/Dockerfile" dockerfile deploy/Dockerfile
PLAIN=build/iisan; [ -x "$PLAIN" ] || PLAIN=$BIN
if deploy/runtime-packages.sh "$PLAIN" >"$T/pkgs" 2>"$T/pkgs.err"; then
  grep -qx libmicrohttpd12 "$T/pkgs" && grep -qx liblmdb0 "$T/pkgs" && ok ||
    bad "runtime-packages.sh misses libraries: $(tr '\n' ' ' <"$T/pkgs")"
else bad "runtime-packages.sh $PLAIN: $(cat "$T/pkgs.err")"; fi
# every -lNAME of the Makefile has its -dev package in the build stage, or one that depends on it
buildpkgs=$(python3 tests/deploy_check.py buildpkgs deploy/Dockerfile)
deps=$(dpkg-query -W -f='${Depends}\n' $buildpkgs 2>/dev/null | tr ',|' '\n\n' | awk '{print $1}')
for l in $(sed -n 's/^LDLIBS *:\?= *//p' Makefile); do
  l=${l#-l}; case $l in m|pthread|dl|rt) continue ;; esac
  f=$(realpath -s "$(cc -print-file-name="lib$l.so")")
  pkg=$(dpkg -S "$f" 2>/dev/null | head -n 1 | cut -d: -f1)
  pkg=${pkg:-lib$l-dev}  # an alternatives link (libopenblas.so) belongs to no package
  printf '%s\n' $buildpkgs $deps | grep -qx "$pkg" && ok ||
    bad "-l$l: deploy/Dockerfile's build stage installs neither $pkg nor a package depending on it"
done

# ---- compose ----
pycheck "deploy/compose.yaml" compose deploy/compose.yaml
if have docker-compose; then
  # Debian's docker-compose 1.29 predates the top-level "name"; its secrets must exist
  mkdir -p "$T/compose/secrets"; cp -r deploy/. "$T/compose/"
  echo x >"$T/compose/secrets/admin_token"; echo y >"$T/compose/secrets/grafana_admin_password"
  sed -i '/^name: /d' "$T/compose/compose.yaml"
  check "docker-compose config" -- docker-compose -f "$T/compose/compose.yaml" config -q
else skip "docker-compose is not installed: compose.yaml checked by tests/deploy_check.py only"; fi

# ---- systemd unit ----
if have systemd-analyze; then
  sed "s#/usr/local/bin/iisan#$PWD/$PLAIN#" deploy/iisand.service >"$T/iisand.service"
  if systemd-analyze verify "$T/iisand.service" >"$T/sd.out" 2>&1 && ! [ -s "$T/sd.out" ]; then ok
  else bad "systemd-analyze verify deploy/iisand.service:"; cat "$T/sd.out" >&2; fi
  # --threshold is on the 0..100 scale the report prints divided by 10: 20 is an exposure of 2.0
  if systemd-analyze security --offline=true --threshold=20 "$T/iisand.service" >"$T/sec.out" 2>&1; then ok
  else bad "systemd-analyze security: exposure over 2.0:"; tail -3 "$T/sec.out" >&2; fi
  grep -o 'Overall exposure level.*' "$T/sec.out" | sed 's/^/    /'
else skip "systemd-analyze is not installed"; fi

# ---- Prometheus: configuration, rules, and the rules' unit tests ----
if have promtool; then
  check "promtool check config" -- promtool check config deploy/prometheus/prometheus.yml >/dev/null
  check "promtool check rules" -- promtool check rules deploy/prometheus/alerts.yml >/dev/null
  if (cd deploy/prometheus && promtool test rules alerts_test.yml) >"$T/pt.out" 2>&1; then ok
  else bad "promtool test rules:"; cat "$T/pt.out" >&2; fi
else skip "promtool is not installed (Debian: prometheus)"; fi

# ---- Kubernetes: rendered by kustomize (by tests/deploy_check.py without kubectl), validated
# against the API's schemas ----
cp -r deploy/k8s "$T/k8s"; echo "test-token" >"$T/k8s/admin_token"
if have kubectl; then
  if kubectl kustomize "$T/k8s" >"$T/k8s.yaml" 2>"$T/k8s.err"; then ok
  else bad "kubectl kustomize deploy/k8s: $(cat "$T/k8s.err")"; fi
else
  skip "kubectl is not installed: deploy/k8s rendered by tests/deploy_check.py"
  pycheck "render deploy/k8s" render "$T/k8s" "$T/k8s.yaml"
fi
pycheck "Kubernetes manifests" k8s "$T/k8s.yaml"
if have kubernetes-validate; then
  check "kubernetes-validate --strict" -- \
    kubernetes-validate --strict --quiet "$T/k8s.yaml" deploy/k8s/seed-pod.yaml
else skip "kubernetes-validate is not installed (pip): no schema validation"; fi

# ---- Grafana dashboard: its generator's output, its layout ----
python3 deploy/grafana/dashboard.py "$T/dash.json"
check "iisand.json is dashboard.py's output (run it after editing)" -- \
  cmp -s "$T/dash.json" deploy/grafana/dashboards/iisand.json
pycheck "dashboard layout" dashboard deploy/grafana/dashboards/iisand.json

# ---- a real daemon with the shipped configuration files ----
python3 - "$T" <<'PY'
import json, random, struct, sys
d = sys.argv[1]; random.seed(3)
with open(f"{d}/items.tsv", "w") as f:
    for i in range(30): f.write(f"I{i:03d}\tItem number {i}\n")
with open(f"{d}/users.tsv", "w") as f:
    for u in range(40):
        f.write(f"U{u:03d}\t" + " ".join(f"I{random.randrange(30):03d}" for _ in range(6)) + "\n")
PY
D="$T/d"
check "import" -- "$BIN" import --data "$D" --items "$T/items.tsv" --users "$T/users.tsv" 2>/dev/null
unhealthy() { bash -c '! env IISAN_PORT="$1" deploy/healthcheck.sh 2>/dev/null' _ "$1"; }
# no model yet: alive but not ready, and so unhealthy to the image's health check
cp deploy/iisan.conf "$T/serve.conf"
if start --bind 127.0.0.1 --port 0; then
  req GET /livez; status 200 "livez without a model"
  req GET /readyz; status 503 "readyz without a model"
  check "health check unhealthy without a model" -- unhealthy "${B##*:}"
  stop; [ "$STOP_RC" = 0 ] && ok || bad "SIGTERM without a model: exit $STOP_RC"
fi
check "train" -- "$BIN" train --data "$D" --model sasrec-id --epochs 1 --d 8 >/dev/null 2>&1
# the token from a file, as compose, systemd and Kubernetes hand it over
printf 'tok-%s\n' "$RANDOM$RANDOM" >"$T/token"; chmod 600 "$T/token"
export IISAN_ADMIN_TOKEN_FILE="$T/token"
TOKEN=$(head -n 1 "$T/token")
for conf in deploy/iisan.conf deploy/k8s/iisan.conf; do
  cp "$conf" "$T/serve.conf"
  start --bind 127.0.0.1 --port 0 || continue
  grep -q 'event=model_loaded version=1' "$LOG" && ok || bad "$conf: no model loaded"
  req GET /admin/status '' -H "Authorization: Bearer $TOKEN"; status 200 "$conf: the token file's token"
  req GET /admin/status; status 401 "$conf: admin without the token"
  req POST /recommend '{"history":["I001","I002"],"k":3}' -H 'Content-Type: application/json'
  status 200 "$conf: recommend"
  req POST /interactions '{"user_id":"U001","item_id":"I004"}' -H 'Content-Type: application/json'
  status 200 "$conf: interactions"
  req POST /recommend '{"history":' -H 'Content-Type: application/json'; status 400 "$conf: bad body"
  PORT=${B##*:}
  check "$conf: health check healthy" -- env IISAN_PORT="$PORT" deploy/healthcheck.sh
  req GET /metrics; status 200 "$conf: metrics"
  cp "$T/body" "$T/metrics.txt"
  stop; [ "$STOP_RC" = 0 ] && ok || bad "$conf: SIGTERM exit $STOP_RC"
  check "health check fails with no daemon" -- unhealthy "$PORT"
done
# allowed_hosts = localhost: the health check (and the Kubernetes probes) say Host: localhost
if start --bind 127.0.0.1 --port 0 --allowed-hosts localhost; then
  check "health check under allowed_hosts" -- env IISAN_PORT="${B##*:}" deploy/healthcheck.sh
  req GET /readyz; status 421 "Host 127.0.0.1 refused under allowed_hosts = localhost"
  stop
fi
# the unit's system call filter against what the daemon (the production build) calls while it
# serves, logs interactions, runs a retraining job, reloads and stops, traced by strace
if have strace && have systemd-analyze && [ -x build/iisan ]; then
  printf '#!/bin/bash\nexec strace -f -qq -o "%s" "%s" "$@"\n' "$T/strace.txt" "$PWD/build/iisan" >"$T/traced"
  chmod +x "$T/traced"
  cp deploy/iisan.conf "$T/serve.conf"
  SAVED_BIN=$BIN; BIN=$T/traced
  if start --bind 127.0.0.1 --port 0; then
    DPID=$(pgrep -P "$PID" | head -n 1)
    req POST /recommend '{"history":["I001"],"k":2}' -H 'Content-Type: application/json'
    req POST /interactions '{"user_id":"U002","item_id":"I003"}' -H 'Content-Type: application/json'
    req POST /admin/retrain '{"epochs":1}' -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json'
    job=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["job_id"])' "$T/body" 2>/dev/null)
    for _ in $(seq 1 100); do
      req GET "/admin/jobs/$job" '' -H "Authorization: Bearer $TOKEN"
      grep -qE '"state": *"(promoted|rejected|failed)"' "$T/body" && break
      sleep 0.1
    done
    grep -qE '"state": *"(promoted|rejected)"' "$T/body" && ok || bad "traced retraining job: $(cat "$T/body")"
    req GET /metrics
    kill -HUP "$DPID"; sleep 0.3
    kill -TERM "$DPID"; wait "$PID"; rc=$?; PID=""
    [ "$rc" = 0 ] && ok || bad "traced daemon: exit $rc"
    pycheck "deploy/iisand.service's sandbox allows every call, socket and write the daemon made" \
      syscalls deploy/iisand.service "$T/strace.txt" "$D"
  fi
  BIN=$SAVED_BIN
else skip "strace, systemd-analyze or build/iisan missing: the unit's system call filter not checked"; fi

# a real Prometheus (Debian's) with deploy/prometheus's configuration and rules, scraping a
# real daemon every second: the target is up, every rule evaluates, every dashboard query runs
if have prometheus; then
  cp deploy/iisan.conf "$T/serve.conf"
  if start --bind 127.0.0.1 --port 0; then
    PP=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    mkdir -p "$T/prom"; cp deploy/prometheus/alerts.yml "$T/prom/"
    python3 - "$T/prom/prometheus.yml" "${B#http://}" "127.0.0.1:$PP" <<'PY2'
import sys, yaml
c = yaml.safe_load(open("deploy/prometheus/prometheus.yml"))
c["global"].update(scrape_interval="1s", evaluation_interval="1s")
for j in c["scrape_configs"]:
    j["static_configs"] = [{"targets": [sys.argv[2] if j["job_name"] == "iisand" else sys.argv[3]]}]
yaml.safe_dump(c, open(sys.argv[1], "w"))
PY2
    prometheus --config.file="$T/prom/prometheus.yml" --storage.tsdb.path="$T/prom/data" \
      --web.listen-address="127.0.0.1:$PP" >"$T/prom/log" 2>&1 &
    PROM=$!
    for i in $(seq 1 60); do  # traffic while at least 5 scrapes land
      req POST /recommend '{"history":["I00'$((i % 9))'"],"k":3}' -H 'Content-Type: application/json'
      req POST /interactions '{"user_id":"U003","item_id":"I00'$((i % 9))'"}' -H 'Content-Type: application/json'
      req GET "/users/U00$((i % 9))"
      n=$(curl -s "http://127.0.0.1:$PP/api/v1/query" --data-urlencode 'query=count_over_time(up{job="iisand"}[1m])' |
        python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else 0)' 2>/dev/null)
      [ "${n:-0}" -ge 5 ] 2>/dev/null && break
      sleep 0.5
    done
    pycheck "a real Prometheus scraping the daemon: rules and dashboard queries" \
      promql "http://127.0.0.1:$PP" deploy/grafana/dashboards/iisand.json deploy/prometheus/alerts.yml
    sed 's/^/    /' "$T/py.out"
    kill "$PROM"; wait "$PROM" 2>/dev/null
    stop
  fi
else skip "prometheus is not installed (Debian: prometheus): rules and queries not run"; fi

pycheck "dashboard and alert metrics exist in /metrics" metrics "$T/metrics.txt" \
  deploy/grafana/dashboards/iisand.json deploy/prometheus/alerts.yml
n=$(python3 -c 'import re,sys; print(len(set(re.findall(r"\biisan_\w+", open(sys.argv[1]).read()))))' \
  deploy/grafana/dashboards/iisand.json)
echo "    the dashboard queries $n of the daemon's metric names"
sanitizer_check
echo "$pass passed, $fail failed"
