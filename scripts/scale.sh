#!/usr/bin/env bash
# What one node costs, and what each connected peer adds: a real
# `korium-tun up` (kernel TUN, in a namespace of its own) and up to 1,000
# in-process peers (internal/scalepeers) connected to it over loopback UDP.
# For each step it prints the node's resident memory and its CPU while idle.
#
#   sudo scripts/scale.sh [--steps "0 100 250 500 1000"] [--idle 30] [--settle 30]
#                         [--json FILE] [--profile DIR] [--log-level warn]
#                         [--node-env "GOGC=50 GOMEMLIMIT=90MiB"] [--hold SECONDS]
#
# --hold SECONDS keeps the node and its peers that long after the last
# step (the node's PID and control socket are logged), to look at them by
# hand: perf, /proc/PID/task/*/schedstat, `korium-tun status --control`.
#
# --profile DIR keeps, for each step and after its measurement, the node's
# heap profile (heap-N.pb.gz, `go tool pprof -sample_index=inuse_space
# -diff_base heap-0.pb.gz heap-1000.pb.gz`), its goroutines
# (goroutines-N.txt), its runtime memory statistics (memstats-N.json), its
# status with every counter (status-N.json), its
# resident memory by kind (smaps-N.txt: Anonymous is heap and stacks) and,
# when perf is installed, a CPU profile of another idle window (perf-N.data,
# `perf report -i perf-N.data --no-children`), and the heap profile after
# that window (heap-N.after.pb.gz: what the idle node allocated during it,
# `-sample_index=alloc_space -diff_base heap-N.pb.gz heap-N.after.pb.gz`);
# each JSON row then also has the node's GC target and memory limit as its
# runtime had them (gogc, gomemlimit: `up` sets GOGC=25 unless the
# environment, --node-env, sets GOGC or GOMEMLIMIT).
#
# Goals (issue: mesh relaying and scale): under 100 MB RSS with 1,000 idle
# peer connections, idle CPU under 1% of a core.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
need_root

STEPS="0 100 250 500 1000"
IDLE=30   # seconds of idle CPU measured per step (more than one idle probe interval, 25 s)
SETTLE=30 # seconds after the last peer connects before measuring (new peers are probed as busy ones for their first seconds)
JSON=""
PROFILE=""
LOGLEVEL=warn
NODEENV="" # extra environment of the node only (not of the peers)
HOLD=0
while [ $# -gt 0 ]; do
	case $1 in
	--steps) STEPS=$2; shift 2 ;;
	--idle) IDLE=$2; shift 2 ;;
	--settle) SETTLE=$2; shift 2 ;;
	--json) JSON=$2; shift 2 ;;
	--profile) PROFILE=$2; shift 2 ;;
	--log-level) LOGLEVEL=$2; shift 2 ;;
	--node-env) NODEENV=$2; shift 2 ;;
	--hold) HOLD=$2; shift 2 ;;
	*) die "unknown argument $1" ;;
	esac
done

build
(cd "$KT_ROOT" && go build -o "$KT_WORK/scalepeers" ./internal/scalepeers)
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

NS=ksc$$
mkns "$NS"
CTL=$KT_WORK/control.sock
MEMPROF=""
NODELOG=$KT_WORK/node.log
if [ -n "$PROFILE" ]; then
	mkdir -p "$PROFILE"
	MEMPROF=$KT_WORK/mem.prof
	NODELOG=$PROFILE/node.log # kept
fi
# shellcheck disable=SC2086 # NODEENV is a list of VAR=VALUE words
start_bg "$NODELOG" ip netns exec "$NS" env KORIUM_TUN_MEMPROFILE="$MEMPROF" $NODEENV "$KT" up --key "$KT_WORK/key" --listen 127.0.0.1:7400 \
	--tun "ksc$$" --pow-bits 0 --control "$CTL" --log-level "$LOGLEVEL"
NODE=$BG_PID
wait_until 30 "the node's bootstrap line" grep -q '^bootstrap ' "$NODELOG"
BOOT=$(sed -n 's/^bootstrap //p' "$NODELOG" | head -n1)
# The node forks nothing: its PID is the `ip netns exec` child's.
PID=$(pgrep -P "$NODE" -f "korium-tun up" || echo "$NODE")
[ -r "/proc/$PID/status" ] || die "cannot find the node's process"
log "node $BOOT (pid $PID)"

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$PID/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
peers() { ip netns exec "$NS" "$KT" status --control "$CTL" --json | jq '.peers | length'; }
# handshakes: completed so far. Handshakes during an idle window mean peers
# timed out and redialed (a starved peers process): that window's CPU
# includes them, and the row says so.
# counts: "handshakes quic probes lost": the UDP packets the node's socket
# received and wrote, QUIC (keep-alives, their ACKs, requests) apart from
# smartsock's path probes (requests and replies, both ways), and the
# node's probes that went unanswered: the load-independent measure of what
# the idle node does.
counts() {
	ip netns exec "$NS" "$KT" status --control "$CTL" --json |
		jq -r '.smartsock as $s | "\(.counters.handshakes) \($s.rx_quic + $s.tx_calls) \($s.tx_probe + $s.rx_probe_request + $s.rx_probe_reply) \($s.probe_lost)"'
}
HZ=$(getconf CLK_TCK)

rpcs() { ip netns exec "$NS" "$KT" status --control "$CTL" --json | jq '.counters.rpc_requests'; }
# settle_rpc N: new peers join the DHT (lookups, publishing) for a while;
# idle means the requests they send the node have dropped below one per
# 100 peers a second (10 s windows, at most 5 minutes; the row shows the
# rate it measured either way).
settle_rpc() {
	local limit=$(($1 / 100 + 1)) r0 r1 i
	for i in $(seq 30); do
		r0=$(rpcs)
		sleep 10
		r1=$(rpcs)
		[ $(((r1 - r0) / 10)) -lt "$limit" ] && return 0
	done
	log "still $(((r1 - r0) / 10)) requests/s after 5 minutes; measuring anyway"
}

