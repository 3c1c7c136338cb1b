#!/usr/bin/env bash
# pubsub-subnet-test.sh [N]: N nodes (default 10), each in its own network
# namespace, all on one bridge in one IPv4 /16 (198.18.0.0/16, one /24 per
# node), as a LAN or a cloud subnet is. Each runs an in-process overlay node
# (internal/pubtool: real QUIC over real UDP, gVisor netstack) subscribed to
# one topic, bootstrapped from an earlier node. Flood publishing is off.
# Three nodes publish 20 messages each. Checks: every node had at least D_lo
# mesh peers when publishing started, and every message reached every other
# node (100%), most of them forwarded by mesh members. Removes everything it
# made, also on failure.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
N=${1:-10}
[ "$N" -ge 8 ] && [ "$N" -le 50 ] || die "N must be 8..50"
need_root
log "building pubtool"
(cd "$KT_ROOT" && go build -o "$KT_WORK/pubtool" ./internal/pubtool)
PUBTOOL=$KT_WORK/pubtool
DLO=5 COUNT=20 POW=8
PUBLISHERS="1,$((N / 2)),$N"
HUB=kp$$hub
hub "$HUB"
D=$KT_WORK/run
mkdir "$D"
for i in $(seq 1 "$N"); do
	ns=kp$$n$i
	mkns "$ns"
	hub_port "$HUB" "p$i" "$ns" "kp$$v$i" "198.18.$i.1/16"
	boot=()
	if [ "$i" -gt 1 ]; then
		b=$((i / 2)) # a tree of bootstraps: no node is everyone's only contact
		boot=(-bootstrap "$(cat "$D/contact.$b")")
	fi
	start_bg "$KT_WORK/n$i.log" ip netns exec "$ns" "$PUBTOOL" node -index "$i" -listen "198.18.$i.1:7600" -dir "$D" \
		-publishers "$PUBLISHERS" -count $COUNT -pow $POW "${boot[@]}"
	wait_until 20 "node $i up" test -s "$D/contact.$i"
done
all_ready() { for i in $(seq 1 "$N"); do [ -s "$D/ready.$i" ] || return 1; done; }
log "waiting for every node to hold at least D_lo = $DLO mesh peers"
t0=$SECONDS
until all_ready; do
	if [ $((SECONDS - t0)) -ge 60 ]; then
		log "not every mesh formed within 60 s; publishing anyway to measure delivery"
		break
	fi
	sleep 0.2
done
log "meshes after $((SECONDS - t0)) s; nodes $PUBLISHERS publish $COUNT messages each"
touch "$D/go"
all_done() { for i in $(seq 1 "$N"); do grep -q '"done":true' "$D/result.$i" 2>/dev/null || return 1; done; }
t0=$SECONDS
until all_done; do
	[ $((SECONDS - t0)) -lt 30 ] || break
	sleep 0.2
done
# Every node rewrites its result every 200 ms: let each do so once more,
# then keep the reports from before anything stops (a node that stops
# leaves the others' meshes).
sleep 0.5
mkdir "$D/final"
for i in $(seq 1 "$N"); do cp "$D/result.$i" "$D/final/" 2>/dev/null || echo '{}' >"$D/final/result.$i"; done
for pid in "${KT_PIDS[@]}"; do stop_pid "$pid"; done
KT_PIDS=()
field() { v=$(sed -n "s/.*\"$2\":\([0-9-]*\).*/\1/p" "$D/final/result.$1"); echo "${v:-0}"; }
exp=0 got=0 fwd=0 mesh=0 meshlo=1000 bad=""
for i in $(seq 1 "$N"); do
	e=$(field "$i" expected) r=$(field "$i" received) f=$(field "$i" forwarded) m=$(field "$i" mesh_at_go) mm=$(field "$i" mesh_min)
	fm=$(field "$i" from_mesh)
	printf 'node %-2d topic peers %-2s mesh at start %-2s (min %-2s while publishing) received %s of %s: %s first from a mesh peer, %s relayed by a node other than the publisher; %s RPCs dropped as graylisted\n' \
		"$i" "$(field "$i" topic_peers)" "$m" "$mm" "$r" "$e" "$fm" "$f" "$(field "$i" graylisted)"
	exp=$((exp + e)) got=$((got + r)) fwd=$((fwd + f)) mesh=$((mesh + fm))
	[ "$m" -lt "$meshlo" ] && meshlo=$m
	[ "$r" = "$e" ] || bad="$bad $i"
done
ratio=$(awk -v g="$got" -v e="$exp" 'BEGIN { printf "%.1f", e ? 100 * g / e : 0 }')
log "delivery $got of $exp ($ratio%), smallest mesh at start $meshlo; first copies: $mesh from a mesh peer, $fwd relayed by a node other than the publisher"
[ "$meshlo" -ge "$DLO" ] || die "a node had only $meshlo mesh peers when publishing started (want D_lo = $DLO)"
[ -z "$bad" ] || die "nodes$bad missed messages"
# Publishers send to their meshes only: nodes outside a publisher's mesh
# must have been reached through mesh members, and (gossip may win a race
# now and then) most first copies must have come from mesh peers.
[ "$fwd" -gt 0 ] || die "no message was relayed by a mesh member"
[ $((2 * mesh)) -ge "$got" ] || die "only $mesh of $got first copies came from a mesh peer"
log "PASS pubsub-subnet-test ($N nodes on one /16)"
