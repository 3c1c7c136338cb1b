#!/usr/bin/env bash
# cluster.sh [N] [--check]: a local overlay of N nodes (default 4), each in
# its own network namespace on one bridge, with real kernel TUNs. Prints
# every node's identity and SmartAddr, pings every pair over the overlay,
# then keeps running until Ctrl-C (or exits at once with --check). Try, in
# another terminal while it runs:
#   sudo ip netns exec kc<PID>n1 ping -6 <SmartAddr of another node>
#   sudo korium-tun status --control /tmp/korium-test.*/n1.sock
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
mkns "$HUB"
ip -n "$HUB" link add br0 type bridge
ip -n "$HUB" link set br0 up
declare -a IDS ADDRS
for i in $(seq 1 "$N"); do
	ns=kc$$n$i
	mkns "$ns"
	ip link add "kc$$v$i" netns "$ns" type veth peer name "p$i" netns "$HUB"
	ip -n "$HUB" link set "p$i" master br0 up
	ip -n "$ns" addr add "198.18.1.$i/24" dev "kc$$v$i"
	ip -n "$ns" link set "kc$$v$i" up
	"$KT" keygen --key "$KT_WORK/n$i.key" --pow-bits $POW >/dev/null
	"$KT" id --key "$KT_WORK/n$i.key" --json >"$KT_WORK/n$i.id"
	IDS[i]=$(json_get "$KT_WORK/n$i.id" identity)
	ADDRS[i]=$(json_get "$KT_WORK/n$i.id" address)
	# Until the DHT resolves addresses, each node is given every earlier
	# node as a bootstrap contact, which makes a full mesh.
	boots=()
	for j in $(seq 1 $((i - 1))); do boots+=(--bootstrap "${IDS[j]}@198.18.1.$j:7400"); done
	start_bg "$KT_WORK/n$i.log" ip netns exec "$ns" "$KT" up --key "$KT_WORK/n$i.key" --listen "198.18.1.$i:7400" \
		--tun korium0 --pow-bits $POW --control "$KT_WORK/n$i.sock" "${boots[@]}"
	wait_until 20 "node $i" "$KT" status --control "$KT_WORK/n$i.sock"
	printf 'node %-2d ns %-14s %s  %s\n' "$i" "$ns" "${IDS[i]}" "${ADDRS[i]}"
done
log "pinging every pair over the overlay"
for i in $(seq 1 "$N"); do
	for j in $(seq 1 "$N"); do
		[ "$i" = "$j" ] && continue
		wait_until 20 "ping node $i -> node $j" ip netns exec "kc$$n$i" ping -6 -c 1 -W 1 "${ADDRS[j]}"
	done
done
log "all $((N * (N - 1))) pairs answer"
"$KT" status --control "$KT_WORK/n1.sock"
[ "$CHECK" = 1 ] && { log "PASS cluster"; exit 0; }
log "running; control sockets in $KT_WORK; Ctrl-C stops and removes everything"
while :; do sleep 3600; done
