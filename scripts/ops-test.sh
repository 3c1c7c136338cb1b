#!/usr/bin/env bash
# ops-test.sh: korium-tun run as a user would run it, in two network
# namespaces with real kernel TUNs. Each node gets a config file written by
# `config init` and nothing on its command line but --config. Checks:
#   - the systemd unit passes systemd-analyze verify (with no warning);
#   - a names a peer "bob" (names add), `korium-tun ping bob` answers;
#   - a's /metrics passes promtool check metrics and shows the peer and
#     its traffic;
#   - dig from a's host gets bob.korium AAAA = b's SmartAddr (and the PTR
#     back); the same query from b, through the overlay, gets REFUSED;
#   - with the nameserver line the README gives, `ping -6 bob.korium` works;
#   - SIGHUP reloads the config (log level) and says what changed;
#   - mistakes (unknown key, public metrics address, port in use) are one
#     line naming the file, line and key.
# Removes every namespace, process and file it made when it ends.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
need_root
for tool in curl dig promtool systemd-analyze; do
	command -v "$tool" >/dev/null || die "$tool missing (apt-get install curl dnsutils prometheus systemd)"
done
build
POW=8
A=ko$$a B=ko$$b
NETNS_ETC=/etc/netns/$A
# kt_cleanup reads the exit status from $?: hand it on. set +e first, or
# errexit would end the trap at (exit 1) before anything is cleaned up.
trap 'rc=$?; set +e; rm -rf "$NETNS_ETC"; (exit $rc); kt_cleanup' EXIT

log "systemd unit: systemd-analyze verify"
sed "s|/usr/local/bin/korium-tun|$KT|" "$KT_ROOT/dist/korium-tun.service" >"$KT_WORK/korium-tun.service"
out=$(systemd-analyze verify "$KT_WORK/korium-tun.service" 2>&1) || die "systemd-analyze verify failed: $out"
[ -z "$out" ] || die "systemd-analyze verify warns: $out"
grep -q '^Type=notify$' "$KT_WORK/korium-tun.service" || die "unit is not Type=notify"

mkns "$A"
mkns "$B"
ip link add "ko$$va" netns "$A" type veth peer name "ko$$vb" netns "$B"
ip -n "$A" addr add 198.18.7.1/24 dev "ko$$va"
ip -n "$B" addr add 198.18.7.2/24 dev "ko$$vb"
ip -n "$A" link set "ko$$va" up
ip -n "$B" link set "ko$$vb" up
for n in a b; do "$KT" keygen --key "$KT_WORK/$n.key" --pow-bits $POW >/dev/null; "$KT" id --key "$KT_WORK/$n.key" --json >"$KT_WORK/$n.id"; done
ID_A=$(json_get "$KT_WORK/a.id" identity) ID_B=$(json_get "$KT_WORK/b.id" identity)
ADDR_A=$(json_get "$KT_WORK/a.id" address) ADDR_B=$(json_get "$KT_WORK/b.id" address)
MPORT=9474

# set_key FILE KEY VALUE: uncomment KEY in a config init file and set it.
set_key() {
	grep -q "^#$2:" "$1" || die "config init has no key $2"
	sed -i "s|^#$2:.*|$2: $3|" "$1"
}
for n in a b; do
	"$KT" config init >"$KT_WORK/$n.yaml"
	set_key "$KT_WORK/$n.yaml" key "$KT_WORK/$n.key"
	set_key "$KT_WORK/$n.yaml" pow_bits $POW
	set_key "$KT_WORK/$n.yaml" control "$KT_WORK/$n.sock"
	set_key "$KT_WORK/$n.yaml" names_file "$KT_WORK/$n.names"
	set_key "$KT_WORK/$n.yaml" tun korium0
done
set_key "$KT_WORK/a.yaml" listen 198.18.7.1:7400
set_key "$KT_WORK/a.yaml" metrics "127.0.0.1:$MPORT"
set_key "$KT_WORK/b.yaml" listen 198.18.7.2:7400
set_key "$KT_WORK/b.yaml" bootstrap "[\"$ID_A@198.18.7.1:7400\"]"
set_key "$KT_WORK/b.yaml" dns "\"[$ADDR_B]:5353\""
# The DNS responders' own refusal of peers is checked below: their ports
# are open in the firewall (whose default would drop the queries first).
set_key "$KT_WORK/a.yaml" allow '["* udp/53"]'
set_key "$KT_WORK/b.yaml" allow '["* udp/5353"]'

