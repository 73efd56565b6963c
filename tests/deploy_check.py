#!/usr/bin/env python3
"""Checks of the deployment artefacts (deploy/) for tests/test_deploy.sh. Each
subcommand prints one line per problem and exits 1 when there is any:
  yaml FILE...                    every file parses (all documents)
  dockerfile deploy/Dockerfile    multi-stage, portable ARCH, non-root, volume, health check
  buildpkgs deploy/Dockerfile     prints the packages the build stage installs
  compose deploy/compose.yaml     services, files it mounts, loopback ports, secrets
  k8s RENDERED.yaml               probes, security context, mounts, selectors (kustomize output)
  render DIR OUT.yaml             what `kubectl kustomize DIR` makes of resources, generators and
                                  namespace, without hashed names (where kubectl is missing)
  dashboard FILE.json             panels, ids, layout, queries
  syscalls UNIT STRACE.txt DATA   every system call in an strace log is one the unit's
                                  SystemCallFilter= lines allow (systemd-analyze expands groups);
                                  sockets of RestrictAddressFamilies=, no W+X mapping, files
                                  written only under DATA (the unit's ReadWritePaths=)
  promql URL DASHBOARD RULES      against a real Prometheus at URL scraping a real daemon: the
                                  daemon's target is up, every rule evaluates without error, every
                                  dashboard query runs (most return series); prints the counts
  metrics METRICS.txt FILE...     every metric (and label value) the dashboard and alert
                                  queries name exists in a real daemon's /metrics"""
import json
import os
import re
import sys

import yaml

problems = []


def bad(msg):
    problems.append(msg)


def check_yaml(files):
    for f in files:
        try:
            with open(f) as fh:
                docs = [d for d in yaml.safe_load_all(fh) if d is not None]
            if not docs:
                bad(f"{f}: no YAML document")
        except (OSError, yaml.YAMLError) as e:
            bad(f"{f}: {e}")


def dockerfile_stages(path):
    """[(from-line, [instruction lines])] with continuation lines joined"""
    lines, cur = [], ""
    for raw in open(path):
        s = raw.rstrip("\n")
        if not cur and (not s.strip() or s.lstrip().startswith("#")):
            continue
        if s.lstrip().startswith("#"):
            continue
        cur += s[:-1] + " " if s.endswith("\\") else s
        if not s.endswith("\\"):
            lines.append(" ".join(cur.split()))
            cur = ""
    stages = []
    for ln in lines:
        if ln.upper().startswith("FROM "):
            stages.append((ln, []))
        elif stages:
            stages[-1][1].append(ln)
    return lines, stages


