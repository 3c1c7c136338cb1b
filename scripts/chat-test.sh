#!/usr/bin/env bash
# Chat between 4 network namespaces: `korium-tun chat` in each (its own
# in-process node, stdin/stdout piped), all bootstrapped from the first.
# Checks: a line typed in one node reaches the other three with its sender,
# a /dm reaches only its target, and /peers lists the room. Removes
# everything it made, also on failure.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
need_root
build
N=4 POW=8
HUB=kt$$hub
hub "$HUB"
declare -a IDS
for i in $(seq 1 $N); do
	ns=kt$$c$i
	mkns "$ns"
	hub_port "$HUB" "p$i" "$ns" "kt$$v$i" "198.18.$i.1/16"
	"$KT" keygen --key "$KT_WORK/c$i.key" --pow-bits $POW >/dev/null
	IDS[i]=$("$KT" id --key "$KT_WORK/c$i.key" --json | sed -n 's/.*"identity": *"\([^"]*\)".*/\1/p')
	mkfifo "$KT_WORK/in$i"
	# Hold each chat's stdin open on a descriptor of this shell, opened
	# read-write first so that neither end blocks waiting for the other.
	eval "exec $((10 + i))<>\"\$KT_WORK/in$i\""
	boot=()
	[ "$i" -gt 1 ] && boot=(--bootstrap "${IDS[1]}@198.18.1.1:7500")
	# Not start_bg: a background job's stdin is /dev/null unless the
	# redirection is on the command itself.
	ip netns exec "$ns" "$KT" chat --room lobby --key "$KT_WORK/c$i.key" --listen "198.18.$i.1:7500" \
		--pow-bits $POW --log-level "${CHAT_LOG:-warn}" "${boot[@]}" <"$KT_WORK/in$i" >"$KT_WORK/chat$i.log" 2>&1 &
	KT_PIDS+=($!)
	wait_until 20 "chat $i joined" grep -q "^joined #lobby" "$KT_WORK/chat$i.log"
done
say() { echo "$2" >&$((10 + $1)); } # say NODE LINE

log "node 1 says hello until all three others have it"
n=0
until grep -q "hello-" "$KT_WORK/chat2.log" && grep -q "hello-" "$KT_WORK/chat3.log" && grep -q "hello-" "$KT_WORK/chat4.log"; do
	n=$((n + 1)); [ $n -le 60 ] || die "room message did not reach every node in 30 s"
	say 1 "hello-$n"
	sleep 0.5
done
short1=${IDS[1]:0:8}
for i in 2 3 4; do
	grep -q "^\[lobby\] $short1: hello-" "$KT_WORK/chat$i.log" || die "node $i did not see node 1 as the sender"
done
log "a line from node 3 reaches 1, 2 and 4"
say 3 "from-three"
for i in 1 2 4; do wait_until 15 "node $i receives node 3's line" grep -q "^\[lobby\] ${IDS[3]:0:8}: from-three" "$KT_WORK/chat$i.log"; done

log "node 4 sends a direct message to node 2 only"
say 4 "/dm ${IDS[2]} secret-for-two"
wait_until 20 "dm at node 2" grep -q "^\[dm\] ${IDS[4]:0:8}: secret-for-two" "$KT_WORK/chat2.log"
wait_until 5 "dm delivery report at node 4" grep -q "^dm to ${IDS[2]:0:8} delivered" "$KT_WORK/chat4.log"
for i in 1 3; do if grep -q "secret-for-two" "$KT_WORK/chat$i.log"; then die "node $i saw node 2's direct message"; fi; done

log "/peers at node 1 lists the other three"
say 1 "/peers"
wait_until 10 "/peers output" grep -q "^3 in the room besides you" "$KT_WORK/chat1.log"
log "PASS chat-test"
