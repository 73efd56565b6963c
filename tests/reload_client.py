"""A client that keeps the daemon busy during a reload (tests/test_serve_reload.sh):
until STOPFILE exists (or 60 s pass), GET /livez and POST /recommend in turn, one at a
time; writes a JSON summary to OUT: every /recommend status and model_version, and the
/livez count and slowest answer.
usage: reload_client.py BASE_URL STOPFILE OUT"""
import json
import os
import sys
import time
import urllib.error
import urllib.request

base, stopfile, out = sys.argv[1:4]
rec = {"history": ["I001", "I002", "I003"], "k": 5}
summary = {"livez": 0, "livez_max_s": 0.0, "livez_bad": [], "recommend": {}, "versions": [],
           "errors": []}


def call(path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method="POST" if data else "GET",
                                 headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


end = time.monotonic() + 60
while not os.path.exists(stopfile) and time.monotonic() < end:
    try:
        t0 = time.monotonic()
        st, _ = call("/livez")
        dt = time.monotonic() - t0
        summary["livez"] += 1
        summary["livez_max_s"] = max(summary["livez_max_s"], dt)
        if st != 200:
            summary["livez_bad"].append(st)
        st, d = call("/recommend", rec)
        summary["recommend"][str(st)] = summary["recommend"].get(str(st), 0) + 1
        if st == 200 and d["model_version"] not in summary["versions"]:
            summary["versions"].append(d["model_version"])
    except Exception as e:  # a refused connection or a timeout: a dropped request
        summary["errors"].append(repr(e))
    time.sleep(0.01)
json.dump(summary, open(out, "w"))
