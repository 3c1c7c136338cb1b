#!/usr/bin/env bash
# nat-test.sh [--runs N] [--topology-only]: the NAT lab (ONLY="a c" runs
# just those scenarios). An "internet" (a
# bridge in a hub namespace, 198.18.0.0/16) with a public node P on it, and
# two hosts HA and HB, each behind its own NAT router RA / RB (nftables
# masquerade plus a stateful firewall: a cone NAT; `masquerade fully-random`:
# a symmetric NAT). Loss is an nftables `numgen random` drop on the bridge.
#
#   HA 198.19.1.2 -- RA (lan 198.19.1.1, wan 198.18.2.1) --+
#                                                            |-- br0 -- P 198.18.1.1 (bootstrap, relay)
#   HB 198.19.2.2 -- RB (lan 198.19.2.1, wan 198.18.3.1) --+        Q 198.18.4.1 (public; throughput baseline)
#
# First it checks the topology with plain tools (ping, and udpmap, a tiny UDP
# echo / hole-punch tool in internal/udpmap), then runs korium-tun through it:
#   nat       HA learns from P that it is behind a NAT, its observed address
#             and P as its relay (status "nat")
#   a         cone/cone: time to the first ping6 reply (through the relay)
#             and to a direct path, --runs times (default 3), medians
#   c         cone/cone: 256 MiB over TCP started right after the first
#             reply, while the path switches relay -> direct; sha256 checked
#   b         HB behind a symmetric NAT: ping6 works, the path stays relay
#             for 10 s while traffic flows
#   thr       throughput of 64 MiB over TCP: public <-> public (no NAT),
#             relayed (symmetric case, from b), direct through cone NATs
#             (from a), and their ratios
#   e         cone/cone with 3% loss on the internet: ping6, a small
#             transfer, and the direct path still happen
#   d         cone/cone with a direct path: P stops; ping6 and a TCP
#             transfer between HA and HB still work
#   f         HB behind a symmetric NAT, relayed through P (its only
#             bootstrap); Q is public and known only through the DHT. P
#             stops during a 256 MiB transfer: HA and HB pick Q and move
#             the connection onto a session through it (mesh relaying);
#             prints the failover time (longest ping6 gap, every 100 ms),
#             which must stay under 5 s, and checks the transfer's sha256
#   g         after f: HA has cached Q and HB; HA restarts while P, its
#             only bootstrap, is down: it rejoins through its peer cache
#             (beside its key file) and reaches HB and Q by SmartAddr
# Every scenario runs even when an earlier one failed; the script prints a
# summary and exits non-zero if any failed. It removes every namespace,
# process and file it made, also on failure.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

RUNS=3 TOPO_ONLY=0
while [ $# -gt 0 ]; do
	case $1 in
	--runs) RUNS=${2:?}; shift ;;
	--topology-only) TOPO_ONLY=1 ;;
	*) die "usage: nat-test.sh [--runs N] [--topology-only]" ;;
	esac
	shift
done
[[ $RUNS =~ ^[1-9]$ ]] || die "--runs must be 1..9"
need_root
command -v nft >/dev/null || die "nft (nftables) is missing"
command -v jq >/dev/null || die "jq is missing"
build
(cd "$KT_ROOT" && go build -o "$KT_WORK/udpmap" ./internal/udpmap)
UDPMAP=$KT_WORK/udpmap
POW=8

# ---------------------------------------------------------------- topology

HUB=kn$$hub RA=kn$$ra RB=kn$$rb
declare -A NS=([p]=kn$$p [q]=kn$$q [ha]=kn$$ha [hb]=kn$$hb)
declare -A IP=([p]=198.18.1.1 [q]=198.18.4.1 [ha]=198.19.1.2 [hb]=198.19.2.2)
RA_WAN=198.18.2.1 RB_WAN=198.18.3.1

# hub_link NS IFNAME HUBSIDE ADDR/16: a veth from NS to the internet bridge.
hub_link() {
	ip link add "$2" netns "$1" type veth peer name "$3" netns "$HUB"
	ip -n "$HUB" link set "$3" master br0 up
	ip -n "$1" addr add "$4" dev "$2"
	ip -n "$1" link set "$2" up
}

# nat_router ROUTER HOSTNS N: router with wan on the bridge (198.18.(N+1).1)
# and lan 198.19.N.1/24 to HOSTNS (198.19.N.2, default route via the router).
nat_router() {
	local r=$1 h=$2 n=$3
	mkns "$r"
	hub_link "$r" wan "hr$n" "198.18.$((n + 1)).1/16"
	ip link add lan netns "$r" type veth peer name eth0 netns "$h"
	ip -n "$r" addr add "198.19.$n.1/24" dev lan
	ip -n "$r" link set lan up
	ip -n "$h" addr add "198.19.$n.2/24" dev eth0
	ip -n "$h" link set eth0 up
	ip -n "$h" route add default via "198.19.$n.1"
	ip netns exec "$r" sysctl -qw net.ipv4.ip_forward=1
}

