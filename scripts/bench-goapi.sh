#!/usr/bin/env bash
# bench-goapi.sh: the Go API throughput benchmark. Two in-process korium-tun
# nodes (netstack devices, loopback UDP) carry one TCP stream netstack to
# netstack, against its anchor: two wireguard-go devices on wireguard-go's
# own tun/netstack, peered over loopback. The program (bench/goapi) is its
# own module that requires ours, as a user's program builds against it. The
# two run interleaved, each transfer on a fresh pair, every byte checked;
# each round prints both figures and their ratio.
#
# No root needed. Traffic stays on 127.0.0.1. Everything it builds goes to
# a temp dir that is removed on exit. Options go to the program:
#   --rounds N      interleaved rounds (default 3)
#   --size MIB      MiB per transfer (default 512)
#   --modes LIST    wg,korium (the order within a round)
#   --json FILE     also write the figures as JSON
#   --cpuprofile F  CPU profiles of each mode's first transfer to F.wg, F.korium
#   -v              the tunnel's packet counts per transfer
#   --help          all flags
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
command -v go >/dev/null || { echo "bench-goapi: error: go not found on PATH" >&2; exit 1; }

TMP=$(mktemp -d "/tmp/kbench-goapi-$$.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

(cd "$ROOT/bench/goapi" && go build -o "$TMP/goapi" .)
"$TMP/goapi" "$@"
