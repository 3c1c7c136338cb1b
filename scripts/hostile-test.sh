#!/usr/bin/env bash
# hostile-test.sh: two nodes A and B with kernel TUNs in their own network
# namespaces, and a flooder F, all real:
#
#   B 198.18.1.2 --veth-- A 198.18.1.1 (and 198.18.2.1) --veth-- F 198.18.2.2
#
#   flood  F sends 20,000 packets/s of garbage from one address to A's port
#          (udpflood: SMPR requests claiming to be B with random MACs,
#          hellos with random signatures, stray replies, CRLY frames for no
#          session, random QUIC-looking bytes) while B runs
#          `korium-tun ping --count 20` to A and A to B: at least 19 of 20
#          must be answered each way (ping6 through the TUNs is reported).
#   flap   while ping6 runs both ways through the TUNs every 50 ms, A's link goes down
#          for 0.5 s, then B's: each node keeps the same QUIC connection (no
#          "peer disconnected" or new "peer connected" line, the peer's
#          "since" and rx_hello unchanged, path_switches reported), the send
#          errors are counted by kind, and ping6 gets through afterwards.
#
# ONLY=flood or ONLY=flap runs one part. KT_BIN=/path/to/korium-tun runs the checks against another build (how the
# "before" figures were measured). Every check runs even when an earlier one
# failed; the script exits non-zero if any failed. It removes every
# namespace, process and file it made, also on failure.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
need_root
command -v jq >/dev/null || die "jq is missing"
build
(cd "$KT_ROOT" && go build -o "$KT_WORK/udpflood" ./internal/udpflood)
FLOOD=$KT_WORK/udpflood
if [ -n "${KT_BIN:-}" ]; then KT=$KT_BIN; log "using korium-tun at $KT"; fi
POW=8 PPS=${PPS:-20000} ONLY=${ONLY:-flood flap}
runs() { [[ " $ONLY " == *" $1 "* ]]; }
FAILED=()
fail() { log "FAIL: $*"; FAILED+=("$*"); }

A=kh$$a B=kh$$b F=kh$$f
mkns "$A"; mkns "$B"; mkns "$F"
veth "$A" kha$$ 198.18.1.1/24 "$B" khb$$ 198.18.1.2/24
veth "$A" khf$$ 198.18.2.1/24 "$F" khg$$ 198.18.2.2/24
ip -n "$F" route add 198.18.1.0/24 via 198.18.2.1

for n in a b; do "$KT" keygen --key "$KT_WORK/$n.key" --pow-bits $POW >/dev/null; "$KT" id --key "$KT_WORK/$n.key" --json >"$KT_WORK/$n.id"; done
ID_A=$(json_get "$KT_WORK/a.id" identity); ADDR_A=$(json_get "$KT_WORK/a.id" address)
ID_B=$(json_get "$KT_WORK/b.id" identity); ADDR_B=$(json_get "$KT_WORK/b.id" address)
log "a = $ID_A ($ADDR_A)"
log "b = $ID_B ($ADDR_B)"

start_bg "$KT_WORK/a.log" ip netns exec "$A" "$KT" up --key "$KT_WORK/a.key" --listen 198.18.1.1:7400 \
	--tun kt0 --pow-bits $POW --control "$KT_WORK/a.sock"
wait_until 20 "a's control socket" "$KT" status --control "$KT_WORK/a.sock"
start_bg "$KT_WORK/b.log" ip netns exec "$B" "$KT" up --key "$KT_WORK/b.key" --listen 198.18.1.2:7400 \
	--tun kt0 --pow-bits $POW --control "$KT_WORK/b.sock" --bootstrap "$ID_A@198.18.1.1:7400"
wait_until 20 "ping6 b -> a" ip netns exec "$B" ping -6 -c 1 -W 1 "$ADDR_A"

