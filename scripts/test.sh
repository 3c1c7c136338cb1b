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
step "throughput smoke run (overlay vs wireguard-go vs raw veth)"
json=$(mktemp /tmp/korium-bench.XXXXXX.json)
./scripts/bench-throughput.sh --rounds 2 --time 3 --json "$json"
# A regression guard, not the target: measured here 0.76-0.84 (the target is
# 0.5); one noisy short run on a shared machine must not fail the suite.
ratio=$(sed -n 's/.*"tcpP": {"overlay_wg": \([0-9.]*\).*/\1/p' "$json")
rm -f "$json"
awk -v r="$ratio" 'BEGIN { exit !(r != "" && r >= 0.35) }' || { echo "overlay/wireguard-go throughput ratio ${ratio:-missing} is below 0.35"; exit 1; }
echo "overlay/wireguard-go throughput ratio (4 streams): $ratio"
echo
echo "ALL TESTS PASSED"
