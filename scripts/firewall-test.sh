#!/usr/bin/env bash
# The inbound firewall with real kernel TUNs: three namespaces A, B, C on
# one bridge, `korium-tun up` in each (default: --inbound-default deny).
#   1. A runs --allow '<B> tcp/8080': B's TCP to A:8080 works, C's does not,
#      and A's status shows the drop with C's identity and port 8080; ping6
#      works among all three; A's own TCP to C (whose --allow admits A on
#      tcp/9090) carries data both ways (the replies pass A's firewall).
#   2. SIGHUP: A restarts with the rule in its config file. While B has a
#      flow open to A:8080, a reload that keeps B's rule and adds one for C
#      drops nothing (B's flow carries on, C gets in); a reload that removes
#      B's rule drops B's open flow (logged, counted) and B's new
#      connections.
# Removes everything it made, also on failure.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
need_root
for t in iperf3 python3 timeout; do command -v $t >/dev/null || die "$t is missing"; done
build

POW=8
HUB=kf$$hub
hub "$HUB"
declare -A NS IP ID ADDR
i=0
for n in a b c; do
	i=$((i + 1))
	NS[$n]=kf$$$n IP[$n]=198.18.$i.1
	mkns "${NS[$n]}"
	hub_port "$HUB" "p$n" "${NS[$n]}" "kf$$v$n" "${IP[$n]}/16"
	"$KT" keygen --key "$KT_WORK/$n.key" --pow-bits $POW >/dev/null
	"$KT" id --key "$KT_WORK/$n.key" --json >"$KT_WORK/$n.id"
	ID[$n]=$(json_get "$KT_WORK/$n.id" identity) ADDR[$n]=$(json_get "$KT_WORK/$n.id" address)
	log "$n = ${ID[$n]} (${ADDR[$n]})"
done
in_ns() { local n=$1; shift; ip netns exec "${NS[$n]}" "$@"; }

# start_node N ARGS...: korium-tun up in N's namespace; its PID in PID_N.
start_node() {
	local n=$1; shift
	start_bg "$KT_WORK/$n.log" ip netns exec "${NS[$n]}" "$KT" up --key "$KT_WORK/$n.key" --listen "${IP[$n]}:7400" \
		--tun kf0 --pow-bits $POW --control "$KT_WORK/$n.sock" --log-level debug "$@"
	printf -v "PID_${n^^}" %s "$BG_PID"
	wait_until 20 "node $n" "$KT" status --control "$KT_WORK/$n.sock"
}
ctl() { "$KT" status --control "$KT_WORK/$1.sock" --json; }

# connects FROM TO PORT: does a TCP connection FROM -> TO:PORT open within 3 s?
connects() { in_ns "$1" timeout 3 bash -c "exec 3<>/dev/tcp/${ADDR[$2]}/$3" 2>/dev/null; }

# serve N PORT: an iperf3 server on N's SmartAddr; its PID in SERVER_PID.
serve() {
	start_bg "$KT_WORK/iperf-$1-$2.log" ip netns exec "${NS[$1]}" iperf3 -s -p "$2" -B "${ADDR[$1]}"
	SERVER_PID=$BG_PID
	wait_until 10 "iperf3 server on $1:$2" in_ns "$1" ss -Hltn "sport = :$2"
}

# iperf_check FILE: "MIN TAIL" of an iperf3 -J run: MIN, the fewest bytes
# that went either way; TAIL, how many full intervals at its end carried
# nothing one way or the other (a flow the firewall cut stalls for good; a
# loaded machine may stall one for a moment, which is not counted unless it
# lasts to the end). "-1 -1": no result at all.
iperf_check() {
	python3 - "$1" <<'EOF'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
    iv, end = r["intervals"], r["end"]
except Exception:
    print(-1, -1); sys.exit()
moved = [end["sum_received"]["bytes"]]
if "sum_received_bidir_reverse" in end:
    moved.append(end["sum_received_bidir_reverse"]["bytes"])
tail = 0
for i in reversed(iv):
    sums = [i[k] for k in ("sum", "sum_bidir_reverse") if k in i]
    if sums and sums[0].get("seconds", 0) < 0.25:
        continue  # the short last interval
    if any(x.get("bytes", 0) == 0 for x in sums):
        tail += 1
    else:
        break
print(min(moved), tail)
EOF
}