st() { "$KT" status --control "$KT_WORK/$1.sock" --json; }
# peer_field NODE FIELD: FIELD of NODE's one peer ("" when it has none).
peer_field() { st "$1" | jq -r ".peers[0].$2 // empty"; }
sock_field() { st "$1" | jq -r ".smartsock.$2 // 0"; }
pongs() { grep -c '^pong from' "$1" || true; }

# ------------------------------------------------------------------ flood

if runs flood; then
log "flood: $PPS packets/s of garbage from 198.18.2.2 to a while b and a ping each other 20 times"
before_drop=$(st a | jq -c '.smartsock | {drop_probe_bad_mac, drop_probe_rate, drop_unknown_source}')
start_bg "$KT_WORK/flood.log" ip netns exec "$F" "$FLOOD" send -to 198.18.1.1:7400 -bind 198.18.2.2:9999 \
	-pps "$PPS" -duration 120s -peer "$ID_B" -target "$ID_A"
PID_FLOOD=$BG_PID
sleep 1 # the flood is running before the first ping
start_bg "$KT_WORK/ping-ab.log" "$KT" ping --control "$KT_WORK/a.sock" --count 20 --interval 500ms "$ID_B"
PID_PAB=$BG_PID
start_bg "$KT_WORK/ping6-flood.log" ip netns exec "$B" ping -6 -c 50 -i 0.2 -W 1 "$ADDR_A"
PID_P6=$BG_PID
"$KT" ping --control "$KT_WORK/b.sock" --count 20 --interval 500ms "$ID_A" >"$KT_WORK/ping-ba.log" 2>&1 || true
wait "$PID_PAB" || true
wait "$PID_P6" || true
kill -0 "$PID_FLOOD" 2>/dev/null || fail "udpflood stopped before the pings ended: $(cat "$KT_WORK/flood.log")"
stop_pid "$PID_FLOOD"
ba=$(pongs "$KT_WORK/ping-ba.log") ab=$(pongs "$KT_WORK/ping-ab.log")
p6=$(sed -n 's/.* \([0-9]*\) received.*/\1/p' "$KT_WORK/ping6-flood.log")
log "  flood: $(cat "$KT_WORK/flood.log")"
log "  korium-tun ping b -> a answered $ba of 20, a -> b $ab of 20; ping6 b -> a through the TUNs ${p6:-0} of 50"
log "  a's drops before: $before_drop"
log "  a's drops after:  $(st a | jq -c '.smartsock | {drop_probe_bad_mac, drop_probe_rate, drop_probe_source_rate, drop_probe_unknown_peer, drop_hello_source_rate, drop_hello_rate, drop_bad_probe, drop_unknown_source, drop_relay_unknown_session, tx_stateless_reset}')"
[ "$ba" -ge 19 ] || fail "flood: b's pings to a answered $ba of 20 (want >= 19)"
[ "$ab" -ge 19 ] || fail "flood: a's pings to b answered $ab of 20 (want >= 19)"
fi

# ------------------------------------------------------------------- flap