# set_nat ROUTER cone|symmetric: replace the router's ruleset. Masquerade on
# the WAN; forward only LAN -> WAN new flows and replies; drop unsolicited
# WAN packets to the router itself, so that they never leave a conntrack
# entry that would make masquerade pick another port (and spoil punching).
set_nat() {
	local random=""
	[ "$2" = symmetric ] && random=fully-random
	ip netns exec "$1" nft -f - <<-EOF
		flush ruleset
		table ip nat {
			chain post {
				type nat hook postrouting priority srcnat; policy accept;
				oifname "wan" masquerade $random
			}
		}
		table ip filter {
			chain forward {
				type filter hook forward priority filter; policy drop;
				ct state established,related accept
				iifname "lan" oifname "wan" accept
			}
			chain input {
				type filter hook input priority filter; policy accept;
				iifname "wan" ct state established,related accept
				iifname "wan" drop
			}
		}
	EOF
}

# set_loss PERCENT: drop PERCENT% of the frames the internet bridge forwards.
set_loss() {
	ip netns exec "$HUB" nft -f - <<-EOF
		table bridge loss
		delete table bridge loss
	EOF
	[ "$1" -gt 0 ] || return 0
	ip netns exec "$HUB" nft -f - <<-EOF
		table bridge loss {
			chain forward {
				type filter hook forward priority filter; policy accept;
				numgen random mod 100 < $1 drop
			}
		}
	EOF
}

build_topology() {
	log "building the topology: hub, P, Q, RA+HA, RB+HB"
	mkns "$HUB"
	ip -n "$HUB" link add br0 type bridge
	ip -n "$HUB" link set br0 up
	local n
	for n in p q ha hb; do mkns "${NS[$n]}"; done
	hub_link "${NS[p]}" eth0 hp "${IP[p]}/16"
	hub_link "${NS[q]}" eth0 hq "${IP[q]}/16"
	nat_router "$RA" "${NS[ha]}" 1
	nat_router "$RB" "${NS[hb]}" 2
	set_nat "$RA" cone
	set_nat "$RB" cone
}

# nsx NODE CMD...: run CMD in NODE's namespace.
nsx() { local n=$1; shift; ip netns exec "${NS[$n]}" "$@"; }

# echo_servers: udpmap echo on P and Q, port 9101.
start_echo() {
	local n
	ECHO_PIDS=()
	for n in p q; do
		start_bg "$KT_WORK/echo-$n.txt" ip netns exec "${NS[$n]}" "$UDPMAP" echo -listen "${IP[$n]}:9101" -timeout 60s
		ECHO_PIDS+=("$BG_PID")
		wait_until 10 "udp echo on $n" grep -q listening "$KT_WORK/echo-$n.txt"
	done
}
stop_echo() { local p; for p in "${ECHO_PIDS[@]}"; do kill -0 "$p" 2>/dev/null && stop_pid "$p"; done; return 0; }

# mappings HOST PORT: the public source P and Q saw for HOST:PORT, one a line.
mappings() { nsx "$1" "$UDPMAP" probe -bind "${IP[$1]}:$2" -to "${IP[p]}:9101" -to "${IP[q]}:9101" -timeout 5s | cut -d' ' -f2; }

# punch PORT SECS: simultaneous UDP open between HA:PORT and HB:PORT, each
# aiming at the other's router with the same port; 0 if both got through.
punch() {
	start_bg "$KT_WORK/punch-a.txt" ip netns exec "${NS[ha]}" "$UDPMAP" punch -bind "${IP[ha]}:$1" -peer "$RB_WAN:$1" -timeout "$2s"
	local pa=$BG_PID rc=0
	nsx hb "$UDPMAP" punch -bind "${IP[hb]}:$1" -peer "$RA_WAN:$1" -timeout "$2s" >/dev/null 2>&1 || rc=1
	wait "$pa" || rc=1
	return $rc
}