# drop_seen N PEER PORT: N's status lists a recent drop from PEER to PORT.
drop_seen() {
	ctl "$1" | python3 -c '
import json, sys
fw = json.load(sys.stdin).get("firewall") or {}
ok = any(d["peer"] == sys.argv[1] and d["port"] == int(sys.argv[2]) and d["proto"] == "tcp" for d in fw.get("recent_drops") or [])
sys.exit(0 if ok else 1)' "$2" "$3"
}

log "1. A admits B on tcp/8080; C admits A on tcp/9090"
start_node b --bootstrap "${ID[a]}@${IP[a]}:7400"
start_node c --bootstrap "${ID[a]}@${IP[a]}:7400" --allow "${ID[a]} tcp/9090"
start_node a --allow "${ID[b]} tcp/8080"
grep -q "^firewall: inbound default deny, 1 rules" <<<"$("$KT" status --control "$KT_WORK/a.sock")" || die "A's status shows no firewall"

log "ping6 among all three"
for f in a b c; do
	for t in a b c; do
		[ "$f" = "$t" ] && continue
		wait_until 30 "ping6 $f -> $t" in_ns "$f" ping -6 -c 1 -W 1 "${ADDR[$t]}"
	done
done
in_ns b ping -6 -c 5 -i 0.2 -W 2 "${ADDR[a]}" >/dev/null || die "ping6 b -> a lost packets"
in_ns c ping -6 -c 5 -i 0.2 -W 2 "${ADDR[a]}" >/dev/null || die "ping6 c -> a lost packets"

serve a 8080
SERVER_A=$SERVER_PID
log "B -> A:8080 (admitted)"
connects b a 8080 || die "B's TCP to A:8080 did not connect"
in_ns b iperf3 -c "${ADDR[a]}" -p 8080 -t 2 -i 0.5 -J >"$KT_WORK/b-a.json" || die "B's iperf3 to A:8080 failed"
read -r min tail < <(iperf_check "$KT_WORK/b-a.json")
[ "$min" -gt $((1 << 20)) ] && [ "$tail" = 0 ] || die "B's transfer to A:8080: $min bytes, stalled at the end for $tail intervals"
log "C -> A:8080 (no rule)"
if connects c a 8080; then die "C's TCP to A:8080 connected through A's firewall"; fi
wait_until 5 "A's status showing C's drop on tcp/8080" drop_seen a "${ID[c]}" 8080
"$KT" status --control "$KT_WORK/a.sock" | sed -n '/^firewall:/,$p'
grep -q "${ID[c]}  tcp    8080  no_rule" <<<"$("$KT" status --control "$KT_WORK/a.sock")" || die "A's text status lacks C's drop"
if connects b a 22; then die "B's TCP to A:22 connected"; fi

log "A -> C:9090 (A's own flow, data both ways)"
serve c 9090
in_ns a iperf3 -c "${ADDR[c]}" -p 9090 -t 2 -i 0.5 --bidir -J >"$KT_WORK/a-c.json" || die "A's iperf3 --bidir to C:9090 failed"
read -r min tail < <(iperf_check "$KT_WORK/a-c.json")
[ "$min" -gt $((1 << 20)) ] && [ "$tail" = 0 ] || die "A's bidirectional transfer with C: $min bytes the lesser way, stalled at the end for $tail intervals"
mbit=$(python3 -c 'import json,sys; e=json.load(open(sys.argv[1]))["end"]; print(int(e["sum_received"]["bits_per_second"]/1e6), int(e["sum_received_bidir_reverse"]["bits_per_second"]/1e6))' "$KT_WORK/a-c.json")
log "A -> C and C -> A on A's connection: ${mbit% *} and ${mbit#* } Mbit/s"
log "B -> C:9090 (C admits only A)"
if connects b c 9090; then die "B's TCP to C:9090 connected"; fi
drops_a=$(ctl a | python3 -c 'import json,sys; print(json.load(sys.stdin)["firewall"]["dropped"]["no_rule"])')
log "part 1 passed: A dropped $drops_a packets with no_rule"

