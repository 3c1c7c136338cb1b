#!/usr/bin/env bash
# bench-throughput.sh: TCP throughput and idle RTT between two network
# namespaces over (a) the raw veth, (b) a wireguard-go pair (cmd/wgbench) and
# (c) the korium-tun overlay, measured in interleaved rounds so that the
# ratios within one run stay meaningful on a busy machine.
#
# Needs root, iproute2, iperf3, iputils ping, go (unless binaries are given).
# Everything it creates (namespaces kbench-<pid>-a/-b, their veth and TUNs,
# processes, a temp dir) is removed on exit, also on failure or Ctrl-C.
#
# Environment:
#   KORIUM_BIN       korium-tun binary to use (default: build ./cmd/korium-tun
#                    if that directory exists, else skip the overlay mode)
#   WGBENCH_BIN      wgbench binary to use (default: build ./cmd/wgbench)
#   KORIUM_POW_BITS  proof-of-work bits for overlay keys (default 8)
#   RULES            as --rules N

# SC2317: cleanup runs from a trap and the readiness checks through
# wait_until "$@", which shellcheck 0.9 reports as unreachable.
# shellcheck disable=SC2317
set -euo pipefail

usage() {
	cat <<'EOF'
usage: scripts/bench-throughput.sh [options]
  --rounds N       interleaved rounds (default 3)
  --time S         iperf3 seconds per run (default 5, first second omitted)
  --parallel N     also measure iperf3 -P N (default 4; 0 or 1 = skip)
  --pings N        pings per RTT sample, 50 ms apart (default 20)
  --modes LIST     comma-separated subset of raw,wg,overlay (default all)
  --underlay 4|6   underlay family the tunnels run over (default 4)
  --pow-bits N     proof-of-work bits for overlay keys (default $KORIUM_POW_BITS or 8)
  --rules N        also measure mode "overlayfw": a second korium-tun pair whose
                   firewalls hold N --allow rules (default deny; the one rule
                   that admits iperf3 comes last), interleaved with the others,
                   and report overlayfw/overlay (default $RULES or 0: skip).
                   The plain overlay pair runs --inbound-default allow.
  --ready-timeout S  seconds to wait for a tunnel to pass pings (default 30)
  --json FILE      also write the figures as JSON to FILE
  --keep-logs DIR  copy the daemon logs to DIR before cleanup
  --goapi [ARGS]   instead: the in-process Go API benchmark, korium-tun
                   netstack pair against a wireguard-go tun/netstack pair
                   (no root; scripts/bench-goapi.sh, ARGS go to it)
  -h, --help
EOF
}

ROUNDS=3
TIME=5
PARALLEL=4
PINGS=20
MODES=raw,wg,overlay
UNDERLAY=4
POW_BITS=${KORIUM_POW_BITS:-8}
READY_TIMEOUT=30
RULES=${RULES:-0}
JSON_OUT=
KEEP_LOGS=

die() {
	echo "bench: error: $*" >&2
	exit 1
}
warn() { echo "bench: warning: $*" >&2; }
log() { echo "bench: $*" >&2; }

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

while (($# > 0)); do
	case $1 in
	--rounds) ROUNDS=${2:?}; shift 2 ;;
	--time) TIME=${2:?}; shift 2 ;;
	--parallel) PARALLEL=${2:?}; shift 2 ;;
	--pings) PINGS=${2:?}; shift 2 ;;
	--modes) MODES=${2:?}; shift 2 ;;
	--underlay) UNDERLAY=${2:?}; shift 2 ;;
	--pow-bits) POW_BITS=${2:?}; shift 2 ;;
	--ready-timeout) READY_TIMEOUT=${2:?}; shift 2 ;;
	--rules) RULES=${2:?}; shift 2 ;;
	--json) JSON_OUT=${2:?}; shift 2 ;;
	--keep-logs) KEEP_LOGS=${2:?}; shift 2 ;;
	--goapi) shift; exec "$(dirname "${BASH_SOURCE[0]}")/bench-goapi.sh" "$@" ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; die "unknown option: $1" ;;
	esac
done

