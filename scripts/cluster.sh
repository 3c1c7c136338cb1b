#!/usr/bin/env bash
# cluster.sh [N] [--check]: a local overlay of N nodes (default 4), each in
# its own network namespace on one bridge, with real kernel TUNs, each given
# only the first node as bootstrap: every other address is found through the
# DHT. Prints every node's identity and SmartAddr, pings every pair over the
# overlay, then keeps running until Ctrl-C. With --check it then stops the
# first node, pings every remaining pair again and exits. Try, in another
# terminal while it runs:
#   sudo ip netns exec kc<PID>n1 ping -6 <SmartAddr of another node>
#   sudo korium-tun status --control /tmp/korium-test.*/n1.sock
#   sudo korium-tun resolve --control /tmp/korium-test.*/n1.sock <SmartAddr>
# Removes every namespace and process it made when it ends.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
N=4 CHECK=0
for arg in "$@"; do
	case $arg in
	--check) CHECK=1 ;;
	[0-9]*) N=$arg ;;
	*) die "usage: cluster.sh [N] [--check]" ;;
	esac
done
[ "$N" -ge 2 ] && [ "$N" -le 50 ] || die "N must be 2..50"
need_root
build
POW=8
HUB=kc$$hub
hub "$HUB"
declare -a IDS ADDRS PIDS
# start_node I: run node I's korium-tun in its namespace (bootstrap: node 1).
start_node() {
	local i=$1 boots=()
	[ "$i" -gt 1 ] && boots=(--bootstrap "${IDS[1]}@198.18.1.1:7400")
	start_bg "$KT_WORK/n$i.log" ip netns exec "kc$$n$i" "$KT" up --key "$KT_WORK/n$i.key" --listen "198.18.$i.1:7400" \
		--tun korium0 --pow-bits $POW --control "$KT_WORK/n$i.sock" --allow '* tcp/9000' "${boots[@]}"
	PIDS[i]=$BG_PID
	wait_until 20 "node $i" "$KT" status --control "$KT_WORK/n$i.sock"
}
for i in $(seq 1 "$N"); do
	ns=kc$$n$i
	mkns "$ns"
	# One /24 per node inside a /16, as separate hosts would be: the DHT
	# caps contacts per /24.
	hub_port "$HUB" "p$i" "$ns" "kc$$v$i" "198.18.$i.1/16"
	"$KT" keygen --key "$KT_WORK/n$i.key" --pow-bits $POW >/dev/null
	"$KT" id --key "$KT_WORK/n$i.key" --json >"$KT_WORK/n$i.id"
	IDS[i]=$(json_get "$KT_WORK/n$i.id" identity)
	ADDRS[i]=$(json_get "$KT_WORK/n$i.id" address)
	start_node "$i"
	printf 'node %-2d ns %-14s %s  %s\n' "$i" "$ns" "${IDS[i]}" "${ADDRS[i]}"
done
resolves() { # FROM TO: total DHT resolutions (resolve_ok) of nodes FROM..TO
	local t=0 i v
	for i in $(seq "$1" "$2"); do
		v=$("$KT" status --control "$KT_WORK/n$i.sock" --json | sed -n 's/.*"resolve_ok": \([0-9]*\).*/\1/p')
		t=$((t + ${v:-0}))
	done
	echo "$t"
}
ping_all() { # FIRST: ping every ordered pair among nodes FIRST..N
	local first=$1 t0=$SECONDS
	for i in $(seq "$first" "$N"); do
		for j in $(seq "$first" "$N"); do
			[ "$i" = "$j" ] && continue
			wait_until 30 "ping node $i -> node $j" ip netns exec "kc$$n$i" ping -6 -c 1 -W 1 "${ADDRS[j]}"
		done
	done
	log "all $(((N - first + 1) * (N - first))) pairs answer ($((SECONDS - t0))s)"
}
tcp_ring() { # FIRST: 1 MiB over TCP from each node FIRST..N to the next, sha256 checked
	local first=$1 i j sent got
	for i in $(seq "$first" "$N"); do
		j=$((i == N ? first : i + 1))
		start_bg "$KT_WORK/recv$j.log" ip netns exec "kc$$n$j" "$XFER" recv -listen "[${ADDRS[j]}]:9000" -timeout 60s
		local rp=$BG_PID
		sent=$(ip netns exec "kc$$n$i" "$XFER" send -to "[${ADDRS[j]}]:9000" -bytes 1048576 -seed "$i" -timeout 60s) || die "TCP $i -> $j failed"
		wait "$rp" || die "TCP receiver on $j failed"
		got=$(grep -v listening "$KT_WORK/recv$j.log")
		[ "$sent" = "$got" ] || die "TCP $i -> $j corrupted: sent '$sent', got '$got'"
	done
	log "TCP ring $first..$N: every transfer intact"
}
log "pinging every pair over the overlay (addresses found through the DHT)"
ping_all 1
tcp_ring 1
"$KT" status --control "$KT_WORK/n$N.sock"
# Node 2 answers pings as soon as it is connected, but its contact record
# reaches the DHT only once it has joined and published: wait for that.
wait_until 30 "node $N to resolve node 2 through the DHT" "$KT" resolve --control "$KT_WORK/n$N.sock" "${ADDRS[2]}"
"$KT" resolve --control "$KT_WORK/n$N.sock" "${ADDRS[2]}"
if [ "$CHECK" = 1 ]; then
	log "stopping node 1, the only bootstrap"
	stop_pid "${PIDS[1]}"
	# Every remaining pair must still answer (new connections need the DHT
	# records, which outlive the node that was everyone's bootstrap).
	ping_all 2
	log "restarting node $N (same key; its only bootstrap, node 1, is gone)"
	before=$(resolves 2 $((N - 1)))
	stop_pid "${PIDS[N]}"
	start_node "$N"
	# Node 2 must resolve node N afresh (the old connection died with N) and
	# node N must then find everyone else through the DHT it joined via 2.
	ping_all 2
	tcp_ring 2
	# Node N was found again through the DHT: by a resolution of its
	# address, or by a DHT lookup or ping that dialed its routing-table
	# contact first (both count; the resolution path alone is asserted in
	# overlay's TestDHTReachesEveryoneFromOneBootstrap).
	after=$(resolves 2 $((N - 1)))
	log "DHT address resolutions by nodes 2..$((N - 1)): $before before node $N restarted, $after after"
	log "PASS cluster"
	exit 0
fi
log "running; control sockets in $KT_WORK; Ctrl-C stops and removes everything"
# bash runs a trap only after its foreground command ends: wait on a
# background sleep instead, which a signal interrupts at once.
while :; do
	start_bg /dev/null sleep 3600
	wait "$BG_PID" || true
done