check_topology() {
	log "topology: HA and HB reach P"
	nsx ha ping -c 2 -i 0.2 -W 1 "${IP[p]}" >/dev/null || die "HA cannot ping P"
	nsx hb ping -c 2 -i 0.2 -W 1 "${IP[p]}" >/dev/null || die "HB cannot ping P"
	log "topology: P does not reach HA, even with a route to its LAN (the firewall drops it)"
	nsx p ip route add 198.19.1.0/24 via "$RA_WAN"
	if nsx p ping -c 2 -i 0.2 -W 1 "${IP[ha]}" >/dev/null; then die "P can ping HA through RA"; fi
	nsx p ip route del 198.19.1.0/24 via "$RA_WAN"
	if nsx p ping -c 1 -W 1 "${IP[ha]}" >/dev/null 2>&1; then die "P can ping HA"; fi

	start_echo
	local m
	mapfile -t m < <(mappings ha 41001)
	log "topology: cone NAT: HA:41001 seen by P as ${m[0]:-?}, by Q as ${m[1]:-?}"
	[[ ${m[0]:-} = "$RA_WAN:41001" && ${m[1]:-} = "$RA_WAN:41001" ]] ||
		die "cone NAT does not keep HA's source port for every destination"
	grep -q "src=${IP[ha]} dst=${IP[p]} sport=41001 dport=9101 .*src=${IP[p]} dst=$RA_WAN sport=9101 dport=41001" \
		<(ip netns exec "$RA" cat /proc/net/nf_conntrack) || die "RA's conntrack has no port-preserving entry for HA:41001"
	log "topology: cone NAT: simultaneous UDP open HA:41002 <-> HB:41002 gets through"
	punch 41002 5 || die "UDP hole punching through two cone NATs failed"

	set_nat "$RB" symmetric
	mapfile -t m < <(mappings hb 41003)
	log "topology: symmetric NAT: HB:41003 seen by P as ${m[0]:-?}, by Q as ${m[1]:-?}"
	[[ -n ${m[1]:-} && ${m[0]%:*} = "$RB_WAN" && ${m[0]} != "${m[1]}" ]] ||
		die "fully-random masquerade did not map HB:41003 to a different port per destination"
	log "topology: symmetric NAT: simultaneous UDP open HA:41004 <-> HB:41004 is blocked"
	if punch 41004 2; then die "UDP hole punching through a symmetric NAT succeeded"; fi
	set_nat "$RB" cone
	stop_echo

	log "topology: 5% loss on the bridge"
	set_loss 5
	local recv
	recv=$(nsx p ping -c 200 -i 0.005 -W 1 "${IP[q]}" | sed -n 's/.* \([0-9]*\) received.*/\1/p')
	set_loss 0
	log "topology: P -> Q with 5% loss each way: $recv of 200 pings answered"
	((${recv:-0} >= 120 && ${recv:-0} < 200)) || die "the loss rule does not behave (got $recv of 200)"
	nsx p ping -c 3 -i 0.2 -W 1 "${IP[q]}" >/dev/null || die "loss rule not removed"
	log "topology OK"
}

# ---------------------------------------------------------------- nodes

declare -A ID ADDR PID SOCK PORT LOGF
GEN=0

# node_up NODE: start NODE (same identity every time) on a fresh UDP port,
# so that no NAT mapping or conntrack entry is left over from an earlier
# run; every node but P has P as its only bootstrap. Waits for the control
# socket and, for the others, for a connection to P.
node_up() {
	local n=$1 boots=()
	local key=$KT_WORK/$n.key
	GEN=$((GEN + 1))
	PORT[$n]=$((7400 + GEN)) SOCK[$n]=$KT_WORK/$n.$GEN.sock LOGF[$n]=$KT_WORK/$n.$GEN.log
	if [ ! -f "$key" ]; then
		"$KT" keygen --key "$key" --pow-bits $POW >/dev/null
		"$KT" id --key "$key" --json >"$KT_WORK/$n.id"
		ID[$n]=$(json_get "$KT_WORK/$n.id" identity)
		ADDR[$n]=$(json_get "$KT_WORK/$n.id" address)
	fi
	[ "$n" = p ] || boots=(--bootstrap "${ID[p]}@${IP[p]}:${PORT[p]}")
	start_bg "${LOGF[$n]}" ip netns exec "${NS[$n]}" "$KT" up --key "$key" --listen "${IP[$n]}:${PORT[$n]}" \
		--tun kt0 --pow-bits $POW --control "${SOCK[$n]}" --inbound-default allow "${boots[@]}"
	PID[$n]=$BG_PID
	wait_until 20 "$n's control socket" "$KT" status --control "${SOCK[$n]}"
	# NO_P=1: P is down on purpose (the peer cache scenario).
	[ "$n" = p ] || [ -n "${NO_P:-}" ] || wait_until 20 "$n connected to P" has_peer "$n" p
	log "node $n up: ${ID[$n]:0:16} ${ADDR[$n]} on ${IP[$n]}:${PORT[$n]}"
}

# node_down NODE: stop NODE (by PID) if it runs; its log becomes *.out so
# lib.sh's failure dump shows only the logs of nodes still running.
node_down() {
	local n=$1
	[ -n "${PID[$n]:-}" ] || return 0
	if kill -0 "${PID[$n]}" 2>/dev/null; then
		stop_pid "${PID[$n]}"
	else
		log "warning: node $n (pid ${PID[$n]}) had already exited"
	fi
	mv "${LOGF[$n]}" "${LOGF[$n]%.log}.out"
	PID[$n]=""
}

