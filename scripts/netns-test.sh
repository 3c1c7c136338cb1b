#!/usr/bin/env bash
# Two network namespaces joined by a veth, `korium-tun up` in each (real
# kernel TUNs, real QUIC over real UDP). Checks: ping6 both ways between
# SmartAddrs, a 64 MiB TCP transfer with matching SHA-256, recovery after
# one node restarts with the same key (the other untouched), that the TUN is
# removed on SIGTERM, and that a node dialing with the wrong expected
# identity is refused. Removes everything it made, also on failure.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
need_root
build

POW=8
A=kt$$a B=kt$$b
mkns "$A"; mkns "$B"
ip link add kva$$ netns "$A" type veth peer name kvb$$ netns "$B"
ip -n "$A" addr add 198.18.0.1/24 dev kva$$; ip -n "$A" link set kva$$ up
ip -n "$B" addr add 198.18.0.2/24 dev kvb$$; ip -n "$B" link set kvb$$ up

for n in a b c; do "$KT" keygen --key "$KT_WORK/$n.key" --pow-bits $POW >/dev/null; "$KT" id --key "$KT_WORK/$n.key" --json >"$KT_WORK/$n.id"; done
ID_A=$(json_get "$KT_WORK/a.id" identity); ADDR_A=$(json_get "$KT_WORK/a.id" address)
ID_B=$(json_get "$KT_WORK/b.id" identity); ADDR_B=$(json_get "$KT_WORK/b.id" address)
log "a = $ID_A ($ADDR_A)"
log "b = $ID_B ($ADDR_B)"

start_b() {
	start_bg "$KT_WORK/b.log" ip netns exec "$B" "$KT" up --key "$KT_WORK/b.key" --listen 198.18.0.2:7400 \
		--tun kt0 --pow-bits $POW --control "$KT_WORK/b.sock" --log-level debug
	PID_B=$BG_PID
	wait_until 20 "b's control socket" "$KT" status --control "$KT_WORK/b.sock"
}
start_b
start_bg "$KT_WORK/a.log" ip netns exec "$A" "$KT" up --key "$KT_WORK/a.key" --listen 198.18.0.1:7400 \
	--tun kt0 --pow-bits $POW --control "$KT_WORK/a.sock" --bootstrap "$ID_B@198.18.0.2:7400" --log-level debug
PID_A=$BG_PID
grep -q "^bootstrap $ID_B@198.18.0.2:7400$" <(sleep 0.5; cat "$KT_WORK/b.log") || die "b did not print its bootstrap string"

log "ping6 a -> b and b -> a"
wait_until 20 "ping6 a -> b" ip netns exec "$A" ping -6 -c 1 -W 1 "$ADDR_B"
ip netns exec "$A" ping -6 -c 5 -i 0.2 -W 2 "$ADDR_B" >/dev/null || die "ping6 a -> b lost packets"
ip netns exec "$B" ping -6 -c 5 -i 0.2 -W 2 "$ADDR_A" >/dev/null || die "ping6 b -> a lost packets"

log "64 MiB over TCP through the overlay"
start_bg "$KT_WORK/recv.log" ip netns exec "$B" "$XFER" recv -listen "[$ADDR_B]:9000" -timeout 120s
PID_RECV=$BG_PID
ip netns exec "$A" "$XFER" send -to "[$ADDR_B]:9000" -bytes $((64 << 20)) -timeout 120s >"$KT_WORK/sent" || die "send failed"
wait "$PID_RECV" || die "receiver failed"
sent=$(cat "$KT_WORK/sent"); got=$(grep -v listening "$KT_WORK/recv.log")
[ "$sent" = "$got" ] || die "transfer corrupted: sent '$sent', received '$got'"
log "intact: $got"

"$KT" status --control "$KT_WORK/a.sock"
"$KT" status --control "$KT_WORK/a.sock" --json | grep -q "\"identity\": \"$ID_B\"" || die "a's status does not list b"

log "restart b with the same key; a is not touched"
stop_pid "$PID_B"
if ip -n "$B" link show kt0 >/dev/null 2>&1; then die "b's TUN still exists after SIGTERM"; fi
t0=$SECONDS
start_b
wait_until 30 "ping6 a -> b after b's restart" ip netns exec "$A" ping -6 -c 1 -W 1 "$ADDR_B"
kill -0 "$PID_A" || die "a died"
log "traffic resumed $((SECONDS - t0))s after b came back"

