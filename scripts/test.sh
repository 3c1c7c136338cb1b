#!/usr/bin/env bash
# The whole test suite. Run as root (CI does) so nothing is skipped:
#   sudo scripts/test.sh
# Formatting, vet, staticcheck, every Go test (fuzz seed corpora included,
# race detector on the concurrent packages), then the network-namespace
# tests with real kernel TUNs, and a short throughput run against
# wireguard-go and the raw veth.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n== %s\n' "$*"; }

step gofmt
bad=$(gofmt -l $(git ls-files '*.go' | grep -v '^third_party/'))
[ -z "$bad" ] || { echo "gofmt would rewrite: $bad"; exit 1; }

step "go mod tidy (go.mod and go.sum as committed)"
go mod tidy -diff

step "go vet"
go vet ./...

step "cross-platform build and vet (darwin, windows, freebsd)"
for os in darwin windows freebsd; do
	GOOS=$os GOARCH=amd64 go build ./... && GOOS=$os GOARCH=amd64 go vet ./... || { echo "GOOS=$os build or vet failed"; exit 1; }
done

step staticcheck
command -v staticcheck >/dev/null || { echo "staticcheck missing: go install honnef.co/go/tools/cmd/staticcheck@latest"; exit 1; }
staticcheck ./...

step "go test"
go test -count=1 -timeout 30m ./...

step "bench/goapi: a module outside ours that imports it, as a user's program does"
(cd bench/goapi && go mod tidy -diff && go vet ./... && go test -count=1 ./...)

step "go test -race (concurrent packages)"
go test -count=1 -race -timeout 20m ./smartsock ./overlay ./control ./relay/...

if [ "$(id -u)" != 0 ]; then
	echo "not root: namespace tests skipped (run with sudo; CI runs as root)"
	exit 0
fi
step "netns-test"
./scripts/netns-test.sh
step "firewall-test (--allow rules, default deny, replies to our flows, SIGHUP reload)"
./scripts/firewall-test.sh
step "deadend-test (dead destinations, a deleted TUN)"
./scripts/deadend-test.sh
step "cluster"
./scripts/cluster.sh 6 --check
step "chat between 4 namespaces"
./scripts/chat-test.sh
step "threshold CA: 5 signers run ca dkg, a sixth gets an X509-SVID (openssl and go-spiffe verify it)"
./scripts/ca-test.sh
step "pubsub on one subnet (10 namespaces in one /16, mesh delivery)"
./scripts/pubsub-subnet-test.sh 10
step "ops: config files, systemd unit, metrics, names and DNS in namespaces"
./scripts/ops-test.sh
step "members-only network: approvals (K of N), enrollment from outside, renewal, revocation and expiry"
./scripts/members-test.sh
step "NAT lab (cone and symmetric NATs, relay, hole punching, loss)"
./scripts/nat-test.sh
step "hostile networks (a probe flood from one address, link flaps)"
./scripts/hostile-test.sh
step "a black-holed peer (A's iperf3 to B while A floods a C whose UDP is dropped: within 10%, pings answered)"
# Five rounds, about 70 s (each round's ratio moves by +-15% on this shared
# 2-core machine: 0.72-1.16 in 22 rounds whose median was 0.93); a second
# series only when the first one's median is below 0.9 (a busy machine).
ROUNDS=5 ./scripts/blackhole-test.sh
step "throughput smoke run (overlay vs wireguard-go vs raw veth)"
json=$(mktemp /tmp/korium-bench.XXXXXX.json)
# Three rounds: each ratio is the median of three, not the mean of two (with
# two, one noisy round moved the firewall pair's CPU per bit from 1.18 to
# 1.43 between two CI runs of the same datapath).
# 100 pings a round, 300 a mode: with 20, the idle RTT's ratio to
# wireguard-go spread 1.16-1.31 over CI runs of datapaths that changed
# little; four rounds of 200 pings gave 1.095 and 1.115 for two builds.
RULES=100 ./scripts/bench-throughput.sh --rounds 3 --time 3 --pings 100 --json "$json"
# A regression guard, not the target (1.0x, CPU per bit 1.2x). Overlay over
# wireguard-go in the same run, measured here (issue 15): one stream
# 0.64-1.10, 4 streams 0.66-2.4, CPU per bit 1.08-1.22; before UDP GRO and
# 44-packet GSO writes 0.55-0.79, 0.56-0.91 and 1.48-1.61. With the send
# queues' backpressure (medians of 3 rounds in CI) 0.90 / 0.89 / 1.16,
# single rounds 0.49-1.09. The throughput ratios depend on the load (a
# quieter machine favours wireguard-go, which encrypts on every core: 0.64
# at load 12, 0.8-1.1 at load 20-30); CPU per bit hardly does, so it is
# the tighter gate.
gate() { # gate NAME KEY OP LIMIT [PAIR]: the PAIR (default overlay_wg) ratio KEY must be OP LIMIT
	local r pair=${5:-overlay_wg}
	r=$(sed -n "s/.*\"$2\": {[^}]*\"$pair\": \([0-9.]*\).*/\1/p" "$json")
	awk -v r="$r" -v l="$4" -v op="$3" 'BEGIN { exit !(r != "" && (op == ">=" ? r >= l : r <= l)) }' || {
		echo "$pair $1 ratio ${r:-missing} is not $3 $4"
		rm -f "$json"
		exit 1
	}
	echo "$pair $1 ratio: $r (gate $3 $4)"
}
gate "throughput (1 stream)" tcp1 ">=" 0.6
gate "throughput (4 streams)" tcpP ">=" 0.6
gate "CPU per bit (1 stream)" cpu_tcp1 "<=" 1.4
# The same gates with the firewall holding 100 rules (default deny; the
# pair "overlay" lets every flow in), and what the rules cost.
gate "throughput (1 stream, 100 firewall rules)" tcp1 ">=" 0.6 overlayfw_wg
gate "throughput (4 streams, 100 firewall rules)" tcpP ">=" 0.6 overlayfw_wg
gate "CPU per bit (1 stream, 100 firewall rules)" cpu_tcp1 "<=" 1.4 overlayfw_wg
# What the 100 rules cost, against the overlay without them in the same
# rounds (measured 1.01-1.12: 85-100 ns per inbound packet).
gate "CPU per bit of 100 firewall rules (1 stream)" cpu_tcp1 "<=" 1.2 overlayfw_overlay
echo "with / without 100 firewall rules: $(grep -o '"overlayfw_overlay": [0-9.null]*' "$json" | head -n 3 | tr '\n' ' ')"
rm -f "$json"
echo
echo "ALL TESTS PASSED"
