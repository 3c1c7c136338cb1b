#!/usr/bin/env bash
# Dead ends, for real: two namespaces with kernel TUNs.
# Checks that ping6 and curl to a SmartAddr nobody owns fail at once with
# Destination Unreachable (not after their timeouts), and that deleting a
# running node's TUN (`ip link del`) makes the node exit non-zero with an
# error line naming the device. Removes everything it made, also on failure.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
need_root
build

POW=8
A=kt$$ha B=kt$$hb
TUN_A=kth$$a TUN_B=kth$$b
mkns "$A"; mkns "$B"
ip link add kha$$ netns "$A" type veth peer name khb$$ netns "$B"
ip -n "$A" addr add 198.18.7.1/24 dev kha$$; ip -n "$A" link set kha$$ up
ip -n "$B" addr add 198.18.7.2/24 dev khb$$; ip -n "$B" link set khb$$ up

for n in a b; do "$KT" keygen --key "$KT_WORK/$n.key" --pow-bits $POW >/dev/null; "$KT" id --key "$KT_WORK/$n.key" --json >"$KT_WORK/$n.id"; done
ID_A=$(json_get "$KT_WORK/a.id" identity)
start_bg "$KT_WORK/a.log" ip netns exec "$A" "$KT" up --key "$KT_WORK/a.key" --listen 198.18.7.1:7400 \
	--tun "$TUN_A" --pow-bits $POW --control "$KT_WORK/a.sock"
wait_until 20 "a's control socket" "$KT" status --control "$KT_WORK/a.sock"
start_bg "$KT_WORK/b.log" ip netns exec "$B" "$KT" up --key "$KT_WORK/b.key" --listen 198.18.7.2:7400 \
	--tun "$TUN_B" --pow-bits $POW --control "$KT_WORK/b.sock" --bootstrap "$ID_A@198.18.7.1:7400"
PID_B=$BG_PID
wait_until 20 "b's control socket" "$KT" status --control "$KT_WORK/b.sock"
wait_until 20 "b joins the DHT" sh -c "'$KT' status --control '$KT_WORK/b.sock' --json | grep -q '\"table_size\": [1-9]'"

# Addresses nobody owns (their hash prefixes are 96 arbitrary bits); curl
# gets its own, so that it waits for a lookup too, not for the cached one.
DEAD=fd00:c0f1:dead:beef:$(printf '%x' $$):1:2:3
DEAD2=fd00:c0f1:dead:beef:$(printf '%x' $$):1:2:4
ms() { date +%s%3N; }

log "ping6 to $DEAD (nobody owns it)"
t0=$(ms)
if ip netns exec "$B" ping -6 -c 1 -W 5 "$DEAD" >"$KT_WORK/ping.out" 2>&1; then die "ping6 to a dead address succeeded"; fi
took=$(($(ms) - t0))
cat "$KT_WORK/ping.out"
grep -q "Destination unreachable" "$KT_WORK/ping.out" || die "ping6 did not report Destination unreachable"
[ "$took" -lt 2000 ] || die "ping6 took ${took} ms to fail"
log "ping6 failed after ${took} ms (its -W is 5000 ms)"

log "curl to http://[$DEAD2]/"
t0=$(ms)
if ip netns exec "$B" curl -sS -m 10 "http://[$DEAD2]:80/" >"$KT_WORK/curl.out" 2>&1; then die "curl to a dead address succeeded"; fi
took=$(($(ms) - t0))
cat "$KT_WORK/curl.out"
[ "$took" -lt 2000 ] || die "curl took ${took} ms to fail"
log "curl failed after ${took} ms (its -m is 10 s)"
"$KT" status --control "$KT_WORK/b.sock" --json | grep -q '"icmp_unreachable_sent": [1-9]' || die "b did not count its Destination Unreachable"

log "delete b's TUN under the running node"
ip -n "$B" link del "$TUN_B"
t0=$SECONDS
while kill -0 "$PID_B" 2>/dev/null; do
	[ $((SECONDS - t0)) -lt 15 ] || die "b is still running 15 s after its TUN was deleted"
	sleep 0.1
done
rc=0; wait "$PID_B" || rc=$?
[ "$rc" != 0 ] || die "b exited 0 after losing its TUN"
tail -n 1 "$KT_WORK/b.log"
tail -n 1 "$KT_WORK/b.log" | grep -q "^korium-tun: device $TUN_B is gone" || die "b's last line does not name the lost device"
log "b exited with status $rc within $((SECONDS - t0)) s"
kill -0 "${KT_PIDS[0]}" || die "a died"
log "deadend-test passed"
