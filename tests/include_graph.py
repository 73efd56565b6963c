"""The project's dependency graph has no circle where tests/test_include_circle.sh says.

1. Headers: the graph of quoted #include lines between the project's own files (git ls-files)
   is acyclic.
2. Objects (nm of the build's objects, OBJ_DIR): file A uses file B when A's object refers to
   a symbol B's object defines. The CLI files (server/cmd_*.c) are used by server/main.c
   alone (nothing of the daemon reaches into its command line), and server/serve_state.c,
   the daemon's shared state, is in no circle of the server's and cluster's files.
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
if "server/serve_state.c" not in defs:
    result(False, "server/serve_state.c is in no circle of the daemon's files",
           f"there is no server/serve_state.o under {obj_dir} (build first)")
    print(f"{passed} passed, {failed} failed")
    sys.exit(1)
daemon = {f: {b for b in links[f] if b.startswith(("server/", "cluster/"))}
          for f in links if f.startswith(("server/", "cluster/"))}
# the files reachable from serve_state.c that reach it back
reach = {}


def reachable(v):
    if v not in reach:
        reach[v] = set()
        todo = list(daemon[v])
        while todo:
            w = todo.pop()
            if w not in reach[v]:
                reach[v].add(w)
                todo.extend(daemon[w])
    return reach[v]


back = sorted(w for w in reachable("server/serve_state.c") if "server/serve_state.c" in reachable(w))
result(not back, "server/serve_state.c is in no circle of the daemon's files",
       f"it uses {sorted(daemon['server/serve_state.c'])}, and {back} use it back")
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