for v in ROUNDS TIME PARALLEL PINGS POW_BITS READY_TIMEOUT RULES; do
	is_uint "${!v}" || die "$v must be a non-negative integer, got '${!v}'"
done
((ROUNDS >= 1)) || die "--rounds must be >= 1"
((TIME >= 2)) || die "--time must be >= 2 (the first second is omitted)"
((PINGS >= 1)) || die "--pings must be >= 1"
[[ $UNDERLAY == 4 || $UNDERLAY == 6 ]] || die "--underlay must be 4 or 6"

IFS=, read -r -a MODE_LIST <<<"$MODES"
for m in "${MODE_LIST[@]}"; do
	[[ $m == raw || $m == wg || $m == overlay ]] || die "unknown mode '$m' (raw, wg, overlay)"
done
ALL_MODES=(raw wg overlay)
if ((RULES > 0)); then
	((RULES <= 10000)) || die "--rules must be at most 10000 (the firewall's limit)"
	ALL_MODES+=(overlayfw)
	[[ ,$MODES, == *,overlay,* ]] && MODE_LIST+=(overlayfw)
fi
has_mode() {
	local m
	for m in "${MODE_LIST[@]}"; do [[ $m == "$1" ]] && return 0; done
	return 1
}

((EUID == 0)) || die "must run as root (creates network namespaces)"
for t in ip iperf3 ping awk sort timeout ss; do
	command -v "$t" >/dev/null || die "missing tool: $t"
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# ---------------------------------------------------------------- resources
PFX="kbench-$$"
NS_A="$PFX-a"
NS_B="$PFX-b"
VETH_A="kb$$a" # <= 15 chars: pid has at most 7 digits
VETH_B="kb$$b"
TMP=$(mktemp -d "/tmp/$PFX.XXXXXX")
PIDS=()    # long-running processes we started
CUR_PID=   # the measurement currently running
NS_MADE=() # namespaces we created

