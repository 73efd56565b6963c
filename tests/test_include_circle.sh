#!/usr/bin/env bash
# No include circle in the project's own code (tests/include_graph.py): the header include
# graph is acyclic, nothing of the daemon uses the CLI files (server/cmd_*.c), and the
# daemon's files (server/, with cluster/ as one module) use each other without a circle. The
# objects are those of the build that made IISAN_BIN (build/asan/obj under make test). Ends
# with "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
BIN=${IISAN_BIN:-build/iisan}
exec python3 tests/include_graph.py "$(dirname "$BIN")/obj"