# fresh_pair: HA and HB restarted (new ports), both connected to P.
fresh_pair() { node_down ha; node_down hb; node_up ha; node_up hb; }

status_json() { "$KT" status --control "${SOCK[$1]}" --json; }
has_peer() { status_json "$1" | jq -e --arg id "${ID[$2]}" 'any(.peers[]?; .identity == $id)' >/dev/null; }

# path FROM TO: "KIND ADDR RTT_NS SWITCHES" of FROM's path to TO ("none" if unknown).
path() {
	status_json "$1" | jq -r --arg id "${ID[$2]}" \
		'first(.peers[]? | select(.identity == $id)) // {} | "\(.path.kind // "none") \(.path.addr // "-") \(.path.rtt_ns // 0) \(.path_switches // 0)"' 2>/dev/null ||
		echo "none - 0 0"
}
path_kind() { path "$1" "$2" | cut -d' ' -f1; }
is_direct() { [ "$(path_kind "$1" "$2")" = direct ]; }
knows_nat() { status_json "$1" | jq -e '.nat.observed != null and (.nat.relays | length > 0)'; }
# record FROM TO: addrs and relays of TO's signed record, as FROM resolves it.
record() {
	local out
	out=$(timeout 15 "$KT" resolve --control "${SOCK[$1]}" --json "${ADDR[$2]}" 2>&1) || true
	jq -c '{addrs, relays}' <<<"$out" 2>/dev/null || echo "(resolve failed: $(tail -n 1 <<<"$out"))"
}
# lists_relay NODE RELAY: HA resolves NODE's record and finds RELAY in it.
lists_relay() { timeout 10 "$KT" resolve --control "${SOCK[ha]}" --json "${ADDR[$1]}" | jq -e --arg id "${ID[$2]}" '.relays | index($id) != null'; }

# poll SECS CMD...: like wait_until, but returns 1 at the deadline.
poll() {
	local end=$((SECONDS + $1)); shift
	until "$@" >/dev/null 2>&1; do
		[ $SECONDS -lt $end ] || return 1
		sleep 0.2
	done
}
now_ms() { echo $(($(date +%s%N) / 1000000)); }

FAIL_MSG=""
fail() { FAIL_MSG=$*; log "step failed: $*"; return 1; }

# first_reply FROM TO SECS: ping6 every 100 ms until the first reply; sets T_FIRST (ms).
first_reply() {
	local t0
	t0=$(now_ms)
	if ! nsx "$1" ping -6 -n -q -i 0.1 -c 1 -w "$3" "${ADDR[$2]}" >/dev/null; then
		log "$1 resolves $2 as: $(record "$1" "$2")"
		fail "no ping6 reply $1 -> $2 within $3 s"
		return 1
	fi
	T_FIRST=$(($(now_ms) - t0))
	log "first ping6 reply $1 -> $2 after ${T_FIRST} ms; path now: $(path "$1" "$2")"
}

# wait_direct FROM TO SECS: poll FROM's status until its path to TO is
# direct, with a ping6 running meanwhile; sets T_DIRECT (ms since the call).
wait_direct() {
	local t0 bg rc=0
	t0=$(now_ms)
	start_bg "$KT_WORK/bgping.txt" ip netns exec "${NS[$1]}" ping -6 -n -q -i 0.5 -w "$3" "${ADDR[$2]}"
	bg=$BG_PID
	poll "$3" is_direct "$1" "$2" || rc=1
	T_DIRECT=$(($(now_ms) - t0))
	kill -0 "$bg" 2>/dev/null && stop_pid "$bg"
	[ $rc = 0 ] || { fail "$1's path to $2 not direct within $3 s (it is: $(path "$1" "$2"))"; return 1; }
	log "path $1 -> $2 direct after ${T_DIRECT} ms: $(path "$1" "$2")"
}

# ping_ok FROM TO COUNT MIN: COUNT ping6s 200 ms apart, at least MIN answered.
ping_ok() {
	local got
	got=$(nsx "$1" ping -6 -n -i 0.2 -W 1 -c "$3" "${ADDR[$2]}" | sed -n 's/.* \([0-9]*\) received.*/\1/p')
	log "ping6 $1 -> $2: ${got:-0} of $3 answered"
	[ "${got:-0}" -ge "$4" ] || { fail "ping6 $1 -> $2: only ${got:-0} of $3 answered"; return 1; }
}