log "2. SIGHUP: A restarts with its rules in a config file"
stop_pid "$SERVER_A"
stop_pid "$PID_A"
cat >"$KT_WORK/a.yaml" <<EOF
inbound_default: deny
allow:
  - "${ID[b]} tcp/8080"
EOF
start_node a --config "$KT_WORK/a.yaml"
serve a 8080
wait_until 30 "ping6 b -> a after A's restart" in_ns b ping -6 -c 1 -W 1 "${ADDR[a]}"
wait_until 30 "B's TCP to A:8080 after A's restart" connects b a 8080
if connects c a 9000; then die "C reached A:9000 before its rule"; fi

log "reload keeping B's rule and adding C tcp/9000, while B's flow runs"
serve a 9000
start_bg "$KT_WORK/b-a-long.log" ip netns exec "${NS[b]}" iperf3 -c "${ADDR[a]}" -p 8080 -t 6 -i 0.5 -J --logfile "$KT_WORK/b-a-long.json"
PID_IPERF=$BG_PID
sleep 2 # B's flow is under way (the check below is on its intervals)
cat >"$KT_WORK/a.yaml" <<EOF
inbound_default: deny
allow:
  - "${ID[b]} tcp/8080"
  - "${ID[c]} tcp/9000"
EOF
kill -HUP "$PID_A"
wait_until 10 "A's reload log line" grep -q 'msg="firewall reloaded" rules=2 inbound_default=deny flows_no_longer_allowed=0' "$KT_WORK/a.log"
wait "$PID_IPERF" || die "B's iperf3 to A:8080 failed across a reload that kept its rule"
read -r min tail < <(iperf_check "$KT_WORK/b-a-long.json")
[ "$tail" = 0 ] || die "B's flow stalled after a reload that kept its rule ($tail empty intervals at its end)"
connects c a 9000 || die "C's TCP to A:9000 did not connect after its rule was added"
log "B's flow carried on through the reload; C is in"

log "reload removing B's rule while B's flow runs"
start_bg "$KT_WORK/b-a-cut.log" ip netns exec "${NS[b]}" iperf3 -c "${ADDR[a]}" -p 8080 -t 5 -i 0.5 -J --logfile "$KT_WORK/b-a-cut.json"
PID_IPERF=$BG_PID
sleep 2
cat >"$KT_WORK/a.yaml" <<EOF
inbound_default: deny
allow:
  - "${ID[c]} tcp/9000"
EOF
kill -HUP "$PID_A"
wait_until 10 "A's second reload log line" grep -q 'msg="firewall reloaded" rules=1 inbound_default=deny flows_no_longer_allowed=[1-9]' "$KT_WORK/a.log"
grep 'msg="firewall reloaded"' "$KT_WORK/a.log" | sed 's/^/  /'
rc=0
for _ in $(seq 150); do kill -0 "$PID_IPERF" 2>/dev/null || break; sleep 0.1; done
kill -TERM "$PID_IPERF" 2>/dev/null || true
wait "$PID_IPERF" || rc=$?
read -r min tail < <(iperf_check "$KT_WORK/b-a-cut.json")
[ "$rc" != 0 ] || [ "$tail" != 0 ] || die "B's flow went on after its rule was removed (iperf3 rc $rc, $tail empty intervals at its end)"
log "B's flow was cut (iperf3 rc $rc, $tail empty intervals at its end)"
if connects b a 8080; then die "B's new TCP to A:8080 connected after its rule was removed"; fi
wait_until 5 "A's status showing B's drop on tcp/8080" drop_seen a "${ID[b]}" 8080
in_ns b ping -6 -c 3 -i 0.2 -W 2 "${ADDR[a]}" >/dev/null || die "ping6 b -> a lost packets after the reloads"

log "a bad rule in the file is refused and the rules in force stay"
printf 'allow:\n  - "%s tcp/90000"\n' "${ID[c]}" >"$KT_WORK/a.yaml"
kill -HUP "$PID_A"
wait_until 10 "A's refusal of the bad file" grep -q 'config not reloaded.*a.yaml:[0-9]*: allow: bad firewall rule' "$KT_WORK/a.log"
connects c a 9000 || die "C's rule was lost with the bad reload"

kill -0 "$PID_A" && kill -0 "$PID_B" && kill -0 "$PID_C" || die "a node died"
log "PASS firewall-test"