# profile N: the node's heap, goroutines and memory statistics now, and a
# CPU profile of the next IDLE seconds.
profile() {
	rm -f "$MEMPROF"
	kill -USR1 "$PID"
	wait_until 60 "the node's heap profile" test -f "$MEMPROF"
	cp "$MEMPROF" "$PROFILE/heap-$1.pb.gz"
	cp "$MEMPROF.goroutines" "$PROFILE/goroutines-$1.txt"
	cp "$MEMPROF.memstats" "$PROFILE/memstats-$1.json"
	cp "/proc/$PID/smaps_rollup" "$PROFILE/smaps-$1.txt" # resident: anonymous (heap, stacks) and file (the binary)
	ip netns exec "$NS" "$KT" status --control "$CTL" --json >"$PROFILE/status-$1.json" # every counter (drops by reason)
	if command -v perf >/dev/null; then
		perf record -q -F 499 -g -p "$PID" -o "$PROFILE/perf-$1.data" -- sleep "$IDLE" >/dev/null 2>&1 ||
			log "perf record failed; no CPU profile"
	else
		sleep "$IDLE"
	fi
	# What the idle node allocated meanwhile: -sample_index=alloc_space
	# -diff_base heap-N.pb.gz heap-N.after.pb.gz.
	rm -f "$MEMPROF"
	kill -USR1 "$PID"
	wait_until 60 "the node's heap profile" test -f "$MEMPROF"
	cp "$MEMPROF" "$PROFILE/heap-$1.after.pb.gz"
}

rows=()
have=0
printf '\n%-6s %10s %14s %12s %11s %12s %13s %10s %9s\n' peers "RSS MiB" "KiB per peer" "idle CPU %" "handshakes" "QUIC pkt/s" "probe pkt/s" "lost/s" "RPCs/s"
base=""
for step in $STEPS; do
	if [ "$step" -gt "$have" ]; then
		add=$((step - have))
		start_bg "$KT_WORK/peers-$step.log" ip netns exec "$NS" "$KT_WORK/scalepeers" run -bootstrap "$BOOT" -n "$add" -timeout 10m
		wait_until 900 "$add more peers to connect" grep -q '^connected ' "$KT_WORK/peers-$step.log"
		have=$step
	fi
	# 99%: on a loaded host a few of a thousand in-process peers miss their
	# keep-alives and redial; the row shows the count measured.
	want=$((step * 99 / 100))
	wait_until 300 "the node to hold $want peers" test "$(peers)" -ge "$want"
	sleep "$SETTLE"
	settle_rpc "$step"
	rss=$(rss_kb)
	read -r h0 q0 p0 l0 < <(counts)
	r0=$(rpcs)
	t0=$(cpu_ticks)
	sleep "$IDLE"
	t1=$(cpu_ticks)
	read -r h1 q1 p1 l1 < <(counts)
	r1=$(rpcs)
	rps=$(awk -v d=$((r1 - r0)) -v s="$IDLE" 'BEGIN { printf "%.1f", d / s }')
	hsn=$((h1 - h0))
	qps=$(awk -v d=$((q1 - q0)) -v s="$IDLE" 'BEGIN { printf "%.1f", d / s }')
	pps=$(awk -v d=$((p1 - p0)) -v s="$IDLE" 'BEGIN { printf "%.1f", d / s }')
	lps=$(awk -v d=$((l1 - l0)) -v s="$IDLE" 'BEGIN { printf "%.1f", d / s }')
	rss=$(( (rss + $(rss_kb)) / 2 ))
	cpu=$(awk -v d=$((t1 - t0)) -v hz="$HZ" -v s="$IDLE" 'BEGIN { printf "%.2f", 100 * d / hz / s }')
	n=$(peers)
	[ -n "$base" ] || base=$rss
	per="-"
	[ "$n" -gt 0 ] && per=$(awk -v r="$rss" -v b="$base" -v n="$n" 'BEGIN { printf "%.1f", (r - b) / n }')
	printf '%-6s %10.1f %14s %12s %11s %12s %13s %10s %9s\n' "$n" "$(awk -v r="$rss" 'BEGIN { print r / 1024 }')" "$per" "$cpu" "$hsn" "$qps" "$pps" "$lps" "$rps"
	gc=""
	if [ -n "$PROFILE" ]; then
		profile "$n"
		# The collector's target as the node's runtime had it (up's default
		# or the environment's).
		# The digits as written (jq would round 2^63-1, no limit, to a float).
		gc=$(awk -F'[":, ]+' '$2 == "GOGC" { g = $3 } $2 == "GOMEMLIMIT" { l = $3 } END { printf ", \"gogc\": %s, \"gomemlimit\": %s", g, l }' "$PROFILE/memstats-$n.json")
	fi
	rows+=("{\"peers\": $n, \"rss_kib\": $rss, \"kib_per_peer\": \"$per\", \"idle_cpu_pct\": $cpu, \"handshakes_while_idle\": $hsn, \"quic_packets_per_s\": $qps, \"probe_packets_per_s\": $pps, \"probes_lost_per_s\": $lps, \"rpc_requests_per_s\": $rps$gc}")
done
if [ -n "$JSON" ]; then
	(IFS=,; printf '{"steps": [%s]}\n' "${rows[*]}") >"$JSON"
	log "wrote $JSON"
fi
if [ "$HOLD" -gt 0 ]; then
	log "holding for $HOLD s: node pid $PID, control socket $CTL (ip netns exec $NS $KT status --control $CTL)"
	sleep "$HOLD"
fi