# kt_ping FROM TO: korium-tun ping --json --count 3; prints the reply kinds.
kt_ping() {
	local out
	out=$(timeout 30 "$KT" ping --control "${SOCK[$1]}" --count 3 --json "${ADDR[$2]}" 2>"$KT_WORK/kt-ping.err") ||
		{ fail "korium-tun ping $1 -> $2 failed: $(tail -n 1 "$KT_WORK/kt-ping.err")"; return 1; }
	echo "$out" | jq -e --arg id "${ID[$2]}" -s 'length > 0 and all(.[]; .identity == $id)' >/dev/null ||
		{ fail "korium-tun ping $1 -> $2: unexpected output: $out"; return 1; }
	KT_PING_KINDS=$(echo "$out" | jq -r '"\(.kind) \(.addr) \(.rtt_ns / 1e3 | floor) us"' | paste -sd, -)
	log "korium-tun ping $1 -> $2: $KT_PING_KINDS"
}

# xfer FROM TO BYTES SECS: BYTES over TCP between the SmartAddrs, sha256
# checked; sets XFER_MBIT (Mbit/s, connection setup included).
XN=0
xfer() {
	local from=$1 to=$2 bytes=$3 secs=$4 rp sent got t0 ms
	XN=$((XN + 1))
	local port=$((9000 + XN)) rlog=$KT_WORK/recv.$XN.txt
	start_bg "$rlog" ip netns exec "${NS[$to]}" "$XFER" recv -listen "[${ADDR[$to]}]:$port" -timeout "${secs}s"
	rp=$BG_PID
	wait_until 10 "xfer receiver on $to" grep -q listening "$rlog"
	t0=$(now_ms)
	if ! sent=$(nsx "$from" "$XFER" send -to "[${ADDR[$to]}]:$port" -bytes "$bytes" -seed "$XN" -timeout "${secs}s" 2>&1); then
		kill -0 "$rp" 2>/dev/null && stop_pid "$rp"
		fail "TCP $from -> $to ($bytes bytes): $sent"
		return 1
	fi
	ms=$(($(now_ms) - t0))
	wait "$rp" || { fail "TCP receiver on $to failed: $(tail -n 1 "$rlog")"; return 1; }
	got=$(grep -v listening "$rlog")
	[ "$sent" = "$got" ] || { fail "TCP $from -> $to corrupted: sent '$sent', received '$got'"; return 1; }
	XFER_MBIT=$(awk -v b="$bytes" -v ms="$ms" 'BEGIN { printf "%.0f", b * 8 / (ms > 0 ? ms : 1) / 1000 }')
	log "TCP $from -> $to: $((bytes >> 20)) MiB intact in ${ms} ms (${XFER_MBIT} Mbit/s)"
}

median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : int((v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }

# ---------------------------------------------------------------- scenarios

declare -A THR
SUMMARY=()

scen_nat() {
	fresh_pair
	local want="$RA_WAN:${PORT[ha]}" pub obs rel
	log "P's own view: $(status_json p | jq -c '.nat // "no nat section"')"
	if ! poll 15 knows_nat ha; then
		fail "HA's status has no nat.observed / nat.relays after 15 s: $(status_json ha | jq -c '.nat // "no nat section"')"
		return 1
	fi
	pub=$(status_json ha | jq -r '.nat.public')
	obs=$(status_json ha | jq -r '.nat.observed')
	rel=$(status_json ha | jq -r --arg id "${ID[p]}" '.nat.relays | index($id) != null')
	log "HA: public=$pub observed=$obs relays include P: $rel"
	[ "$pub" = false ] || { fail "HA (behind RA) says public=$pub"; return 1; }
	[ "$obs" = "$want" ] || { fail "HA's observed address is $obs, want $want (RA's WAN, port kept by the cone NAT)"; return 1; }
	[ "$rel" = true ] || { fail "HA did not pick P as its relay"; return 1; }
	# HB publishes P as its relay: HA finds it in HB's signed record.
	if ! poll 15 lists_relay hb p; then
		fail "HB's record (resolved by HA) does not list P as a relay: $(record ha hb)"
		return 1
	fi
	log "HB's record lists P as its relay"
}

scen_a() {
	local r firsts=() directs=()
	for r in $(seq "$RUNS"); do
		log "run $r of $RUNS"
		fresh_pair
		local t0
		t0=$(now_ms)
		# Both ends must have found their NAT and published their relay
		# (configure_nat: about 2 s after connecting to P).
		poll 15 knows_nat ha || { fail "HA did not finish configure_nat"; return 1; }
		poll 15 knows_nat hb || { fail "HB did not finish configure_nat"; return 1; }
		poll 15 lists_relay hb p || { fail "HB's record does not list P as its relay"; return 1; }
		log "both ends know their NAT and HB's record lists its relay after $(($(now_ms) - t0)) ms"
		t0=$(now_ms)
		first_reply ha hb 20 || return 1
		firsts+=("$T_FIRST")
		wait_direct ha hb 30 || return 1
		directs+=($(($(now_ms) - t0)))
		log "run $r: first reply ${T_FIRST} ms, direct ${directs[-1]} ms (from the first ping)"
	done
	local mf md
	mf=$(median "${firsts[@]}") md=$(median "${directs[@]}")
	log "cone/cone over $RUNS runs: median time to first reply ${mf} ms (${firsts[*]}), to direct ${md} ms (${directs[*]})"
	SUMMARY+=("time to first ping6 reply (median of $RUNS): ${mf} ms  [${firsts[*]}]")
	SUMMARY+=("time to direct path     (median of $RUNS): ${md} ms  [${directs[*]}]")
	SUMMARY+=("path rtt, direct through cone NATs: $(path ha hb | awk '{ printf "%.2f", $3 / 1e6 }') ms")
	kt_ping ha hb || return 1
	case $KT_PING_KINDS in *relay*) fail "korium-tun ping on a direct path went via relay: $KT_PING_KINDS"; return 1 ;; esac
	log "throughput, direct through two cone NATs"
	xfer ha hb $((64 << 20)) 120 || return 1
	THR[cone]=$XFER_MBIT
}

