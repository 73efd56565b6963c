#!/usr/bin/env python3
"""Socket-level checks of the daemon's HTTP edge (tests/test_serve_edge.sh).

usage: edge_checks.py PORT CHECK
  keepalive  every route keeps the connection open; pipelined requests after a GET
  limits     max_connections_per_client 6 and connection_limit 10 (as the script starts it):
             idle connections over the limits get an early 503, then the daemon serves again
  bodymem    max_body_memory_bytes 65536: a body whose Content-Length does not fit beside the
             half-sent ones gets 503 body_memory at once; the memory is given back
Prints one line per check, "ok  ..." or "FAIL: ..."."""
import http.client
import json
import re
import socket
import sys
import time

PORT, CHECK = int(sys.argv[1]), sys.argv[2]
JSON = {"Content-Type": "application/json"}


def report(cond, what):
    print(("ok  " if cond else "FAIL: ") + what, flush=True)


def keepalive():
    c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=10)
    seq = [("GET", "/healthz", None), ("GET", "/livez", None), ("GET", "/readyz", None),
           ("GET", "/metrics", None), ("GET", "/items/I001", None),
           ("POST", "/recommend", '{"history":["I001","I002"],"k":3}'),
           ("POST", "/interactions", '{"user_id":"ka","item_id":"I003"}'),
           ("GET", "/nope", None), ("GET", "/healthz", None)]
    c.connect()
    sock = c.sock
    for m, p, b in seq:
        c.request(m, p, b, JSON if b else {})
        r = c.getresponse()
        r.read()
        report(r.getheader("Connection", "").lower() != "close" and not r.will_close,
               "%s %s keeps the connection (status %d)" % (m, p, r.status))
    report(c.sock is sock, "one socket for all %d requests" % len(seq))
    c.close()
    # three requests in one write: the answers come back in order on the same connection
    s = socket.create_connection(("127.0.0.1", PORT), timeout=10)
    body = b'{"user_id":"pipe","item_id":"I004"}'
    s.sendall(b"GET /livez HTTP/1.1\r\nHost: localhost\r\n\r\n"
              b"GET /readyz HTTP/1.1\r\nHost: localhost\r\n\r\n"
              b"POST /interactions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
              b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    data = b""
    deadline = time.time() + 10
    while data.count(b"HTTP/1.1 ") < 3 or not data.rstrip().endswith(b"}"):
        if time.time() > deadline:
            break
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", data)
    report(statuses == [b"200", b"200", b"200"] and b'"accepted":1' in data,
           "pipelined GET, GET, POST answered in order: %s" % statuses)


def status_of(sock):
    """sends GET /livez on sock: the status, or None when the daemon closed it"""
    try:
        sock.sendall(b"GET /livez HTTP/1.1\r\nHost: localhost\r\n\r\n")
        data = sock.recv(65536)
    except OSError:
        return None, b""
    if not data:
        return None, b""
    return int(data.split()[1]), data


def retry(connect):
    """a new connection's answer, retried for up to 5 s while it is not 503 (the daemon
    counts the idle connections as it accepts them, which a loaded machine may delay)"""
    for _ in range(25):
        s = connect()
        st, data = status_of(s)
        s.close()
        if st == 503:
            break
        time.sleep(0.2)
    return st, data


def limits():
    held = []
    for _ in range(6):  # the per-client limit, idle
        held.append(socket.create_connection(("127.0.0.1", PORT), timeout=10))
    st, data = retry(lambda: socket.create_connection(("127.0.0.1", PORT), timeout=10))
    report(st == 503 and b'"overloaded"' in data and b"per client" in data,
           "a 7th connection from one client gets 503 overloaded (got %s)" % st)
    # other loopback addresses count as other clients, up to connection_limit in total
    others = []
    for i in range(4):
        s = socket.socket()
        s.bind(("127.0.0.%d" % (2 + i), 0))
        s.connect(("127.0.0.1", PORT))
        others.append(s)
    def from_9():
        s = socket.socket()
        s.bind(("127.0.0.9", 0))
        s.connect(("127.0.0.1", PORT))
        return s
    st, data = retry(from_9)
    report(st == 503 and b"open connections" in data and b"per client" not in data,
           "an 11th connection in total gets 503 overloaded (got %s)" % st)
    for s in held + others:
        s.close()
    time.sleep(0.3)
    c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=10)
    c.request("GET", "/livez")
    r = c.getresponse()
    r.read()
    report(r.status == 200, "served again once the idle connections went (%d)" % r.status)


def metric(name):
    c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=10)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def bodymem():
    held = []
    for _ in range(3):  # 3 bodies of 30,000 bytes, 20,000 sent: each reserves 30,001
        s = socket.create_connection(("127.0.0.1", PORT), timeout=10)
        s.sendall(b"POST /interactions HTTP/1.1\r\nHost: localhost\r\nContent-Type: "
                  b"application/json\r\nContent-Length: 30000\r\n\r\n" + b" " * 20000)
        held.append(s)
        for _ in range(50):  # until the daemon has read this one's headers
            if len(held) == 3 or metric("iisan_http_body_bytes") == 30001 * len(held):
                break
            time.sleep(0.1)
    held[-1].settimeout(5)
    try:
        data = held[-1].recv(65536)
    except OSError:
        data = b""
    report(data.startswith(b"HTTP/1.1 503") and b'"body_memory"' in data,
           "the third half-sent body gets 503 body_memory at once: %r" % data[:60])
    report(metric("iisan_http_body_bytes") == 60002, "two bodies held: 60,002 bytes (metric %s)"
           % metric("iisan_http_body_bytes"))
    for s in held:
        s.close()
    time.sleep(0.3)
    report(metric("iisan_http_body_bytes") == 0, "given back when the clients go")
    c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=10)
    c.request("POST", "/interactions", json.dumps({"user_id": "m", "item_id": "I001"}), JSON)
    r = c.getresponse()
    r.read()
    report(r.status == 200, "a body fits again (%d)" % r.status)


{"keepalive": keepalive, "limits": limits, "bodymem": bodymem}[CHECK]()