log "mistakes in a config file are one line with file, line and key"
expect_error() { # WANT CMD...: CMD fails with one line containing WANT
	local want=$1 err; shift
	if err=$("$@" 2>&1 >/dev/null); then die "accepted: $*"; fi
	[ "$(printf '%s\n' "$err" | wc -l)" = 1 ] || die "more than one line from $*: $err"
	case $err in *"$want"*) ;; *) die "error '$err' does not say '$want'" ;; esac
}
printf 'mtu: 1392\nmtu_bits: 3\n' >"$KT_WORK/bad.yaml"
expect_error "$KT_WORK/bad.yaml:2: mtu_bits: unknown key" "$KT" up --config "$KT_WORK/bad.yaml"
printf 'metrics: 0.0.0.0:9100\n' >"$KT_WORK/bad.yaml"
expect_error "$KT_WORK/bad.yaml:1: metrics 0.0.0.0:9100 is not a loopback address" \
	ip netns exec "$A" "$KT" up --config "$KT_WORK/bad.yaml" --key "$KT_WORK/x.key" --pow-bits 4 --control "$KT_WORK/x.sock"

log "starting a and b with only --config"
start_bg "$KT_WORK/a.log" ip netns exec "$A" "$KT" up --config "$KT_WORK/a.yaml"
PID_A=$BG_PID
start_bg "$KT_WORK/b.log" ip netns exec "$B" "$KT" up --config "$KT_WORK/b.yaml"
wait_until 30 "node a" "$KT" status --control "$KT_WORK/a.sock"
wait_until 30 "node b" "$KT" status --control "$KT_WORK/b.sock"
printf 'metrics: 127.0.0.1:%s\n' $MPORT >"$KT_WORK/bad.yaml"
expect_error "$KT_WORK/bad.yaml:1: metrics 127.0.0.1:$MPORT is in use" \
	ip netns exec "$A" "$KT" up --config "$KT_WORK/bad.yaml" --key "$KT_WORK/x.key" --pow-bits 4 --control "$KT_WORK/x.sock"

"$KT" keygen --key "$KT_WORK/x.key" --pow-bits 4 >/dev/null # no "created identity key" line
printf 'dns: "[%s]:53"\ntun: kox%s\nlisten: 198.18.7.1:7401\n' "$ADDR_A" $$ >"$KT_WORK/bad.yaml"
expect_error "$KT_WORK/bad.yaml:1: dns [$ADDR_A]:53 is in use" \
	ip netns exec "$A" "$KT" up --config "$KT_WORK/bad.yaml" --key "$KT_WORK/x.key" --pow-bits 4 --control "$KT_WORK/x.sock"
ip -n "$A" link show "kox$$" >/dev/null 2>&1 && die "a failed up left its TUN behind"

log "names: a calls b bob"
out=$("$KT" names add --control "$KT_WORK/a.sock" bob "$ID_B")
[ "$out" = "bob.korium is $ID_B ($ADDR_B)" ] || die "names add: $out"
grep -q "^bob $ID_B\$" "$KT_WORK/a.names" || die "names file not written: $(cat "$KT_WORK/a.names")"
out=$("$KT" names list --control "$KT_WORK/a.sock" --json)
case $out in *'"name": "bob"'*) ;; *) die "names list: $out" ;; esac
wait_until 30 "korium-tun ping bob" "$KT" ping --control "$KT_WORK/a.sock" --count 1 bob
"$KT" ping --control "$KT_WORK/a.sock" --count 1 bob | tee "$KT_WORK/ping.out"
grep -q "^pong from bob ($ADDR_B) via direct" "$KT_WORK/ping.out" || die "ping bob: $(cat "$KT_WORK/ping.out")"
"$KT" status --control "$KT_WORK/a.sock" >"$KT_WORK/status.out"
grep -q "^bob " "$KT_WORK/status.out" || die "status does not show the name bob: $(cat "$KT_WORK/status.out")"
wait_until 30 "korium-tun resolve bob" "$KT" resolve --control "$KT_WORK/a.sock" bob
out=$("$KT" resolve --control "$KT_WORK/a.sock" bob)
case $out in "name     bob.korium"*"identity $ID_B"*) ;; *) die "resolve bob: $out" ;; esac