def check_dockerfile(path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    lines, stages = dockerfile_stages(path)
    if len(stages) < 2:
        bad(f"{path}: {len(stages)} stage(s); a build stage and a runtime stage expected")
        return
    arch = [ln for ln in lines if re.match(r"ARG ARCH=", ln)]
    if not arch or not re.fullmatch(r"ARG ARCH=x86-64(-v[234])?", arch[0]):
        bad(f"{path}: ARCH must default to a portable x86-64 level, got {arch}")
    build_text = " ".join(stages[0][1])
    if "ARCH=\"$ARCH\"" not in build_text and "ARCH=$ARCH" not in build_text:
        bad(f"{path}: the build stage does not pass ARCH to make")
    final = stages[-1][1]
    users = [ln.split()[1] for ln in final if ln.upper().startswith("USER ")]
    if not users or users[-1].split(":")[0] in ("0", "root"):
        bad(f"{path}: the runtime stage must end as a non-root USER, got {users}")
    if not any(ln.startswith("HEALTHCHECK ") and "CMD" in ln for ln in final):
        bad(f"{path}: no HEALTHCHECK in the runtime stage")
    vols = [ln for ln in final if ln.startswith("VOLUME ")]
    env = " ".join(ln for ln in final if ln.startswith("ENV "))
    m = re.search(r"IISAN_DATA=(\S+)", env)
    if not m or not any(m.group(1) in v for v in vols):
        bad(f"{path}: IISAN_DATA must be the VOLUME ({env!r}, {vols})")
    if any(re.search(r"-dev\b", ln) for ln in final if ln.startswith("RUN ")):
        bad(f"{path}: the runtime stage installs -dev packages")
    ign = path + ".dockerignore"
    pats = [ln.strip() for ln in open(ign) if ln.strip() and not ln.startswith("#")] \
        if os.path.exists(ign) else []
    for must in (".git", "build", "**/secrets", "**/admin_token"):
        if must not in pats:
            bad(f"{ign}: does not leave out {must}")
    for ln in final:
        if ln.startswith("COPY ") and "--from=" not in ln:
            src = ln.split()[1]
            if not os.path.exists(os.path.join(root, src)):
                bad(f"{path}: COPY {src}: no such file")


def build_packages(path):
    _, stages = dockerfile_stages(path)
    for ln in stages[0][1]:
        m = re.search(r"apt-get install ([^&]*)", ln)
        if m:
            print(" ".join(w for w in m.group(1).split() if not w.startswith("-")))


def check_compose(path):
    d = yaml.safe_load(open(path))
    here = os.path.dirname(os.path.abspath(path))
    svcs = d.get("services", {})
    for name in ("iisand", "prometheus", "grafana"):
        if name not in svcs:
            bad(f"{path}: no service {name}")
    secrets = d.get("secrets", {})
    for name, s in svcs.items():
        for p in s.get("ports", []):
            if not str(p).startswith("127.0.0.1:"):
                bad(f"{path}: {name} publishes {p} beyond the host's loopback")
        for v in s.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith(".") and not os.path.exists(os.path.join(here, src)):
                bad(f"{path}: {name} mounts {src}: no such path")
        for sec in s.get("secrets", []):
            if sec not in secrets:
                bad(f"{path}: {name} uses undeclared secret {sec}")
    b = svcs.get("iisand", {}).get("build", {})
    df = os.path.join(here, b.get("context", "."), b.get("dockerfile", "Dockerfile"))
    if not os.path.exists(df):
        bad(f"{path}: iisand's Dockerfile {df} does not exist")
    tok = svcs.get("iisand", {}).get("environment", {}).get("IISAN_ADMIN_TOKEN_FILE", "")
    if not tok.startswith("/run/secrets/") or tok[len("/run/secrets/"):] not in svcs["iisand"].get("secrets", []):
        bad(f"{path}: IISAN_ADMIN_TOKEN_FILE {tok!r} is not one of iisand's secrets")


def container_paths(c):
    return {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}


def check_k8s(path):
    objs = [o for o in yaml.safe_load_all(open(path)) if o]
    kinds = {o["kind"]: o for o in objs}
    for k in ("StatefulSet", "Service", "ConfigMap", "Secret"):
        if k not in kinds:
            bad(f"{path}: no {k}")
    sts = kinds.get("StatefulSet")
    if not sts:
        return
    pod = sts["spec"]["template"]["spec"]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    psc = pod.get("securityContext", {})
    if not psc.get("runAsNonRoot") or not psc.get("runAsUser"):
        bad(f"{path}: the pod does not run as a non-root user")
    c = pod["containers"][0]
    sc = c.get("securityContext", {})
    if not sc.get("readOnlyRootFilesystem") or sc.get("allowPrivilegeEscalation") is not False:
        bad(f"{path}: the container's root file system is writable or it may escalate")
    if "ALL" not in sc.get("capabilities", {}).get("drop", []):
        bad(f"{path}: capabilities are not all dropped")
    probes = {p: c.get(p, {}).get("httpGet", {}).get("path") for p in
              ("livenessProbe", "readinessProbe", "startupProbe")}
    if probes["livenessProbe"] != "/livez" or probes["readinessProbe"] != "/readyz":
        bad(f"{path}: probes {probes}")
    if "memory" not in c.get("resources", {}).get("requests", {}):
        bad(f"{path}: no memory request")
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    mounts = container_paths(c)
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    claims = [t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])]
    if mounts.get(claims[0] if claims else None) != env.get("IISAN_DATA"):
        bad(f"{path}: IISAN_DATA {env.get('IISAN_DATA')} is not the volume claim's mount {mounts}")
    for var, kind in (("IISAN_CONFIG", "configMap"), ("IISAN_ADMIN_TOKEN_FILE", "secret")):
        f = env.get(var, "")
        vol = [n for n, v in vols.items() if kind in v and mounts.get(n) == os.path.dirname(f)]
        if not vol:
            bad(f"{path}: {var}={f} is not in a mounted {kind}")
            continue
        ref = vols[vol[0]][kind]
        name = ref.get("name") or ref.get("secretName")
        obj = [o for o in objs if o["metadata"]["name"] == name]
        if not obj or os.path.basename(f) not in (obj[0].get("data") or {}):
            bad(f"{path}: {var}: {name} has no key {os.path.basename(f)}")
    for o in objs:
        if o["kind"] == "Service":
            sel = o["spec"].get("selector", {})
            if not sel or any(labels.get(k) != v for k, v in sel.items()):
                bad(f"{path}: Service {o['metadata']['name']} selects {sel}, pods have {labels}")