# stop_pid PID: SIGTERM, wait up to 5 s, then SIGKILL; reaps it.
stop_pid() {
	local pid=$1 deadline=$((SECONDS + 5))
	kill -TERM "$pid" 2>/dev/null || return 0
	while kill -0 "$pid" 2>/dev/null; do
		if ((SECONDS >= deadline)); then
			kill -KILL "$pid" 2>/dev/null || true
			break
		fi
		sleep 0.05
	done
	wait "$pid" 2>/dev/null || true
}

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	set +e
	[[ -n $CUR_PID ]] && stop_pid "$CUR_PID"
	local i
	for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[i]}"; done
	if [[ -n $KEEP_LOGS ]]; then
		mkdir -p "$KEEP_LOGS" && cp "$TMP"/*.log "$KEEP_LOGS"/ 2>/dev/null
	fi
	local ns
	for ns in "${NS_MADE[@]}"; do ip netns del "$ns" 2>/dev/null; done
	# The veth is created inside the namespaces; this only matters if a
	# failure left one end behind in ours.
	ip link del "$VETH_A" 2>/dev/null
	rm -rf "$TMP"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

in_a() { ip netns exec "$NS_A" "$@"; }
in_b() { ip netns exec "$NS_B" "$@"; }

# start NAME NS CMD...: runs CMD in NS in the background, log in $TMP/NAME.log;
# sets STARTED to its PID (ip netns exec execs, so that is CMD itself).
start() {
	local name=$1 ns=$2
	shift 2
	ip netns exec "$ns" "$@" >"$TMP/$name.log" 2>&1 &
	STARTED=$!
	PIDS+=("$STARTED")
}

# wait_until SECS DESC PIDS CMD...: polls CMD every 100 ms until it succeeds;
# fails after SECS, or at once if one of the space-separated PIDS has exited.
wait_until() {
	local secs=$1 desc=$2 pids=$3 pid
	shift 3
	local deadline=$((SECONDS + secs))
	until "$@" >/dev/null 2>&1; do
		for pid in $pids; do
			if ! kill -0 "$pid" 2>/dev/null; then
				warn "$desc: process $pid exited"
				return 1
			fi
		done
		if ((SECONDS >= deadline)); then
			warn "$desc: not ready after ${secs}s"
			return 1
		fi
		sleep 0.1
	done
}

# run_measure OUT CMD...: runs CMD in the background (so INT/TERM traps fire
# at once) and waits for it; output to OUT.
run_measure() {
	local out=$1
	shift
	"$@" >"$out" 2>&1 &
	CUR_PID=$!
	local rc=0
	wait "$CUR_PID" || rc=$?
	CUR_PID=
	return "$rc"
}

tail_log() { sed 's/^/    | /' "$TMP/$1.log" | tail -n 15 >&2 || true; }

# ---------------------------------------------------------------- binaries
mkdir -p "$TMP/res"
declare -A STATUS REASON TARGET
for m in "${ALL_MODES[@]}"; do
	if has_mode "$m"; then STATUS[$m]=pending; else STATUS[$m]=skipped REASON[$m]="not selected"; fi
done

if has_mode wg; then
	if [[ -n ${WGBENCH_BIN:-} ]]; then
		[[ -x $WGBENCH_BIN ]] || die "WGBENCH_BIN=$WGBENCH_BIN is not executable"
		WGBENCH=$WGBENCH_BIN
	else
		command -v go >/dev/null || die "go is needed to build cmd/wgbench (or set WGBENCH_BIN)"
		log "building cmd/wgbench"
		(cd "$ROOT" && go build -o "$TMP/wgbench" ./cmd/wgbench) || die "building cmd/wgbench failed"
		WGBENCH=$TMP/wgbench
	fi
fi

KORIUM=
if has_mode overlay; then
	if [[ -n ${KORIUM_BIN:-} ]]; then
		[[ -x $KORIUM_BIN ]] || die "KORIUM_BIN=$KORIUM_BIN is not executable"
		KORIUM=$KORIUM_BIN
	elif [[ -d $ROOT/cmd/korium-tun ]]; then
		log "building cmd/korium-tun"
		if (cd "$ROOT" && go build -o "$TMP/korium-tun" ./cmd/korium-tun) >"$TMP/korium-build.log" 2>&1; then
			KORIUM=$TMP/korium-tun
		else
			tail_log korium-build
			STATUS[overlay]=skipped REASON[overlay]="building ./cmd/korium-tun failed"
		fi
	else
		STATUS[overlay]=skipped REASON[overlay]="no korium-tun binary (set KORIUM_BIN or add ./cmd/korium-tun)"
	fi
	[[ ${STATUS[overlay]} == skipped ]] && log "SKIPPING overlay mode: ${REASON[overlay]}"
	if ((RULES > 0)) && [[ ${STATUS[overlay]} == skipped ]]; then
		STATUS[overlayfw]=skipped REASON[overlayfw]=${REASON[overlay]}
	fi
fi

# ---------------------------------------------------------------- namespaces
# Underlay: veth with 198.18.1.0/24 and 2001:db8:1::/64. wireguard-go inner
# addresses: 2001:db8:2::/64. All TCP/ping traffic is IPv6, like the overlay's.
A4=198.18.1.1 B4=198.18.1.2
A6=2001:db8:1::1 B6=2001:db8:1::2
WG_A=2001:db8:2::1 WG_B=2001:db8:2::2
if ((UNDERLAY == 4)); then UA=$A4 UB=$B4; else UA=$A6 UB=$B6; fi
hostport() { # hostport ADDR PORT
	if [[ $1 == *:* ]]; then printf '[%s]:%s' "$1" "$2"; else printf '%s:%s' "$1" "$2"; fi
}

log "creating namespaces $NS_A, $NS_B"
ip netns add "$NS_A"
NS_MADE+=("$NS_A")
ip netns add "$NS_B"
NS_MADE+=("$NS_B")
ip link add "$VETH_A" netns "$NS_A" type veth peer name "$VETH_B" netns "$NS_B"
in_a ip link set lo up
in_b ip link set lo up
in_a ip addr add "$A4/24" dev "$VETH_A"
in_b ip addr add "$B4/24" dev "$VETH_B"
in_a ip addr add "$A6/64" dev "$VETH_A" nodad
in_b ip addr add "$B6/64" dev "$VETH_B" nodad
in_a ip link set "$VETH_A" up
in_b ip link set "$VETH_B" up

ping_ok() { in_a ping -"$1" -n -q -c 1 -W 1 "$2"; }
wait_until 10 "veth IPv4" "" ping_ok 4 "$B4" || die "veth does not pass IPv4"
wait_until 10 "veth IPv6" "" ping_ok 6 "$B6" || die "veth does not pass IPv6"

start iperf3-server "$NS_B" iperf3 -s -p 5201
IPERF_PID=$STARTED
iperf_listening() { in_b ss -Hltn 'sport = :5201' | grep -q .; }
wait_until 10 "iperf3 server" "$IPERF_PID" iperf_listening || {
	tail_log iperf3-server
	die "iperf3 server did not start"
}

if [[ ${STATUS[raw]} == pending ]]; then
	TARGET[raw]=$B6
	STATUS[raw]=ok
fi

# ---------------------------------------------------------------- wireguard-go
if [[ ${STATUS[wg]} == pending ]]; then
	read -r WG_PRIV_A WG_PUB_A < <("$WGBENCH" genkey)
	read -r WG_PRIV_B WG_PUB_B < <("$WGBENCH" genkey)
	printf '%s\n' "$WG_PRIV_A" >"$TMP/wg-a.key"
	printf '%s\n' "$WG_PRIV_B" >"$TMP/wg-b.key"
	log "starting wireguard-go pair over IPv$UNDERLAY underlay"
	start wg-a "$NS_A" "$WGBENCH" -private-key-file "$TMP/wg-a.key" -peer-public-key "$WG_PUB_B" \
		-listen-port 51820 -peer-endpoint "$(hostport "$UB" 51820)" -tun kbwg0 -address "$WG_A/64"
	WG_PIDS=$STARTED
	start wg-b "$NS_B" "$WGBENCH" -private-key-file "$TMP/wg-b.key" -peer-public-key "$WG_PUB_A" \
		-listen-port 51820 -peer-endpoint "$(hostport "$UA" 51820)" -tun kbwg0 -address "$WG_B/64"
	WG_PIDS="$WG_PIDS $STARTED"
	if wait_until "$READY_TIMEOUT" "wireguard-go tunnel" "$WG_PIDS" ping_ok 6 "$WG_B"; then
		TARGET[wg]=$WG_B
		STATUS[wg]=ok
	else
		tail_log wg-a
		tail_log wg-b
		STATUS[wg]=failed REASON[wg]="wireguard-go tunnel did not pass pings within ${READY_TIMEOUT}s"
	fi
fi

# ---------------------------------------------------------------- korium-tun
json_field() { # json_field KEY FILE: value of a string field in flat JSON
	sed -n "s/.*\"$1\"[[:space:]]*:[[:space:]]*\"\([^\"]*\)\".*/\1/p" "$2" | head -n 1
}

