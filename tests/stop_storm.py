#!/usr/bin/env python3
"""SIGTERM storm (tests/test_serve_stop.sh): for each cycle, start `iisan serve`
on a free port, hammer POST /interactions from several keep-alive clients (and
/metrics, /recommend readers, which reach the writer and the batcher), SIGTERM
the daemon at a random moment, and check the exit (status 0, no signal, no
sanitizer report). At the end one more daemon reads every user back: each
acknowledged interaction must be stored (acknowledged writes are a prefix of
what the store holds for that user, since each client posts its user's items in
order and waits for each answer).

usage: stop_storm.py BIN DATA_DIR WORK_DIR CYCLES WRITERS TOKEN LABEL
Prints one JSON line of figures; exit 1 when any check failed."""
import http.client
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

BIN, DATA, WORK = sys.argv[1], sys.argv[2], sys.argv[3]
CYCLES, WRITERS, TOKEN, LABEL = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6], sys.argv[7]
SAN = re.compile(r"ERROR: (Address|Leak)Sanitizer|runtime error:")
JSON = {"Content-Type": "application/json"}
N_ITEMS = 40


def start(log_path, extra=()):
    log = open(log_path, "w")
    p = subprocess.Popen([BIN, "serve", "--data", DATA, "--port", "0", "--threads", "3",
                          "--log-requests", "false", "--shutdown-timeout-s", "5", *extra],
                         stdout=subprocess.DEVNULL, stderr=log)
    port = None
    for _ in range(600):
        m = re.search(r"event=listening.* port=(\d+)", open(log_path).read())
        if m:
            port = int(m.group(1))
            break
        if p.poll() is not None:
            break
        time.sleep(0.01)
    return p, port


def writer(port, user, acked, stop):
    """posts user's interactions one at a time; acked[user] counts the 200s"""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    i = 0
    while not stop.is_set():
        body = json.dumps([{"user_id": user, "item_id": "I%03d" % (i % N_ITEMS)}])
        try:
            conn.request("POST", "/interactions", body, JSON)
            r = conn.getresponse()
            r.read()
        except (OSError, http.client.HTTPException):
            return  # the daemon closed the connection or is gone
        if r.status == 200:
            acked[user] += 1
            i += 1
        elif r.status == 503:
            return
        else:
            acked["unexpected"] += 1
            return


def reader(port, stop, counts):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    while not stop.is_set():
        try:
            if random.random() < 0.5:
                conn.request("GET", "/metrics")
            else:
                conn.request("POST", "/recommend", '{"history":["I001","I002"],"k":3}', JSON)
            r = conn.getresponse()
            r.read()
            counts[r.status] = counts.get(r.status, 0) + 1
        except (OSError, http.client.HTTPException):
            return


def cycle(c, acked, fails):
    log_path = os.path.join(WORK, "storm.log")
    p, port = start(log_path)
    if port is None:
        fails.append("cycle %d: the daemon did not start: %s" % (c, open(log_path).read()[-500:]))
        p.kill()
        p.wait()
        return
    stop = threading.Event()
    users = ["%s-c%d-w%d" % (LABEL, c, w) for w in range(WRITERS)]
    for u in users:
        acked[u] = 0
    threads = [threading.Thread(target=writer, args=(port, u, acked, stop)) for u in users]
    counts = {}
    threads.append(threading.Thread(target=reader, args=(port, stop, counts)))
    for t in threads:
        t.start()
    time.sleep(random.uniform(0.01, 0.12))
    p.send_signal(signal.SIGTERM)
    try:
        rc = p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        rc = p.wait()
        fails.append("cycle %d: no exit 30 s after SIGTERM" % c)
    stop.set()
    for t in threads:
        t.join()
    log = open(log_path).read()
    if rc != 0:
        fails.append("cycle %d: exit status %d: %s" % (c, rc, log[-1500:]))
    elif SAN.search(log) or "event=stopped" not in log:
        fails.append("cycle %d: sanitizer report or no stopped line: %s" % (c, log[-1500:]))


def verify(acked):
    """every acknowledged interaction is in the store"""
    p, port = start(os.path.join(WORK, "verify.log"), ("--admin-token", TOKEN))
    lost, missing = 0, []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    auth = {"Authorization": "Bearer " + TOKEN}
    for u, n in acked.items():
        if u == "unexpected" or n == 0:
            continue
        conn.request("GET", "/users/" + u, headers=auth)
        r = conn.getresponse()
        body = r.read()
        items = json.loads(body)["items"] if r.status == 200 else []
        want = ["I%03d" % (i % N_ITEMS) for i in range(n)]
        if items[:n] != want:
            lost += n - sum(1 for a, b in zip(items, want) if a == b)
            missing.append(u)
    conn.close()
    p.send_signal(signal.SIGTERM)
    p.wait()
    return lost, missing


def main():
    random.seed(os.getpid())
    acked = {"unexpected": 0}
    fails = []
    t0 = time.time()
    for c in range(CYCLES):
        cycle(c, acked, fails)
    lost, missing = verify(acked)
    n_acked = sum(v for k, v in acked.items() if k != "unexpected")
    fig = {"label": LABEL, "stops": CYCLES, "acknowledged": n_acked, "lost": lost,
           "abnormal_exits": len(fails), "unexpected_answers": acked["unexpected"],
           "seconds": round(time.time() - t0, 1)}
    for f in fails[:5]:
        print("FAIL:", f, file=sys.stderr)
    if missing:
        print("FAIL: acknowledged interactions missing for", missing[:5], file=sys.stderr)
    print(json.dumps(fig))
    sys.exit(0 if not fails and not lost and not acked["unexpected"] and n_acked > 0 else 1)


main()