log "DNS: bob.korium from a's own host, and from b through the overlay"
ans=$(ip netns exec "$A" dig @"$ADDR_A" -p 53 bob.korium AAAA +short +time=2 +tries=3)
[ "$ans" = "$ADDR_B" ] || die "dig bob.korium AAAA on a answered '$ans', want $ADDR_B"
ptr=$(ip netns exec "$A" dig @"$ADDR_A" -p 53 -x "$ADDR_B" +short +time=2 +tries=3)
[ "$ptr" = "bob.korium." ] || die "dig -x $ADDR_B answered '$ptr'"
st=$(ip netns exec "$B" dig @"$ADDR_A" -p 53 bob.korium AAAA +time=2 +tries=3 | sed -n 's/.*status: \([A-Z]*\).*/\1/p')
[ "$st" = REFUSED ] || die "a query from peer b got status '$st', want REFUSED"
log "dig @$ADDR_A bob.korium AAAA on a: $ans; PTR: $ptr; the same query from b: $st"
st=$(ip netns exec "$A" dig @"$ADDR_B" -p 5353 bob.korium AAAA +time=2 +tries=3 | sed -n 's/.*status: \([A-Z]*\).*/\1/p')
[ "$st" = REFUSED ] || die "a query from a to b's responder got status '$st', want REFUSED"
st=$(ip netns exec "$B" dig @"$ADDR_B" -p 5353 nobody.korium AAAA +time=2 +tries=3 | sed -n 's/.*status: \([A-Z]*\).*/\1/p')
[ "$st" = NXDOMAIN ] || die "b's responder for an unknown name: '$st', want NXDOMAIN"
log "ping -6 bob.korium with the resolv.conf line the README gives (no systemd-resolved)"
mkdir -p "$NETNS_ETC"
echo "nameserver $ADDR_A" >"$NETNS_ETC/resolv.conf"
ip netns exec "$A" ping -6 -c 1 -W 2 bob.korium | tee "$KT_WORK/ping6.out"
grep -q "bytes from bob.korium ($ADDR_B)" "$KT_WORK/ping6.out" || die "ping -6 bob.korium did not reach b"

log "metrics: promtool check metrics, peer and traffic"
ip netns exec "$A" ping -6 -c 5 -i 0.2 -W 2 "$ADDR_B" >/dev/null || die "ping6 a -> b"
ip netns exec "$A" curl -sf "http://127.0.0.1:$MPORT/metrics" >"$KT_WORK/metrics.txt" || die "curl /metrics"
promtool check metrics <"$KT_WORK/metrics.txt" || die "promtool check metrics failed"
grep -q '^korium_peers{path="direct"} 1$' "$KT_WORK/metrics.txt" || die "metrics do not show the direct peer: $(grep korium_peers "$KT_WORK/metrics.txt")"
tx=$(sed -n 's/^korium_tunnel_packets_total{direction="tx"} //p' "$KT_WORK/metrics.txt")
rx=$(sed -n 's/^korium_tunnel_packets_total{direction="rx"} //p' "$KT_WORK/metrics.txt")
[ "${tx%%.*}" -ge 5 ] && [ "${rx%%.*}" -ge 5 ] || die "tunnel packets tx=$tx rx=$rx, want >= 5 each"
grep -q '^korium_dns_queries_total{result="answered"} [1-9]' "$KT_WORK/metrics.txt" || die "DNS answers not counted"
grep -q '^go_goroutines ' "$KT_WORK/metrics.txt" || die "no Go runtime metrics"
log "metrics: $(grep -c '^korium_' "$KT_WORK/metrics.txt") korium_ series; tunnel packets tx=$tx rx=$rx"
ip netns exec "$B" curl -s -m 2 "http://198.18.7.1:$MPORT/metrics" >/dev/null && die "a's metrics are reachable from b"

log "SIGHUP reloads the config"
set_key "$KT_WORK/a.yaml" log_level debug
sed -i "s|^mtu: .*||; s|^#mtu:.*|mtu: 1300|" "$KT_WORK/a.yaml"
kill -HUP "$PID_A" # ip netns exec execs korium-tun: same PID
wait_until 10 "log level change logged" grep -q 'msg="log level changed" level=debug' "$KT_WORK/a.log"
restart=$(grep 'applies only at start' "$KT_WORK/a.log" || true)
case $restart in *key=mtu) ;; *) die "want exactly mtu reported as needing a restart, got: $restart" ;; esac
"$KT" status --control "$KT_WORK/a.sock" >/dev/null || die "a died on SIGHUP"
stop_pid "$PID_A"
log "PASS ops"