def render(d, out):
    """kustomization.yaml's resources, generated ConfigMaps and Secrets, and namespace"""
    import base64
    k = yaml.safe_load(open(os.path.join(d, "kustomization.yaml")))
    objs = []
    for r in k.get("resources", []):
        objs += [o for o in yaml.safe_load_all(open(os.path.join(d, r))) if o]
    for key, kind in (("configMapGenerator", "ConfigMap"), ("secretGenerator", "Secret")):
        for g in k.get(key, []):
            data = {}
            for f in g.get("files", []):
                name, _, src = f.partition("=")
                text = open(os.path.join(d, src or name)).read()
                data[name] = base64.b64encode(text.encode()).decode() if kind == "Secret" else text
            objs.append({"apiVersion": "v1", "kind": kind, "metadata": {"name": g["name"]},
                         "data": data})
    for o in objs:
        if o["kind"] != "Namespace" and k.get("namespace"):
            o["metadata"]["namespace"] = k["namespace"]
    with open(out, "w") as f:
        yaml.safe_dump_all(objs, f, sort_keys=False)


def queries(obj):
    """every PromQL expression in a dashboard (targets) or rule file (expr)"""
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "expr" and isinstance(v, str):
                out.append(v)
            elif k == "query" and isinstance(v, dict) and "query" in v:
                out.append(v["query"])
            else:
                out += queries(v)
    elif isinstance(obj, list):
        for v in obj:
            out += queries(v)
    return out


def check_dashboard(path):
    d = json.load(open(path))
    ids, cells = set(), set()
    for p in d.get("panels", []):
        if p["id"] in ids:
            bad(f"{path}: panel id {p['id']} twice")
        ids.add(p["id"])
        g = p["gridPos"]
        if g["x"] < 0 or g["x"] + g["w"] > 24:
            bad(f"{path}: panel {p['title']!r} is outside the 24 columns")
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                if (x, y) in cells:
                    bad(f"{path}: panel {p['title']!r} overlaps another at {x},{y}")
                cells.add((x, y))
        if p["type"] != "row" and not [t for t in p.get("targets", []) if t.get("expr")]:
            bad(f"{path}: panel {p['title']!r} has no query")
    if not queries(d):
        bad(f"{path}: no query")


def syscall_group(name, seen):
    """the system calls of NAME (a call, or a @group expanded by systemd-analyze, recursively)"""
    import subprocess
    if not name.startswith("@"):
        return {name}
    if name in seen:
        return set()
    seen.add(name)
    out = subprocess.run(["systemd-analyze", "syscall-filter", name], capture_output=True,
                         text=True, check=True).stdout.splitlines()
    calls = set()
    for ln in out[1:]:
        w = ln.strip()
        if w and not w.startswith("#"):
            calls |= syscall_group(w, seen)
    return calls


def check_syscalls(unit, trace):
    allowed, seen = None, set()
    for ln in open(unit):
        if not ln.startswith("SystemCallFilter="):
            continue
        v = ln.split("=", 1)[1].strip()
        deny = v.startswith("~")
        names = set()
        for w in v.lstrip("~").split():
            names |= syscall_group(w, set())
        if allowed is None:
            allowed = set() if deny else names
            if deny:
                bad(f"{unit}: the first SystemCallFilter= is a deny list")
        elif deny:
            allowed -= names
        else:
            allowed |= names
    used = set()
    for ln in open(trace):
        m = re.match(r"\d+\s+([a-z_0-9]+)\(", ln)
        if m:
            used.add(m.group(1))
    if len(used) < 20:
        bad(f"{trace}: only {len(used)} system calls traced")
    for c in sorted(used - (allowed or set())):
        bad(f"{unit}: the daemon calls {c}, which SystemCallFilter= refuses")


def check_sandbox(unit, trace, data):
    """RestrictAddressFamilies=, MemoryDenyWriteExecute=, ProtectSystem=strict against a trace"""
    conf = {}
    for ln in open(unit):
        k, _, v = ln.strip().partition("=")
        conf.setdefault(k, []).append(v)
    families = set(" ".join(conf.get("RestrictAddressFamilies", [])).split())
    wx = re.compile(r"(mmap|mprotect)\(.*(PROT_WRITE\|PROT_EXEC|PROT_EXEC\|PROT_WRITE)")
    data = os.path.realpath(data)
    for ln in open(trace):
        m = re.search(r"\bsocket\((AF_[A-Z0-9]+)", ln)
        if m and families and m.group(1) not in families:
            bad(f"{unit}: the daemon opens an {m.group(1)} socket: {ln.strip()}")
        if conf.get("MemoryDenyWriteExecute") == ["yes"] and wx.search(ln):
            bad(f"{unit}: a writable and executable mapping: {ln.strip()}")
        m = re.search(r'\bopenat\([^"]*"([^"]+)", ([A-Z_|]+)', ln)
        if m and re.search(r"O_WRONLY|O_RDWR|O_CREAT", m.group(2)) and "= -1" not in ln:
            path = os.path.realpath(m.group(1))
            if not (path + "/").startswith(data + "/") and not path.startswith("/dev/"):
                bad(f"{unit}: the daemon writes {m.group(1)} outside the store (ProtectSystem=strict)")