scen_c() {
	fresh_pair
	first_reply ha hb 20 || return 1
	local before after
	before=$(path ha hb)
	log "256 MiB HA -> HB starting on path: $before"
	xfer ha hb $((256 << 20)) 180 || return 1
	after=$(path ha hb)
	log "path after the transfer: $after"
	SUMMARY+=("256 MiB across the switch: ${XFER_MBIT} Mbit/s, path ${before%% *} -> ${after%% *}, path_switches $(echo "$after" | cut -d' ' -f4)")
	[ "${after%% *}" = direct ] || { fail "path after 256 MiB is ${after%% *}, not direct"; return 1; }
	[ "${before%% *}" = relay ] || log "note: the path was already ${before%% *} when the transfer started; no switch during it"
}

scen_b() {
	set_nat "$RB" symmetric
	fresh_pair
	first_reply ha hb 20 || return 1
	log "path must stay relay for 10 s while 50 ping6s flow"
	start_bg "$KT_WORK/sym-ping.txt" ip netns exec "${NS[ha]}" ping -6 -n -i 0.2 -W 1 -c 50 "${ADDR[hb]}"
	local bg=$BG_PID i k
	for i in $(seq 10); do
		k=$(path ha hb)
		[ "${k%% *}" = relay ] || { stop_pid "$bg"; fail "after ${i} s HA's path to HB is '$k', want relay"; return 1; }
		sleep 1
	done
	log "still relayed: $k"
	SUMMARY+=("path rtt, relayed through P: $(echo "$k" | awk '{ printf "%.2f", $3 / 1e6 }') ms")
	wait "$bg" || true
	local got
	got=$(sed -n 's/.* \([0-9]*\) received.*/\1/p' "$KT_WORK/sym-ping.txt")
	log "ping6 over the relay: ${got:-0} of 50 answered"
	[ "${got:-0}" -ge 45 ] || { fail "ping6 over the relay: ${got:-0} of 50 answered"; return 1; }
	kt_ping ha hb || return 1
	case $KT_PING_KINDS in *direct*) fail "korium-tun ping through a symmetric NAT went direct: $KT_PING_KINDS"; return 1 ;; esac
	log "throughput, relayed through P"
	xfer ha hb $((64 << 20)) 120 || return 1
	THR[relay]=$XFER_MBIT
}

scen_thr() {
	log "throughput, public <-> public without NAT (Q -> P)"
	node_up q
	first_reply q p 20 || return 1
	xfer q p $((64 << 20)) 120 || return 1
	THR[public]=$XFER_MBIT
	node_down q
}

scen_e() {
	set_loss 3
	fresh_pair
	first_reply ha hb 30 || return 1
	xfer ha hb $((4 << 20)) 60 || return 1
	wait_direct ha hb 45 || return 1
	ping_ok ha hb 20 15 || return 1
}

scen_d() {
	fresh_pair
	first_reply ha hb 20 || return 1
	wait_direct ha hb 30 || return 1
	log "stopping P (pid ${PID[p]})"
	node_down p
	ping_ok ha hb 20 18 || return 1
	xfer ha hb $((16 << 20)) 60 || return 1
	log "path without P: $(path ha hb)"
	is_direct ha hb || { fail "path is no longer direct without P: $(path ha hb)"; return 1; }
}