# flap NS DEV NAME: ping6 a -> b and b -> a every 50 ms for 4 s; 1 s in,
# DEV in NS goes down for 0.5 s.
flap() {
	local ns=$1 dev=$2 name=$3
	local since_a since_b hello_a hello_b sw_a sw_b conn_a conn_b
	since_a=$(peer_field a since) since_b=$(peer_field b since)
	hello_a=$(sock_field a rx_hello) hello_b=$(sock_field b rx_hello)
	sw_a=$(peer_field a path_switches) sw_b=$(peer_field b path_switches)
	conn_a=$(grep -c 'peer connected' "$KT_WORK/a.log" || true) conn_b=$(grep -c 'peer connected' "$KT_WORK/b.log" || true)
	local disc
	disc=$(cat "$KT_WORK/a.log" "$KT_WORK/b.log" | grep -c 'peer disconnected' || true)
	ip netns exec "$B" ping -6 -c 80 -i 0.05 -W 1 "$ADDR_A" >"$KT_WORK/ping6-$name-ba.log" 2>&1 &
	local pp=$!
	KT_PIDS+=("$pp")
	ip netns exec "$A" ping -6 -c 80 -i 0.05 -W 1 "$ADDR_B" >"$KT_WORK/ping6-$name-ab.log" 2>&1 &
	local pq=$!
	KT_PIDS+=("$pq")
	sleep 1
	ip -n "$ns" link set dev "$dev" down
	sleep 0.5
	ip -n "$ns" link set dev "$dev" up
	wait "$pp" || true
	wait "$pq" || true
	local got_ba got_ab
	got_ba=$(sed -n 's/.* \([0-9]*\) received.*/\1/p' "$KT_WORK/ping6-$name-ba.log")
	got_ab=$(sed -n 's/.* \([0-9]*\) received.*/\1/p' "$KT_WORK/ping6-$name-ab.log")
	# Traffic resumes: one reply within 10 s.
	local ok=0
	for _ in $(seq 20); do
		if ip netns exec "$B" ping -6 -c 1 -W 1 "$ADDR_A" >/dev/null 2>&1; then ok=1; break; fi
		sleep 0.5
	done
	local now_since_a now_since_b
	now_since_a=$(peer_field a since) now_since_b=$(peer_field b since)
	log "  $name: ping6 every 50 ms: b -> a ${got_ba:-0} of 80 replies, a -> b ${got_ab:-0} of 80; traffic resumed: $ok"
	log "  $name: a's peer since $since_a -> $now_since_a, b's $since_b -> $now_since_b"
	log "  $name: rx_hello a $hello_a -> $(sock_field a rx_hello), b $hello_b -> $(sock_field b rx_hello); path_switches a $sw_a -> $(peer_field a path_switches), b $sw_b -> $(peer_field b path_switches)"
	log "  $name: a's send errors taken as loss: $(st a | jq -c '.smartsock | with_entries(select(.key | startswith("tx_err")))')"
	log "  $name: b's send errors taken as loss: $(st b | jq -c '.smartsock | with_entries(select(.key | startswith("tx_err")))')"
	[ "$ok" = 1 ] || fail "$name: traffic did not resume"
	[ -n "$now_since_a" ] && [ "$now_since_a" = "$since_a" ] || fail "$name: a's connection to b changed ($since_a -> ${now_since_a:-none})"
	[ -n "$now_since_b" ] && [ "$now_since_b" = "$since_b" ] || fail "$name: b's connection to a changed ($since_b -> ${now_since_b:-none})"
	[ "$(sock_field a rx_hello)" = "$hello_a" ] && [ "$(sock_field b rx_hello)" = "$hello_b" ] || fail "$name: a new handshake happened (hellos)"
	[ "$(grep -c 'peer connected' "$KT_WORK/a.log" || true)" = "$conn_a" ] && [ "$(grep -c 'peer connected' "$KT_WORK/b.log" || true)" = "$conn_b" ] ||
		fail "$name: a new connection was made"
	if [ "$(cat "$KT_WORK/a.log" "$KT_WORK/b.log" | grep -c 'peer disconnected' || true)" != "$disc" ]; then
		fail "$name: $(cat "$KT_WORK/a.log" "$KT_WORK/b.log" | grep 'peer disconnected' | tail -n 1)"
	fi
}

if runs flap; then
	log "flap: a's link down for 0.5 s during traffic, then b's"
	flap "$A" kha$$ flap-a
	flap "$B" khb$$ flap-b
	errs=$(st a | jq '[.smartsock | to_entries[] | select(.key | startswith("tx_err")) | .value] | add // 0')
	[ "$errs" -gt 0 ] || fail "flap: a counted no send errors: the flap did not hit its sends"
fi

if [ ${#FAILED[@]} -gt 0 ]; then
	log "${#FAILED[@]} check(s) failed:"
	for f in "${FAILED[@]}"; do log "  $f"; done
	exit 1
fi
log "PASS hostile-test"