# overlay_setup MODE PORT TUN: a korium-tun pair for MODE (overlay: no
# rules, --inbound-default allow; overlayfw: RULES rules in a config file).
overlay_setup() {
	local mode=$1 port=$2 tun=$3 side ns
	for side in a b; do
		ns=$NS_A
		[[ $side == b ]] && ns=$NS_B
		timeout 300 "$KORIUM" keygen --key "$TMP/$mode-$side.key" --pow-bits "$POW_BITS" \
			>"$TMP/$mode-keygen-$side.log" 2>&1 || {
			tail_log "$mode-keygen-$side"
			REASON[$mode]="korium-tun keygen failed"
			return 1
		}
		"$KORIUM" id --key "$TMP/$mode-$side.key" --json >"$TMP/$mode-id-$side.json" 2>"$TMP/$mode-id-$side.log" || {
			tail_log "$mode-id-$side"
			REASON[$mode]="korium-tun id failed"
			return 1
		}
	done
	local id_a id_b addr_b fw=(--inbound-default allow)
	id_a=$(json_field identity "$TMP/$mode-id-a.json")
	id_b=$(json_field identity "$TMP/$mode-id-b.json")
	addr_b=$(json_field address "$TMP/$mode-id-b.json")
	[[ -n $id_b && $addr_b == fd00:c0f1:* ]] || {
		REASON[$mode]="cannot parse 'korium-tun id --json' output: $(head -c 200 "$TMP/$mode-id-b.json")"
		return 1
	}
	if [[ $mode == overlayfw ]]; then
		# RULES-1 rules for ports nobody uses, then the one for iperf3:
		# every packet of the measured flow is judged against all of them.
		local i
		{
			echo "inbound_default: deny"
			echo "allow:"
			for ((i = 1; i < RULES; i++)); do echo "  - \"* tcp/$((10000 + 2 * i))\""; done
			echo "  - \"$id_a tcp/5201\""
		} >"$TMP/fw-rules.yaml"
		fw=(--config "$TMP/fw-rules.yaml")
	fi
	log "starting korium-tun pair ($mode) over IPv$UNDERLAY underlay (b = $addr_b)"
	# b is the first node; a joins through it.
	start "$mode-b" "$NS_B" "$KORIUM" up --key "$TMP/$mode-b.key" --listen "$(hostport "$UB" "$port")" \
		--tun "$tun" --pow-bits "$POW_BITS" --control "$TMP/$mode-b.ctl" "${fw[@]}"
	local pids=$STARTED
	ov_listening() { in_b ss -Hlun "sport = :$port" | grep -q .; }
	wait_until "$READY_TIMEOUT" "korium-tun b listening" "$pids" ov_listening || {
		tail_log "$mode-b"
		REASON[$mode]="korium-tun b did not listen on UDP $port"
		return 1
	}
	start "$mode-a" "$NS_A" "$KORIUM" up --key "$TMP/$mode-a.key" --listen "$(hostport "$UA" "$port")" \
		--bootstrap "$id_b@$(hostport "$UB" "$port")" --tun "$tun" --pow-bits "$POW_BITS" --control "$TMP/$mode-a.ctl" "${fw[@]}"
	pids="$pids $STARTED"
	if [[ $mode == overlayfw ]]; then
		# Both pairs' TUNs route fd00:c0f1::/32; a host route sends this
		# pair's traffic (and picks its source address) through its own.
		local addr_a
		addr_a=$(json_field address "$TMP/$mode-id-a.json")
		tun_up() { in_a ip link show "$tun" && in_b ip link show "$tun"; }
		wait_until "$READY_TIMEOUT" "korium-tun $mode TUNs" "$pids" tun_up || {
			REASON[$mode]="the $tun devices did not appear"
			return 1
		}
		in_a ip -6 route replace "$addr_b/128" dev "$tun"
		in_b ip -6 route replace "$addr_a/128" dev "$tun"
	fi
	wait_until "$READY_TIMEOUT" "korium-tun $mode" "$pids" ping_ok 6 "$addr_b" || {
		tail_log "$mode-a"
		tail_log "$mode-b"
		REASON[$mode]="overlay did not pass pings to $addr_b within ${READY_TIMEOUT}s"
		return 1
	}
	if [[ $mode == overlayfw ]] && ! grep -q "inbound default deny, $RULES rules" <<<"$("$KORIUM" status --control "$TMP/$mode-b.ctl")"; then
		REASON[$mode]="b's status does not show $RULES firewall rules"
		return 1
	fi
	TARGET[$mode]=$addr_b
}
if [[ ${STATUS[overlay]} == pending ]]; then
	if overlay_setup overlay 7400 kbov0; then STATUS[overlay]=ok; else STATUS[overlay]=failed; fi
