#!/usr/bin/env bash
# bench-throughput.sh: TCP throughput and idle RTT between two network
# namespaces over (a) the raw veth, (b) a wireguard-go pair (cmd/wgbench) and
# (c) the korium-tun overlay, measured in interleaved rounds so that the
# ratios within one run stay meaningful on a busy machine. Besides Gbit/s and
# RTT it reports CPU per bit: the CPU time (user + system) both daemons of a
# tunnel spent during an iperf3 run over the bits the receiving TUN took in.
#
# Needs root, iproute2, iperf3, iputils ping, go (unless binaries are given).
# Everything it creates (namespaces kbench-<pid>-a/-b, their veth and TUNs,
# processes, a temp dir) is removed on exit, also on failure or Ctrl-C.
#
# Environment:
#   KORIUM_BIN       korium-tun binary to use (default: build ./cmd/korium-tun
#                    if that directory exists, else skip the overlay mode)
#   WGBENCH_BIN      wgbench binary to use (default: build ./cmd/wgbench)
#   KORIUM_BASE_BIN  a second korium-tun binary for mode "base" (another
#                    build measured in the same rounds: before/after ratios)
#   KORIUM_POW_BITS  proof-of-work bits for overlay keys (default 8)
#   RULES            as --rules N
#   KORIUM_PROFILE_DIR  write each overlay daemon's CPU profile to
#                    DIR/MODE-SIDE.pprof (KORIUM_TUN_CPUPROFILE)

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
  --modes LIST     comma-separated subset of raw,wg,overlay,base (default
                   raw,wg,overlay; base is KORIUM_BASE_BIN's overlay)
  --underlay 4|6   underlay family the tunnels run over (default 4)
  --pow-bits N     proof-of-work bits for overlay keys (default $KORIUM_POW_BITS or 8)
  --ready-timeout S  seconds to wait for a tunnel to pass pings (default 30)
  --rules N        also measure mode "overlayfw": a third korium-tun pair whose
                   firewalls hold N --allow rules (default deny; the one rule
                   that admits iperf3 comes last), in the same rounds, with
                   the ratios overlayfw/overlay and overlayfw/wg (default
                   $RULES or 0: skip). The overlay pair runs --inbound-default
                   allow (no rules, flows still tracked).
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
	[[ $m == raw || $m == wg || $m == overlay || $m == base ]] || die "unknown mode '$m' (raw, wg, overlay, base)"
done
if ((RULES > 0)); then
	((RULES <= 10000)) || die "--rules must be at most 10000 (the firewall's limit)"
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
declare -A DAEMONS TUNDEV # per mode: the PIDs of its two daemons, b's TUN
ALL_MODES=(raw wg overlay base)
((RULES > 0)) && ALL_MODES+=(overlayfw)
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
KORIUM_BASE=
if has_mode base; then
	if [[ -n ${KORIUM_BASE_BIN:-} && -x $KORIUM_BASE_BIN ]]; then
		KORIUM_BASE=$KORIUM_BASE_BIN
	else
		STATUS[base]=skipped REASON[base]="mode base needs KORIUM_BASE_BIN, an executable korium-tun"
		log "SKIPPING base mode: ${REASON[base]}"
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
		TARGET[wg]=$WG_B DAEMONS[wg]=$WG_PIDS TUNDEV[wg]=kbwg0
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

overlay_setup() { # overlay_setup MODE BIN PORT TUN
	local mode=$1 bin=$2 port=$3 tun=$4 side ns
	for side in a b; do
		ns=$NS_A
		[[ $side == b ]] && ns=$NS_B
		timeout 300 "$bin" keygen --key "$TMP/$mode-$side.key" --pow-bits "$POW_BITS" \
			>"$TMP/$mode-keygen-$side.log" 2>&1 || {
			tail_log "$mode-keygen-$side"
			REASON[$mode]="korium-tun keygen failed"
			return 1
		}
		"$bin" id --key "$TMP/$mode-$side.key" --json >"$TMP/$mode-id-$side.json" 2>"$TMP/$mode-id-$side.log" || {
			tail_log "$mode-id-$side"
			REASON[$mode]="korium-tun id failed"
			return 1
		}
	done
	local id_b addr_b fw=()
	id_b=$(json_field identity "$TMP/$mode-id-b.json")
	addr_b=$(json_field address "$TMP/$mode-id-b.json")
	[[ -n $id_b && $addr_b == fd00:c0f1:* ]] || {
		REASON[$mode]="cannot parse 'korium-tun id --json' output: $(head -c 200 "$TMP/$mode-id-b.json")"
		return 1
	}
	# The firewall: none for a base build that predates it; the overlay pair
	# lets every flow in (flows still tracked); overlayfw holds RULES rules,
	# RULES-1 for ports nobody uses and last the one for iperf3, so every
	# packet of the measured flow is judged against all of them.
	if [[ $mode == overlayfw ]]; then
		local i
		{
			echo "inbound_default: deny"
			echo "allow:"
			for ((i = 1; i < RULES; i++)); do echo "  - \"* tcp/$((10000 + 2 * i))\""; done
			echo "  - \"$(json_field identity "$TMP/$mode-id-a.json") tcp/5201\""
		} >"$TMP/fw-rules.yaml"
		fw=(--config "$TMP/fw-rules.yaml")
	elif grep -q -- --inbound-default <<<"$("$bin" up --help 2>&1)"; then # not a pipe: SIGPIPE under pipefail
		fw=(--inbound-default allow)
	fi
	local prof_a=() prof_b=()
	if [[ -n ${KORIUM_PROFILE_DIR:-} ]]; then
		prof_a=(env "KORIUM_TUN_CPUPROFILE=$KORIUM_PROFILE_DIR/$mode-a.pprof")
		prof_b=(env "KORIUM_TUN_CPUPROFILE=$KORIUM_PROFILE_DIR/$mode-b.pprof")
	fi
	log "starting korium-tun pair ($mode, $bin) over IPv$UNDERLAY underlay (b = $addr_b)"
	# b is the first node; a joins through it.
	start "$mode-b" "$NS_B" "${prof_b[@]}" "$bin" up --key "$TMP/$mode-b.key" --listen "$(hostport "$UB" "$port")" \
		--tun "$tun" --pow-bits "$POW_BITS" --control "$TMP/$mode-b.ctl" "${fw[@]}"
	local pids=$STARTED
	ov_listening() { in_b ss -Hlun "sport = :$port" | grep -q .; }
	wait_until "$READY_TIMEOUT" "korium-tun b listening" "$pids" ov_listening || {
		tail_log "$mode-b"
		REASON[$mode]="korium-tun b did not listen on UDP $port"
		return 1
	}
	start "$mode-a" "$NS_A" "${prof_a[@]}" "$bin" up --key "$TMP/$mode-a.key" --listen "$(hostport "$UA" "$port")" \
		--bootstrap "$id_b@$(hostport "$UB" "$port")" --tun "$tun" --pow-bits "$POW_BITS" --control "$TMP/$mode-a.ctl" "${fw[@]}"
	pids="$pids $STARTED"
	# Each node's TUN takes the whole overlay prefix; with two overlay
	# modes the peers' own addresses must go to their own pair's TUNs.
	local addr_a
	addr_a=$(json_field address "$TMP/$mode-id-a.json")
	tun_up() { in_a ip link show "$tun"; }
	wait_until "$READY_TIMEOUT" "korium-tun a's TUN" "$pids" tun_up &&
		in_a ip -6 route add "$addr_b/128" dev "$tun" &&
		in_b ip -6 route add "$addr_a/128" dev "$tun" || {
		tail_log "$mode-a"
		REASON[$mode]="korium-tun a did not make its TUN $tun"
		return 1
	}
	wait_until "$READY_TIMEOUT" "korium-tun overlay" "$pids" ping_ok 6 "$addr_b" || {
		tail_log "$mode-a"
		tail_log "$mode-b"
		REASON[$mode]="overlay did not pass pings to $addr_b within ${READY_TIMEOUT}s"
		return 1
	}
	if [[ $mode == overlayfw ]] && ! grep -q "inbound default deny, $RULES rules" <<<"$("$bin" status --control "$TMP/$mode-b.ctl")"; then
		REASON[$mode]="b's status does not show $RULES firewall rules"
		return 1
	fi
	TARGET[$mode]=$addr_b DAEMONS[$mode]=$pids TUNDEV[$mode]=$tun
}
if [[ ${STATUS[overlay]} == pending ]]; then
	if overlay_setup overlay "$KORIUM" 7400 kbov0; then STATUS[overlay]=ok; else STATUS[overlay]=failed; fi
fi
if [[ ${STATUS[base]} == pending ]]; then
	if overlay_setup base "$KORIUM_BASE" 7401 kbov1; then STATUS[base]=ok; else STATUS[base]=failed; fi
fi
if [[ ${STATUS[overlayfw]:-} == pending ]]; then
	if overlay_setup overlayfw "$KORIUM" 7402 kbov2; then STATUS[overlayfw]=ok; else STATUS[overlayfw]=failed; fi
fi

# ---------------------------------------------------------------- measure
ACTIVE=()
for m in "${ALL_MODES[@]}"; do
	has_mode "$m" || continue
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

# cpu_ticks PIDS: user + system clock ticks the processes have used.
cpu_ticks() {
	local pid t=0 v
	for pid in $1; do
		v=$(sed 's/.*) //' "/proc/$pid/stat" | awk '{ print $12 + $13 }') || return 1
		t=$((t + v))
	done
	echo "$t"
}
CLK_TCK=$(getconf CLK_TCK)
# rx_bytes MODE: bytes b's end of the tunnel took in (its TUN, or the veth).
rx_bytes() {
	local dev=${TUNDEV[$1]:-$VETH_B}
	in_b cat "/sys/class/net/$dev/statistics/rx_bytes"
}

# udp_drops: datagrams the kernel dropped for a full socket buffer in both
# namespaces (Udp RcvbufErrors): a tunnel's reader that falls behind.
udp_drops() {
	local ns t=0 v
	for ns in "$NS_A" "$NS_B"; do
		v=$(ip netns exec "$ns" awk '$1 == "Udp:" { if (!h) { for (i = 2; i <= NF; i++) if ($i == "RcvbufErrors") c = i; h = 1 } else print $c }' /proc/net/snmp)
		t=$((t + ${v:-0}))
	done
	echo "$t"
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
		local c0 c1 b0 b1 d0 cpu=
		c0=$(cpu_ticks "${DAEMONS[$m]:-}") b0=$(rx_bytes "$m") d0=$(udp_drops)
		if run_measure "$f.p$p.$r" timeout $((TIME + 20)) ip netns exec "$NS_A" \
			iperf3 -c "$t" -p 5201 -t "$TIME" -O 1 -P "$p" -f m --connect-timeout 3000 &&
			g=$(iperf_gbps "$f.p$p.$r"); then
			c1=$(cpu_ticks "${DAEMONS[$m]:-}") b1=$(rx_bytes "$m")
			echo "$g" >>"$f.$key"
			echo $(($(udp_drops) - d0)) >>"$f.drops"
			if [[ -n ${DAEMONS[$m]:-} ]] && ((b1 > b0)); then
				# CPU seconds of both daemons per Gbit b took in
				cpu=$(awk -v c=$((c1 - c0)) -v hz="$CLK_TCK" -v b=$((b1 - b0)) 'BEGIN { printf "%.4f\n", c / hz / (b * 8 / 1e9) }')
				echo "$cpu" >>"$f.cpu$key"
			fi
			log "  round $r  $m  TCP x$p: $g Gbit/s${cpu:+, $cpu CPU s/Gbit}"
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

# What each overlay pair's daemons counted over all runs (a sends, b
# receives the iperf3 data): where throughput went that CPU does not show.
json_num() { # json_num KEY FILE: the first number field KEY in FILE, summed over all occurrences
	grep -o "\"$1\": *[0-9]*" "$2" | awk -F: '{ s += $2 } END { printf "%.0f\n", s }'
}
json_drop() { # json_drop KEY FILE: the node's drop counter KEY (its "drops" map, not the per-peer field of the same name)
	tr -d '\n' <"$2" | grep -o '"drops": *{[^}]*}' | grep -o "\"$1\": *[0-9]*" | awk -F: '{ s += $2 } END { printf "%.0f\n", s }'
}
DIAG=()
for m in overlay base overlayfw; do
	[[ ${STATUS[$m]:-} == ok ]] || continue
	bin=$KORIUM
	[[ $m == base ]] && bin=$KORIUM_BASE
	"$bin" status --control "$TMP/$m-a.ctl" --json >"$TMP/$m-a.status.json" 2>/dev/null &&
		"$bin" status --control "$TMP/$m-b.ctl" --json >"$TMP/$m-b.status.json" 2>/dev/null || continue
	a=$TMP/$m-a.status.json b=$TMP/$m-b.status.json
	DIAG+=("$(printf '%-8s  a: QUIC lost %s, send-queue drops %s, UDP writes %s for %s packets;  b: GRO reads %s with %s segments, QUIC packets in %s' "$m" \
		"$(json_num quic_packets_lost "$a")" "$(json_drop tx_queue_dropped "$a")" "$(json_num tx_calls "$a")" \
		"$(json_num tx_packets "$a")" "$(json_num rx_gro_reads "$b")" "$(json_num rx_gro_segments "$b")" "$(json_num rx_quic "$b")")")
	# a's device reader (datapath/backpressure.go): waits for room in a full
	# send queue, and why it dropped instead; packets that skipped a hand-off.
	DIAG+=("$(printf '%-8s  a: queue waits %s (%s timed out, %s ms in all), drops stalled %s, over budget %s; straight sends %s, b: straight writes %s' "" \
		"$(json_num tx_queue_waits "$a")" "$(json_num tx_queue_wait_timeouts "$a")" "$(($(json_num tx_queue_wait_ns "$a") / 1000000))" \
		"$(json_num tx_queue_stalled "$a")" "$(json_num tx_queue_over_budget "$a")" "$(json_num tx_direct "$a")" "$(json_num rx_direct "$b")")")
done

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

declare -A T1 TP RMED RAVG C1 CP
for m in "${ALL_MODES[@]}"; do
	f="$TMP/res/$m"
	T1[$m]=$(median "$f.tcp1")
	TP[$m]=$(median "$f.tcpP")
	C1[$m]=$(median "$f.cputcp1")
	CP[$m]=$(median "$f.cputcpP")
	RMED[$m]=$(median "$f.rtt")
	RAVG[$m]=$(mean "$f.rtt")
	if [[ ${STATUS[$m]} == ok && -s $f.failures ]]; then STATUS[$m]=partial; fi
done

echo
echo "korium-tun throughput/latency benchmark  ($(date -u +%FT%TZ), $(nproc) cpus, kernel $(uname -r))"
echo "rounds=$ROUNDS interleaved, iperf3 -t $TIME -O 1, ping -c $PINGS -i 0.05, underlay IPv$UNDERLAY, load $LOAD_START -> $LOAD_END"
echo "CPU = CPU seconds (user + system) of both daemons per Gbit the receiving TUN took in;"
echo "UDP drops = datagrams dropped on full socket buffers in both namespaces, over all runs"
echo
PCOL="x$PARALLEL Gbit/s" PCPU="CPU x$PARALLEL"
((PARALLEL > 1)) || PCOL="-" PCPU="-"
printf '%-8s  %-8s  %10s  %10s  %8s  %8s  %10s  %10s  %9s  %s\n' mode status "x1 Gbit/s" "$PCOL" "CPU x1" "$PCPU" \
	"RTT med ms" "RTT avg ms" "UDP drops" "x1 per round"
for m in "${ALL_MODES[@]}"; do
	[[ ($m == base || $m == overlayfw) && ${STATUS[$m]} == skipped ]] && continue
	if [[ ${STATUS[$m]} == skipped || ${STATUS[$m]} == failed ]]; then
		printf '%-8s  %-8s  %s\n' "$m" "${STATUS[$m]}" "${REASON[$m]:-}"
		continue
	fi
	printf '%-8s  %-8s  %10s  %10s  %8s  %8s  %10s  %10s  %9s  %s\n' "$m" "${STATUS[$m]}" "$(or_dash "${T1[$m]}")" \
		"$(or_dash "${TP[$m]}")" "$(or_dash "${C1[$m]}")" "$(or_dash "${CP[$m]}")" \
		"$(or_dash "${RMED[$m]}")" "$(or_dash "${RAVG[$m]}")" "$(or_dash "$(sum "$TMP/res/$m.drops")")" "$(list "$TMP/res/$m.tcp1")"
done
echo
# ratio columns: A/B for each pair below; rows: the figures
PAIRS=("overlay wg" "overlay raw" "wg raw")
[[ ${STATUS[base]} != skipped ]] && PAIRS+=("overlay base" "base wg")
[[ ${STATUS[overlayfw]:-skipped} != skipped ]] && PAIRS+=("overlayfw overlay" "overlayfw wg")
row() { # row LABEL ARRAY
	local label=$1 pr
	local -n arr=$2
	printf '%-22s' "$label"
	for pr in "${PAIRS[@]}"; do
		set -- $pr
		printf '  %12s' "$(or_dash "$(ratio "${arr[$1]}" "${arr[$2]}")")"
	done
	echo
}
printf '%-22s' ratio
for pr in "${PAIRS[@]}"; do printf '  %12s' "${pr/ //}"; done
echo
row "throughput x1" T1
((PARALLEL > 1)) && row "throughput x$PARALLEL" TP
row "CPU per bit x1" C1
((PARALLEL > 1)) && row "CPU per bit x$PARALLEL" CP
row "RTT median" RMED
if ((${#DIAG[@]} > 0)); then
	echo
	printf '%s\n' "${DIAG[@]}"
fi

# ratio_json ARRAY: the pairs' ratios as a JSON object
ratio_json() {
	local -n arr=$1
	local pr sep=""
	printf '{'
	for pr in "${PAIRS[@]}"; do
		set -- $pr
		printf '%s"%s_%s": %s' "$sep" "$1" "$2" "$(or_null "$(ratio "${arr[$1]}" "${arr[$2]}")")"
		sep=", "
	done
	printf '}'
}

if [[ -n $JSON_OUT ]]; then
	{
		echo "{"
		echo "  \"version\": 2,"
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
			printf '      "cpu_s_per_gbit": {"tcp1": %s, "tcpP": %s, "tcp1_rounds": [%s], "tcpP_rounds": [%s]},\n' \
				"$(or_null "${C1[$m]}")" "$(or_null "${CP[$m]}")" "$(list "$f.cputcp1")" "$(list "$f.cputcpP")"
			printf '      "rtt_ms": {"median": %s, "avg": %s, "round_avgs": [%s]}, "ping_lost": %s, "udp_rcvbuf_drops": %s, "failures": %s}' \
				"$(or_null "${RMED[$m]}")" "$(or_null "${RAVG[$m]}")" "$(list "$f.rttavg")" \
				"$(or_null "$(sum "$f.loss")")" "$(or_null "$(sum "$f.drops")")" "$(count_lines "$f.failures")"
			sep=$',\n'
		done
		echo
		echo "  },"
		echo "  \"ratios\": {"
		echo "    \"tcp1\": $(ratio_json T1),"
		echo "    \"tcpP\": $(ratio_json TP),"
		echo "    \"cpu_tcp1\": $(ratio_json C1),"
		echo "    \"cpu_tcpP\": $(ratio_json CP),"
		echo "    \"rtt_median\": $(ratio_json RMED)"
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
