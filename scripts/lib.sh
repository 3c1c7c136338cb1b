# Shared helpers for the namespace test scripts. Source it; it sets a trap
# that stops every process started with start_bg and deletes every namespace
# made with mkns, also when the script fails or is interrupted.
# shellcheck shell=bash

KT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KT_WORK=$(mktemp -d /tmp/korium-test.XXXXXX)
KT_PIDS=()
KT_NS=()

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { log "FAIL: $*"; exit 1; }

kt_cleanup() {
	local rc=$?
	trap '' INT TERM HUP # a second Ctrl-C must not cut the cleanup short
	for pid in "${KT_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
	for pid in "${KT_PIDS[@]}"; do
		for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$pid" 2>/dev/null || true
	done
	for ns in "${KT_NS[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
	if [ "$rc" != 0 ] && [ -d "$KT_WORK" ]; then
		for f in "$KT_WORK"/*.log; do [ -f "$f" ] && { echo "--- $f (last 30 lines)"; tail -n 30 "$f"; }; done
	fi
	rm -rf "$KT_WORK"
	exit "$rc"
}
trap kt_cleanup EXIT
trap 'exit 130' INT TERM HUP

need_root() { [ "$(id -u)" = 0 ] || die "must run as root (network namespaces, TUN devices)"; }

build() {
	log "building korium-tun and test tools"
	(cd "$KT_ROOT" && go build -o "$KT_WORK/korium-tun" ./cmd/korium-tun && go build -o "$KT_WORK/xfer" ./internal/xfer &&
		go build -o "$KT_WORK/reqtool" ./internal/reqtool)
	KT="$KT_WORK/korium-tun"
	XFER="$KT_WORK/xfer"
	REQTOOL="$KT_WORK/reqtool"
}

# mkns NAME: a namespace with loopback up, removed on exit.
mkns() { ip netns add "$1"; KT_NS+=("$1"); ip -n "$1" link set lo up; }
# veth NS_A IF_A ADDR_A NS_B IF_B ADDR_B: a veth pair between two namespaces,
# each end addressed (ADDR with its prefix length) and up. It goes with the
# namespaces (mkns removes them).
veth() {
	ip link add "$2" netns "$1" type veth peer name "$5" netns "$4"
	ip -n "$1" addr add "$3" dev "$2"; ip -n "$1" link set "$2" up
	ip -n "$4" addr add "$6" dev "$5"; ip -n "$4" link set "$5" up
}

# hub NAME: a namespace (mkns) holding bridge br0: the one LAN that
# hub_port puts other namespaces on.
hub() {
	mkns "$1"
	ip -n "$1" link add br0 type bridge
	ip -n "$1" link set br0 up
}
# hub_port HUB PORT NS IF ADDR: NS's interface IF on HUB's bridge (through
# HUB's port PORT), addressed ADDR (with its prefix length) and up.
hub_port() {
	ip link add "$4" netns "$3" type veth peer name "$2" netns "$1"
	ip -n "$1" link set "$2" master br0 up
	ip -n "$3" addr add "$5" dev "$4"; ip -n "$3" link set "$4" up
}

# start_bg LOGFILE CMD...: run CMD in the background; its PID is in BG_PID.
start_bg() {
	local logf=$1; shift
	"$@" >"$logf" 2>&1 &
	BG_PID=$!
	KT_PIDS+=("$BG_PID")
}

# stop_pid PID: SIGTERM, wait (bounded) for a clean exit; fail if it hangs.
stop_pid() {
	kill -TERM "$1"
	for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || { wait "$1" 2>/dev/null || true; return 0; }; sleep 0.1; done
	die "process $1 did not exit within 10 s of SIGTERM"
}

# wait_until SECONDS DESCRIPTION CMD...: poll CMD until it succeeds.
wait_until() {
	local secs=$1 what=$2; shift 2
	local end=$((SECONDS + secs))
	until "$@" >/dev/null 2>&1; do
		[ $SECONDS -lt $end ] || die "timed out after ${secs}s waiting for $what"
		sleep 0.2
	done
}

# json_get FILE KEY: a top-level string field of korium-tun's JSON output.
json_get() { sed -n "s/.*\"$2\": *\"\([^\"]*\)\".*/\1/p" "$1" | head -n1; }