fi
if [[ ${STATUS[overlayfw]:-} == pending ]]; then
	if overlay_setup overlayfw 7401 kbfw0; then STATUS[overlayfw]=ok; else STATUS[overlayfw]=failed; fi
fi

# ---------------------------------------------------------------- measure
ACTIVE=()
for m in "${MODE_LIST[@]}"; do
	if [[ ${STATUS[$m]} == ok ]]; then
		ACTIVE+=("$m")
	else
		warn "mode $m: ${STATUS[$m]}: ${REASON[$m]:-}"
	fi
done
((${#ACTIVE[@]} > 0)) || die "no mode could be set up"

# iperf_gbps FILE: receiver throughput (last "receiver" line, the SUM with -P).
iperf_gbps() {
	awk '/receiver/ { for (i = 2; i <= NF; i++) if ($i == "Mbits/sec") v = $(i-1) }
	     END { if (v == "") exit 1; printf "%.4f\n", v / 1000 }' "$1"
}

FAILURES=0
record_fail() {
	warn "$1"
	FAILURES=$((FAILURES + 1))
	echo "$1" >>"$TMP/res/$2.failures"
}

measure() { # measure MODE ROUND
	local m=$1 r=$2 t=${TARGET[$1]} f="$TMP/res/$1"
	# Idle RTT first, while nothing else runs.
	run_measure "$f.ping.$r" timeout $((PINGS + 10)) ip netns exec "$NS_A" \
		ping -6 -n -c "$PINGS" -i 0.05 -W 1 "$t" || true
	local n
	n=$(grep -c 'time=' "$f.ping.$r" || true)
	if ((n == 0)); then
		record_fail "$m round $r: ping got no replies" "$m"
	else
		((n < PINGS)) && warn "$m round $r: ping lost $((PINGS - n))/$PINGS"
		sed -n 's/.*time=\([0-9.]*\).*/\1/p' "$f.ping.$r" >>"$f.rtt"
		sed -n 's/.*time=\([0-9.]*\).*/\1/p' "$f.ping.$r" | awk '{ s += $1 } END { printf "%.4f\n", s / NR }' >>"$f.rttavg"
		echo "$((PINGS - n))" >>"$f.loss"
	fi
	local p g key
	for p in "${STREAMS[@]}"; do
		key=tcp1
		((p == 1)) || key=tcpP
		if run_measure "$f.p$p.$r" timeout $((TIME + 20)) ip netns exec "$NS_A" \
			iperf3 -c "$t" -p 5201 -t "$TIME" -O 1 -P "$p" -f m --connect-timeout 3000 &&
			g=$(iperf_gbps "$f.p$p.$r"); then
			echo "$g" >>"$f.$key"
			log "  round $r  $m  TCP x$p: $g Gbit/s"
		else
			record_fail "$m round $r: iperf3 -P $p failed: $(tail -n 1 "$f.p$p.$r")" "$m"
		fi
	done
}
STREAMS=(1)
((PARALLEL > 1)) && STREAMS+=("$PARALLEL")

log "measuring ${#ACTIVE[@]} modes (${ACTIVE[*]}), $ROUNDS interleaved rounds, iperf3 -t $TIME -O 1$( ((PARALLEL > 1)) && echo " (x1 and x$PARALLEL)"), $PINGS pings"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
for ((r = 1; r <= ROUNDS; r++)); do
	for m in "${ACTIVE[@]}"; do
		measure "$m" "$r"
	done
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- report
# median FILE / mean FILE / list FILE: of the numbers in FILE, "" if none.
median() {
	[[ -s $1 ]] || return 0
	sort -g "$1" | awk '{ v[NR] = $1 } END { if (NR % 2) printf "%.4f\n", v[(NR + 1) / 2]; else printf "%.4f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
mean() {
	[[ -s $1 ]] || return 0
	awk '{ s += $1 } END { printf "%.4f\n", s / NR }' "$1"
}
sum() {
	[[ -s $1 ]] || return 0
	awk '{ s += $1 } END { print s }' "$1"
}
count_lines() { if [[ -s $1 ]]; then wc -l <"$1"; else echo 0; fi; }
list() {
	[[ -s $1 ]] || return 0
	paste -sd, "$1"
}
ratio() { # ratio A B: A/B, "" if either is missing or B is 0
	[[ -n $1 && -n $2 ]] || return 0
	awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 != 0) printf "%.3f\n", a / b }'
}
or_null() { if [[ -n $1 ]]; then echo "$1"; else echo null; fi; }
or_dash() { if [[ -n $1 ]]; then echo "$1"; else echo -; fi; }
json_str_or_null() { if [[ -n $1 ]]; then json_str "$1"; else echo null; fi; }
json_str() { printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g' | tr -d '\n\t')"; }

declare -A T1 TP RMED RAVG
for m in "${ALL_MODES[@]}"; do
	f="$TMP/res/$m"
	T1[$m]=$(median "$f.tcp1")
	TP[$m]=$(median "$f.tcpP")
	RMED[$m]=$(median "$f.rtt")
	RAVG[$m]=$(mean "$f.rtt")
	if [[ ${STATUS[$m]} == ok && -s $f.failures ]]; then STATUS[$m]=partial; fi
done

echo
echo "korium-tun throughput/latency benchmark  ($(date -u +%FT%TZ), $(nproc) cpus, kernel $(uname -r))"
echo "rounds=$ROUNDS interleaved, iperf3 -t $TIME -O 1, ping -c $PINGS -i 0.05, underlay IPv$UNDERLAY, load $LOAD_START -> $LOAD_END"
echo
PCOL="x$PARALLEL Gbit/s"
((PARALLEL > 1)) || PCOL="-"
printf '%-8s  %-8s  %12s  %12s  %10s  %10s  %s\n' mode status "x1 Gbit/s" "$PCOL" "RTT med ms" "RTT avg ms" "x1 per round"
for m in "${ALL_MODES[@]}"; do
	if [[ ${STATUS[$m]} == skipped || ${STATUS[$m]} == failed ]]; then
		printf '%-8s  %-8s  %s\n' "$m" "${STATUS[$m]}" "${REASON[$m]:-}"
		continue
	fi
	printf '%-8s  %-8s  %12s  %12s  %10s  %10s  %s\n' "$m" "${STATUS[$m]}" "$(or_dash "${T1[$m]}")" \
		"$(or_dash "${TP[$m]}")" "$(or_dash "${RMED[$m]}")" "$(or_dash "${RAVG[$m]}")" "$(list "$TMP/res/$m.tcp1")"
done
echo
printf '%-22s  %10s  %10s  %10s\n' ratio overlay/wg overlay/raw wg/raw
printf '%-22s  %10s  %10s  %10s\n' "throughput x1" "$(or_dash "$(ratio "${T1[overlay]}" "${T1[wg]}")")" \
	"$(or_dash "$(ratio "${T1[overlay]}" "${T1[raw]}")")" "$(or_dash "$(ratio "${T1[wg]}" "${T1[raw]}")")"
if ((PARALLEL > 1)); then
	printf '%-22s  %10s  %10s  %10s\n' "throughput x$PARALLEL" "$(or_dash "$(ratio "${TP[overlay]}" "${TP[wg]}")")" \
		"$(or_dash "$(ratio "${TP[overlay]}" "${TP[raw]}")")" "$(or_dash "$(ratio "${TP[wg]}" "${TP[raw]}")")"
fi
printf '%-22s  %10s  %10s  %10s\n' "RTT median" "$(or_dash "$(ratio "${RMED[overlay]}" "${RMED[wg]}")")" \
	"$(or_dash "$(ratio "${RMED[overlay]}" "${RMED[raw]}")")" "$(or_dash "$(ratio "${RMED[wg]}" "${RMED[raw]}")")"
if ((RULES > 0)); then
	echo
	printf '%-22s  %14s  %12s\n' "with $RULES rules" overlayfw/overlay overlayfw/wg
	printf '%-22s  %14s  %12s\n' "throughput x1" "$(or_dash "$(ratio "${T1[overlayfw]}" "${T1[overlay]}")")" \
		"$(or_dash "$(ratio "${T1[overlayfw]}" "${T1[wg]}")")"
	if ((PARALLEL > 1)); then
		printf '%-22s  %14s  %12s\n' "throughput x$PARALLEL" "$(or_dash "$(ratio "${TP[overlayfw]}" "${TP[overlay]}")")" \
			"$(or_dash "$(ratio "${TP[overlayfw]}" "${TP[wg]}")")"
	fi
	printf '%-22s  %14s  %12s\n' "RTT median" "$(or_dash "$(ratio "${RMED[overlayfw]}" "${RMED[overlay]}")")" \
		"$(or_dash "$(ratio "${RMED[overlayfw]}" "${RMED[wg]}")")"
fi

if [[ -n $JSON_OUT ]]; then
	{
		echo "{"
		echo "  \"version\": 1,"
		echo "  \"time\": \"$(date -u +%FT%TZ)\","
		echo "  \"cpus\": $(nproc),"
		echo "  \"kernel\": $(json_str "$(uname -r)"),"
		echo "  \"loadavg_start\": $(json_str "$LOAD_START"),"
		echo "  \"loadavg_end\": $(json_str "$LOAD_END"),"
		echo "  \"params\": {\"rounds\": $ROUNDS, \"seconds\": $TIME, \"omit_seconds\": 1, \"parallel\": $PARALLEL, \"pings\": $PINGS, \"ping_interval_ms\": 50, \"underlay\": \"ipv$UNDERLAY\"},"
		echo "  \"modes\": {"
		sep=""
		for m in "${ALL_MODES[@]}"; do
			f="$TMP/res/$m"
			printf '%s    "%s": {"status": "%s", "reason": %s,\n' "$sep" "$m" "${STATUS[$m]}" \
				"$(json_str_or_null "${REASON[$m]:-}")"
			printf '      "tcp1_gbps": {"median": %s, "rounds": [%s]},\n' "$(or_null "${T1[$m]}")" "$(list "$f.tcp1")"
			printf '      "tcpP_gbps": {"median": %s, "rounds": [%s]},\n' "$(or_null "${TP[$m]}")" \
				"$(list "$f.tcpP")"
			printf '      "rtt_ms": {"median": %s, "avg": %s, "round_avgs": [%s]}, "ping_lost": %s, "failures": %s}' \
				"$(or_null "${RMED[$m]}")" "$(or_null "${RAVG[$m]}")" "$(list "$f.rttavg")" \
				"$(or_null "$(sum "$f.loss")")" "$(count_lines "$f.failures")"
			sep=$',\n'
		done
		echo
		echo "  },"
		echo "  \"ratios\": {"
		echo "    \"tcp1\": {\"overlay_wg\": $(or_null "$(ratio "${T1[overlay]}" "${T1[wg]}")"), \"overlay_raw\": $(or_null "$(ratio "${T1[overlay]}" "${T1[raw]}")"), \"wg_raw\": $(or_null "$(ratio "${T1[wg]}" "${T1[raw]}")")},"
		echo "    \"tcpP\": {\"overlay_wg\": $(or_null "$(ratio "${TP[overlay]}" "${TP[wg]}")"), \"overlay_raw\": $(or_null "$(ratio "${TP[overlay]}" "${TP[raw]}")"), \"wg_raw\": $(or_null "$(ratio "${TP[wg]}" "${TP[raw]}")")},"
		echo "    \"rtt_median\": {\"overlay_wg\": $(or_null "$(ratio "${RMED[overlay]}" "${RMED[wg]}")"), \"overlay_raw\": $(or_null "$(ratio "${RMED[overlay]}" "${RMED[raw]}")"), \"wg_raw\": $(or_null "$(ratio "${RMED[wg]}" "${RMED[raw]}")")}$( ((RULES > 0)) && echo ,)"
		if ((RULES > 0)); then
			echo "    \"rules\": {\"count\": $RULES, \"tcp1_fw_overlay\": $(or_null "$(ratio "${T1[overlayfw]}" "${T1[overlay]}")"), \"tcpP_fw_overlay\": $(or_null "$(ratio "${TP[overlayfw]}" "${TP[overlay]}")"), \"tcp1_fw_wg\": $(or_null "$(ratio "${T1[overlayfw]}" "${T1[wg]}")"), \"tcpP_fw_wg\": $(or_null "$(ratio "${TP[overlayfw]}" "${TP[wg]}")")}"
		fi
		echo "  }"
		echo "}"
	} >"$TMP/result.json"
	mv "$TMP/result.json" "$JSON_OUT"
	log "wrote $JSON_OUT"
fi

# Exit status: 0 when every selected mode that could run did, 1 when a mode's
# setup or a measurement failed (skipped modes do not count: no binary).
rc=0
for m in "${ALL_MODES[@]}"; do
	if [[ ${STATUS[$m]} == failed ]]; then
		warn "mode $m failed: ${REASON[$m]:-}"
		rc=1
	fi
done
if ((FAILURES > 0)); then
	warn "$FAILURES measurement(s) failed"
	rc=1
fi
exit "$rc"