# relay_id FROM TO: the relay identity of FROM's current path to TO, or "-".
relay_id() {
	status_json "$1" | jq -r --arg id "${ID[$2]}" 'first(.peers[]? | select(.identity == $id)) // {} | .path.relay // "-"' 2>/dev/null || echo -
}
via_relay() { [ "$(path_kind "$1" "$2")" = relay ] && [ "$(relay_id "$1" "$2")" = "${ID[$3]}" ]; }
p_knows_q() { status_json p | jq -e '.dht.table_size >= 1' >/dev/null; }
rx_from() { status_json "$1" | jq -r --arg id "${ID[$2]}" 'first(.peers[]? | select(.identity == $id)) // {} | .rx_bytes // 0'; }
rx_over() { [ "$(rx_from "$1" "$2")" -ge "$3" ]; }

scen_f() {
	set_nat "$RB" symmetric
	[ -n "${PID[p]:-}" ] || node_up p
	node_up q
	# Q is in P's DHT table before HA and HB join through P, so they learn
	# it; nobody is configured with it.
	poll 20 p_knows_q || { fail "Q did not join P's DHT"; return 1; }
	fresh_pair
	poll 15 knows_nat ha || { fail "HA did not finish configure_nat"; return 1; }
	poll 15 knows_nat hb || { fail "HB did not finish configure_nat"; return 1; }
	poll 15 lists_relay hb p || { fail "HB's record does not list P as its relay: $(record ha hb)"; return 1; }
	first_reply ha hb 20 || return 1
	poll 10 via_relay ha hb p || { fail "HA's path to HB is not through P: $(path ha hb) $(relay_id ha hb)"; return 1; }
	log "HA -> HB through P: $(path ha hb)"

	local port=9200 rlog=$KT_WORK/recv.f.txt slog=$KT_WORK/send.f.txt plog=$KT_WORK/ping.f.txt rp sp pp t_stop t_switch
	start_bg "$rlog" ip netns exec "${NS[hb]}" "$XFER" recv -listen "[${ADDR[hb]}]:$port" -timeout 240s
	rp=$BG_PID
	wait_until 10 "xfer receiver on hb" grep -q listening "$rlog"
	start_bg "$plog" ip netns exec "${NS[ha]}" ping -6 -n -D -i 0.1 -W 1 -w 60 "${ADDR[hb]}"
	pp=$BG_PID
	start_bg "$slog" ip netns exec "${NS[ha]}" "$XFER" send -to "[${ADDR[hb]}]:$port" -bytes $((256 << 20)) -seed 77 -timeout 240s
	sp=$BG_PID
	# Stop P once the transfer is well under way (32 MiB arrived).
	poll 60 rx_over hb ha $((32 << 20)) || { fail "the transfer did not get going: $(rx_from hb ha) bytes"; return 1; }
	t_stop=$(now_ms)
	log "stopping P (pid ${PID[p]}) with $(($(rx_from hb ha) >> 20)) MiB across"
	node_down p
	if ! poll 15 via_relay ha hb q; then
		fail "HA's path to HB did not move to Q within 15 s: $(path ha hb) $(relay_id ha hb)"
		return 1
	fi
	t_switch=$(($(now_ms) - t_stop))
	log "HA's path to HB is through Q ${t_switch} ms after P stopped: $(path ha hb)"
	wait "$sp" || { fail "xfer sender failed: $(tail -n 1 "$slog")"; return 1; }
	wait "$rp" || { fail "xfer receiver failed: $(tail -n 1 "$rlog")"; return 1; }
	kill -0 "$pp" 2>/dev/null && kill -INT "$pp" 2>/dev/null
	wait "$pp" 2>/dev/null || true
	local sent got gap
	sent=$(cat "$slog") got=$(grep -v listening "$rlog")
	[ "$sent" = "$got" ] || { fail "256 MiB across the failover corrupted: sent '$sent', received '$got'"; return 1; }
	log "256 MiB across the failover arrived intact: $got"
	# The failover time: the longest gap between ping6 replies around the stop.
	gap=$(awk -v t0="$t_stop" '/bytes from/ { ts = substr($1, 2, length($1) - 2) * 1000; if (ts >= t0 - 1000) { if (last && ts - last > max) max = ts - last; last = ts } } END { printf "%d", max }' "$plog")
	log "failover P -> Q: longest ping6 gap ${gap} ms; path on Q ${t_switch} ms after the stop"
	SUMMARY+=("failover P -> Q (HB symmetric NAT): ping6 gap ${gap} ms, path through Q after ${t_switch} ms, 256 MiB intact")
	[ "${gap:-99999}" -lt 5000 ] || { fail "traffic stopped for ${gap} ms (want < 5000)"; return 1; }
}

cache_count() { status_json "$1" | jq -r '.peer_cache.count // 0'; }
cache_has() { [ "$(cache_count "$1")" -ge "$2" ]; }