def prom_get(url, path, **params):
    import urllib.parse
    import urllib.request
    q = urllib.parse.urlencode(params)
    with urllib.request.urlopen(f"{url}{path}?{q}", timeout=10) as r:
        return json.load(r)


def check_promql(url, dashboard, rules):
    targets = prom_get(url, "/api/v1/targets")["data"]["activeTargets"]
    up = [t for t in targets if t["labels"].get("job") == "iisand"]
    if not up or any(t["health"] != "up" for t in up):
        bad(f"{url}: the iisand target is not up: {[(t['health'], t['lastError']) for t in up]}")
    groups = prom_get(url, "/api/v1/rules")["data"]["groups"]
    names = [r["name"] for g in groups for r in g["rules"]]
    want = [r["alert"] for g in yaml.safe_load(open(rules))["groups"] for r in g["rules"]]
    if sorted(names) != sorted(want):
        bad(f"{url}: rules loaded {sorted(names)}, {rules} has {sorted(want)}")
    for g in groups:
        for r in g["rules"]:
            if r.get("health") != "ok" or r.get("lastError"):
                bad(f"{rules}: {r['name']}: {r.get('health')} {r.get('lastError')}")
    exprs = queries(json.load(open(dashboard)))
    with_data = 0
    for e in exprs:
        e = e.replace("$__rate_interval", "1m").replace("$job", "iisand").replace("$instance", ".*")
        m = re.fullmatch(r"label_values\((.*), *(\w+)\)", e)  # Grafana's, not PromQL
        if m:
            e = f"count by ({m.group(2)}) ({m.group(1)})"
        try:
            res = prom_get(url, "/api/v1/query", query=e)
        except Exception as ex:  # an HTTP 400 is a query Prometheus refused
            bad(f"{dashboard}: {e}: {ex}")
            continue
        if res.get("status") != "success":
            bad(f"{dashboard}: {e}: {res}")
        elif res["data"]["result"]:
            with_data += 1
    print(f"{len(exprs)} dashboard queries ran, {with_data} returned series; "
          f"{len(names)} rules evaluated")


# PromQL names that are not metrics
FUNCS = set("""sum min max avg count rate irate increase histogram_quantile by without on ignoring
group_left group_right and or unless bool offset label_values le time vector scalar abs clamp_min
clamp_max delta deriv topk bottomk quantile stddev count_values absent changes resets
humanizePercentage humanizeDuration""".split())
TARGET_LABELS = {"job", "instance"}  # added by Prometheus, not by the daemon


def parse_metrics(path):
    """{metric name: [label dicts]} of an exposition text"""
    out = {}
    for ln in open(path):
        if not ln.strip() or ln.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s", ln)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(3) or ""))
        out.setdefault(m.group(1), []).append(labels)
    return out


def check_metrics(mfile, files):
    have = parse_metrics(mfile)
    for f in files:
        obj = json.load(open(f)) if f.endswith(".json") else yaml.safe_load(open(f))
        for expr in queries(obj):
            bare = re.sub(r'"[^"]*"', '""', expr)  # no words from inside strings
            bare = re.sub(r"\[[^\]]*\]", "", bare)  # no range durations
            for sel in re.finditer(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?", expr):
                name = sel.group(1)
                if name in FUNCS or name == "up" or name.startswith("__") or \
                        not re.search(r"\b%s\b" % re.escape(name), bare):
                    continue
                if not re.match(r"iisan_|process_", name):
                    continue
                if name not in have:
                    bad(f"{f}: {name} is not in the daemon's /metrics")
                    continue
                for lab, val in re.findall(r'(\w+)\s*=\s*"([^"]*)"', sel.group(2) or ""):
                    if lab in TARGET_LABELS:
                        continue
                    if not any(s.get(lab) == val for s in have[name]):
                        bad(f"{f}: {name}{{{lab}=\"{val}\"}} is not in the daemon's /metrics")


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    {"yaml": check_yaml,
     "dockerfile": lambda a: check_dockerfile(a[0]),
     "buildpkgs": lambda a: build_packages(a[0]),
     "compose": lambda a: check_compose(a[0]),
     "render": lambda a: render(a[0], a[1]),
     "k8s": lambda a: check_k8s(a[0]),
     "dashboard": lambda a: check_dashboard(a[0]),
     "syscalls": lambda a: (check_syscalls(a[0], a[1]), check_sandbox(a[0], a[1], a[2])),
     "promql": lambda a: check_promql(a[0], a[1], a[2]),
     "metrics": lambda a: check_metrics(a[0], a[1:])}[cmd](args)
    for p in problems:
        print(p)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