log "a node expecting the wrong identity at b's address is refused"
ID_C=$("$KT" id --key "$KT_WORK/c.key" --json | sed -n 's/.*"identity": *"\([^"]*\)".*/\1/p')
start_bg "$KT_WORK/c.log" ip netns exec "$A" "$KT" up --key "$KT_WORK/c.key" --listen 198.18.0.1:7401 \
	--tun kt1 --pow-bits $POW --control "$KT_WORK/c.sock" --bootstrap "$ID_A@198.18.0.2:7400" --log-level debug
# b refuses a hello addressed to another identity with a signed refusal:
# both log one warning, both count it, c never gets a peer, b never lists c.
wait_until 30 "c's refusal warning" grep -q "level=WARN.*is not at 198.18.0.2:7400: the node there is ${ID_B:0:8}" "$KT_WORK/c.log"
wait_until 10 "b's refusal warning" grep -q "level=WARN.*refused a dial from ${ID_C:0:8}.*expects identity ${ID_A:0:8}" "$KT_WORK/b.log"
"$KT" status --control "$KT_WORK/b.sock" --json | grep -q '"drop_bad_probe": [1-9]' || die "b did not count c's misaddressed hellos"
"$KT" status --control "$KT_WORK/b.sock" --json | grep -q '"we_refused_wrong_identity": [1-9]' || die "b did not count its refusal"
"$KT" status --control "$KT_WORK/c.sock" --json | grep -q '"refused_us_wrong_identity": [1-9]' || die "c did not count b's refusal"
"$KT" status --control "$KT_WORK/b.sock" | grep "^refusals:" || die "b's status shows no refusals"
"$KT" status --control "$KT_WORK/c.sock" --json | grep -q '"peers": null' || die "c has a peer"
if "$KT" status --control "$KT_WORK/b.sock" --json | grep -q "$ID_C"; then die "b accepted c"; fi

log "chat attached to the running nodes through their control sockets"
mkfifo "$KT_WORK/ca.in" "$KT_WORK/cb.in"
exec 21<>"$KT_WORK/ca.in" 22<>"$KT_WORK/cb.in"
"$KT" chat --room lab --control "$KT_WORK/a.sock" <"$KT_WORK/ca.in" >"$KT_WORK/chat-a.log" 2>&1 &
KT_PIDS+=($!)
"$KT" chat --room lab --control "$KT_WORK/b.sock" <"$KT_WORK/cb.in" >"$KT_WORK/chat-b.log" 2>&1 &
KT_PIDS+=($!)
wait_until 10 "attached chats" grep -q "^joined #lab as $ID_B" "$KT_WORK/chat-b.log"
wait_until 10 "attached chats" grep -q "^joined #lab as $ID_A" "$KT_WORK/chat-a.log"
n=0
until grep -q "^\[lab\] ${ID_A:0:8}: hi-from-a" "$KT_WORK/chat-b.log"; do
	n=$((n + 1)); [ $n -le 40 ] || die "attached chat line from a never reached b"
	echo "hi-from-a-$n" >&21
	sleep 0.5
done
echo "/dm $ID_A hello-a-from-b" >&22
wait_until 15 "dm through attached chats" grep -q "^\[dm\] ${ID_B:0:8}: hello-a-from-b" "$KT_WORK/chat-a.log"

log "request/response between the namespaces (in-process nodes, no TUN): sizes and the 64-stream limit"
start_bg "$KT_WORK/reqserve.log" ip netns exec "$B" "$REQTOOL" serve -listen 198.18.0.2:7500 -contact "$KT_WORK/req.contact"
wait_until 20 "request server" test -s "$KT_WORK/req.contact"
ip netns exec "$A" timeout 120 "$REQTOOL" check -listen 198.18.0.1:0 -bootstrap "$(cat "$KT_WORK/req.contact")" >"$KT_WORK/reqcheck.log" 2>&1 ||
	{ cat "$KT_WORK/reqcheck.log"; die "request/response checks failed"; }
sed 's/^/  /' "$KT_WORK/reqcheck.log"

log "PASS netns-test"