scen_g() {
	[ -n "${PID[ha]:-}" ] && [ -n "${PID[hb]:-}" ] && [ -n "${PID[q]:-}" ] || { fail "needs f's nodes (HA, HB, Q) running"; return 1; }
	[ -z "${PID[p]:-}" ] || node_down p
	# HB and Q at least (P was up only briefly after HA started).
	poll 30 cache_has ha 2 || { fail "HA cached $(cache_count ha) peers, want Q and HB: $(status_json ha | jq -c .peer_cache)"; return 1; }
	log "HA's peer cache: $(status_json ha | jq -c '.peer_cache | {path, count}')"
	node_down ha
	[ -s "$KT_WORK/ha.key.peers" ] || { fail "no peer cache beside HA's key after it stopped"; return 1; }
	local t0 n reached=0
	t0=$(now_ms)
	NO_P=1 node_up ha
	for n in hb q; do
		# One ping6 at a time: the first may be answered with Destination
		# Unreachable while HA has no peer to resolve through.
		if poll 30 nsx ha ping -6 -n -q -c 1 -W 1 "${ADDR[$n]}"; then
			reached=$((reached + 1))
			log "HA reaches $n by SmartAddr $(($(now_ms) - t0)) ms after its restart; path $(path ha "$n")"
		else
			log "HA does not reach $n within 30 s of its restart"
		fi
	done
	local ms=$(($(now_ms) - t0))
	log "HA restarted without its bootstrap: reached $reached of 2 cached peers by SmartAddr in ${ms} ms; $(status_json ha | jq -c '.peer_cache | {count, loaded, rejoins, rejoined}')"
	SUMMARY+=("rejoin from the peer cache, bootstrap down: $reached of 2 earlier peers reached by SmartAddr in ${ms} ms")
	[ "$reached" = 2 ] || { fail "HA reached $reached of 2 earlier peers after a restart without its bootstrap"; return 1; }
}

RESULTS=() FAILED=0
# run NAME FUNCTION: run one scenario; on failure print the tails of HA's
# and HB's logs, and go on with the next one.
run() {
	local name=$1 t0=$SECONDS
	# ONLY="a c": run just those scenarios (a debugging aid).
	if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" ${name%%:*} "* ]]; then
		return 0
	fi
	log "=== scenario $name"
	FAIL_MSG=""
	if "$2"; then
		RESULTS+=("PASS  $name ($((SECONDS - t0)) s)")
	else
		RESULTS+=("FAIL  $name: ${FAIL_MSG:-failed} ($((SECONDS - t0)) s)")
		FAILED=1
		local n
		for n in ha hb; do
			[[ -n ${PID[$n]:-} && -f ${LOGF[$n]} ]] || continue
			echo "--- ${LOGF[$n]##*/} (node $n, last 15 lines)"
			tail -n 15 "${LOGF[$n]}"
		done
	fi
}

# ---------------------------------------------------------------- main

build_topology
check_topology
[ "$TOPO_ONLY" = 0 ] || { log "PASS nat-test topology"; exit 0; }

grep -q -- --relay <<<"$("$KT" up --help 2>&1)" || die "this korium-tun has no --relay flag"
"$KT" ping --help >/dev/null 2>&1 || die "this korium-tun has no ping command"
node_up p
run "nat: HA learns its NAT, observed address and relay from P" scen_nat
run "a: cone/cone, time to first reply and to direct" scen_a
run "c: cone/cone, 256 MiB across the relay -> direct switch" scen_c
run "b: HB behind symmetric NAT, stays relayed" scen_b
set_nat "$RB" cone
run "thr: public <-> public baseline" scen_thr
run "e: cone/cone with 3% loss" scen_e
set_loss 0
run "d: cone/cone direct, then P stops" scen_d
run "f: HB symmetric, relay P stops, traffic moves to Q" scen_f
run "g: HA restarts with its bootstrap down, rejoins from its peer cache" scen_g
set_nat "$RB" cone
node_down ha; node_down hb; node_down q

# ratio KIND: THR[KIND] / THR[public], or n/a.
ratio() {
	if [[ -n ${THR[$1]:-} && -n ${THR[public]:-} ]]; then
		awk -v a="${THR[$1]}" -v b="${THR[public]}" 'BEGIN { printf "%.2f of public", a / b }'
	else
		echo "ratio n/a"
	fi
}
echo
echo "==== NAT lab summary"
for l in "${SUMMARY[@]}"; do echo "$l"; done
echo "throughput, 64 MiB over TCP (Mbit/s): public<->public ${THR[public]:-n/a}, relayed ${THR[relay]:-n/a} ($(ratio relay)), direct via cone NATs ${THR[cone]:-n/a} ($(ratio cone))"
for l in "${RESULTS[@]}"; do echo "$l"; done
if [ "$FAILED" = 1 ]; then
	for f in "$KT_WORK"/*.log; do [ -f "$f" ] && mv "$f" "${f%.log}.out"; done
	log "FAIL nat-test"
	exit 1
fi
log "PASS nat-test"
