#!/usr/bin/env bash
# Cluster mode's deployment files (deploy/cluster/, docs/scaling.md), checked as far as this
# machine allows: the compose file (parses; docker-compose config when installed; only
# loopback ports; every node a trainer or replica on the shared repository) and the
# Kubernetes manifests (kubectl kustomize, kubernetes-validate against the API schemas; the
# replicas a Deployment with an autoscaler, the trainer a StatefulSet, the repository a
# ReadWriteMany claim). A missing tool skips its checks. Ends with "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
T=$(mktemp -d /tmp/iisan-deploy-cluster-XXXXXX)
trap 'rm -rf "$T"' EXIT
pass=0; fail=0
ok() { pass=$((pass+1)); }
bad() { fail=$((fail+1)); echo "FAIL: $*" >&2; }
have() { command -v "$1" >/dev/null 2>&1; }

C=deploy/cluster/compose.yaml
if python3 - "$C" <<'PY'
import sys, yaml
d = yaml.safe_load(open(sys.argv[1])); s = d["services"]; bad = []
roles = {n: v.get("environment", {}).get("IISAN_ROLE") for n, v in s.items()}
if sorted(r for r in roles.values() if r) != ["replica", "replica", "trainer"]: bad.append(f"roles {roles}")
if "--appendfsync always" not in " ".join(s["redis"]["command"]): bad.append("redis without appendfsync always")
for n, v in s.items():
    for p in v.get("ports", []):
        if not str(p).startswith("127.0.0.1:"): bad.append(f"{n} publishes {p}")
    if roles.get(n) and not any(str(m).startswith("repo:/repo") for m in v["volumes"]): bad.append(f"{n} lacks the repository")
if bad: print("\n".join(bad))
sys.exit(1 if bad else 0)
PY
then ok; else bad "$C"; fi
if have docker-compose; then
  mkdir -p "$T/c/deploy/secrets"; cp -r deploy/cluster "$T/c/deploy/"; cp deploy/Dockerfile "$T/c/deploy/"
  echo x >"$T/c/deploy/secrets/admin_token"; sed -i '/^name: /d' "$T/c/deploy/cluster/compose.yaml"
  docker-compose -f "$T/c/deploy/cluster/compose.yaml" config -q && ok || bad "docker-compose config $C"
else echo "skipped: docker-compose is not installed"; fi

K=deploy/cluster/k8s
if have kubectl; then
  cp -r "$K" "$T/k8s"; echo x >"$T/k8s/admin_token"
  if kubectl kustomize "$T/k8s" >"$T/all.yaml"; then ok; else bad "kubectl kustomize $K"; fi
  if python3 - "$T/all.yaml" <<'PY'
import sys, yaml
objs = [o for o in yaml.safe_load_all(open(sys.argv[1])) if o]; bad = []
k = {}
for o in objs: k.setdefault(o["kind"], []).append(o)
if [o["metadata"]["name"] for o in k.get("Deployment", [])] != ["iisand-replica"]: bad.append("no replica Deployment")
hpa = k.get("HorizontalPodAutoscaler", [{}])[0]
if hpa.get("spec", {}).get("scaleTargetRef", {}).get("name") != "iisand-replica": bad.append("no autoscaler on the replicas")
if "iisand-trainer" not in [o["metadata"]["name"] for o in k.get("StatefulSet", [])]: bad.append("no trainer StatefulSet")
pvc = {o["metadata"]["name"]: o["spec"]["accessModes"] for o in k.get("PersistentVolumeClaim", [])}
if pvc.get("iisand-repo") != ["ReadWriteMany"]: bad.append(f"repository claim {pvc}")
for o in k.get("Deployment", []) + k.get("StatefulSet", []):
    for c in o["spec"]["template"]["spec"]["containers"]:
        sc = c.get("securityContext", {})
        if not sc.get("readOnlyRootFilesystem") or "ALL" not in sc.get("capabilities", {}).get("drop", []): bad.append(f"{o['metadata']['name']}: security context")
if bad: print("\n".join(bad))
sys.exit(1 if bad else 0)
PY
  then ok; else bad "the rendered manifests"; fi
  if have kubernetes-validate; then
    kubernetes-validate --quiet "$T/all.yaml" >"$T/kv.out" 2>&1 && ok || { bad "kubernetes-validate:"; tail -5 "$T/kv.out" >&2; }
  else echo "skipped: kubernetes-validate is not installed"; fi
else echo "skipped: kubectl is not installed"; fi
echo "$pass passed, $fail failed"
