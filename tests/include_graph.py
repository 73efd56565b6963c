"""The project's dependency graph has no circle where tests/test_include_circle.sh says.

1. Headers: the graph of quoted #include lines between the project's own files (git ls-files)
   is acyclic.
2. Objects (nm of the build's objects, OBJ_DIR): file A uses file B when A's object refers to
   a symbol B's object defines. The CLI files (server/cmd_*.c) are used by server/main.c
   alone (nothing of the daemon reaches into its command line), and the daemon's files
   (server/*.c, cluster/ counted as one module) use each other without a circle: the shared
   state (server/serve_state.c) below everything, the CLI and start-up above.
Prints one line per check ("ok ..." or "FAIL ...") and "N passed, N failed"."""
import os
import re
import subprocess
import sys

obj_dir = sys.argv[1]
passed = failed = 0


def result(ok, what, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok   {what}")
    else:
        failed += 1
        print(f"FAIL {what}: {detail}")


def cycle_in(graph):
    """one cycle of graph (a list of nodes) or None"""
    colour, stack = {}, []

    def visit(v):
        colour[v] = 1
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if colour.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in colour:
                c = visit(w)
                if c:
                    return c
        stack.pop()
        colour[v] = 2
        return None

    for v in sorted(graph):
        if v not in colour:
            c = visit(v)
            if c:
                return c
    return None


# 1. headers
files = subprocess.run(["git", "ls-files", "*.c", "*.h", "*.cu", "*.cuh"], capture_output=True,
                       text=True, check=True).stdout.split()
own = set(files)
inc = re.compile(r'^\s*#\s*include\s+"([^"]+)"')
graph = {}
for f in files:
    deps = set()
    with open(f, errors="replace") as fh:
        for line in fh:
            m = inc.match(line)
            if not m:
                continue
            for cand in (m.group(1), os.path.normpath(os.path.join(os.path.dirname(f), m.group(1)))):
                if cand in own:
                    deps.add(cand)
                    break
    graph[f] = deps
c = cycle_in(graph)
result(c is None, f"the include graph of {len(files)} files has no circle", " -> ".join(c or []))

# 2. objects
defs, uses = {}, {}
for root, _, names in os.walk(obj_dir):
    for n in names:
        if not n.endswith(".o"):
            continue
        path = os.path.join(root, n)
        src = os.path.relpath(path, obj_dir)[:-2] + ".c"
        out = subprocess.run(["nm", path], capture_output=True, text=True, check=True).stdout
        d, u = set(), set()
        for line in out.splitlines():
            p = line.split()
            if len(p) == 3 and p[1] in "TDBRCGSV":
                d.add(p[2])
            elif len(p) == 2 and p[0] == "U":
                u.add(p[1])
        defs[src], uses[src] = d, u
if not defs:
    result(False, "the objects", f"no objects under {obj_dir} (build first)")
    print(f"{passed} passed, {failed} failed")
    sys.exit(1)


owner = {s: f for f, d in defs.items() for s in d}
links = {f: {} for f in defs}
for f, u in uses.items():
    for s in u:
        if s in owner and owner[s] != f:
            links[f].setdefault(owner[s], []).append(s)
cli = sorted(f for f in defs if re.match(r"server/cmd_\w+\.c$", f))
users = [f"{a} uses {b} ({', '.join(sorted(s)[:4])})" for a in sorted(links)
         for b, s in links[a].items() if b in cli and a != "server/main.c"]
result(not users, f"the {len(cli)} CLI files (server/cmd_*.c) are used by server/main.c alone",
       "; ".join(users))
def node(f):  # cluster mode is one module: its files share cluster/cluster_internal.h
    return "cluster/" if f.startswith("cluster/") else f


daemon = {}
for f in links:
    if f.startswith(("server/", "cluster/")):
        daemon.setdefault(node(f), set()).update(
            node(b) for b in links[f] if b.startswith(("server/", "cluster/")) and node(b) != node(f))
c = cycle_in(daemon)
result(c is None, f"the daemon's {len(daemon)} files (cluster/ as one module) form no circle",
       " -> ".join(c or []) + (
           "; " + "; ".join(f"{x} uses {y}: {', '.join(sorted({s for f in links if node(f) == x for b, ss in links[f].items() if node(b) == y for s in ss})[:4])}"
                            for x, y in zip(c, c[1:])) if c else ""))
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
