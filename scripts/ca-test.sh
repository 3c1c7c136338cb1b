#!/usr/bin/env bash
# The threshold CA with the CLI, in 6 network namespaces with real kernel
# TUNs, every node bootstrapped from the first and run with --trust-domain:
#  - nodes 1-5 run `korium-tun ca dkg` (3 of 5), at staggered times; every
#    one writes the same CA certificate and prints the same CA key;
#  - nodes 1-5 approve node 6 (`ca approve`); node 6 runs `cert request`;
#    the certificate verifies with
#    `openssl verify -CAfile ca.pem leaf.pem` and with go-spiffe's
#    x509svid.Verify (`cert show --ca-cert`), naming node 6's identity;
#  - `status` shows the peers' spiffe_id;
#  - node 2 restarts from its state file (`up --ca-signer`), keeping its
#    approvals (STATE.approvals), and, with
#    nodes 4 and 5 stopped, signs (it is one of the only three left);
#    with node 3 stopped too, the request fails and says why;
#  - a tampered state file and another node's state file are refused.
# Removes everything it made, also on failure.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
need_root
command -v openssl >/dev/null || die "openssl is missing (apt-get install openssl)"
build
N=6 POW=8 TD=mesh.test
HUB=ka$$hub
hub "$HUB"
declare -a IDS PIDS
start_node() { # I [extra up flags...]
	local i=$1 boots=()
	shift
	[ "$i" -gt 1 ] && boots=(--bootstrap "${IDS[1]}@198.18.1.1:7400")
	start_bg "$KT_WORK/n$i.log" ip netns exec "ka$$n$i" "$KT" up --key "$KT_WORK/n$i.key" --listen "198.18.$i.1:7400" \
		--tun korium0 --pow-bits $POW --control "$KT_WORK/n$i.sock" --trust-domain $TD "${boots[@]}" "$@"
	PIDS[i]=$BG_PID
	wait_until 20 "node $i" "$KT" status --control "$KT_WORK/n$i.sock"
}
for i in $(seq 1 $N); do
	ns=ka$$n$i
	mkns "$ns"
	hub_port "$HUB" "p$i" "$ns" "ka$$v$i" "198.18.$i.1/16"
	"$KT" keygen --key "$KT_WORK/n$i.key" --pow-bits $POW >/dev/null
	IDS[i]=$("$KT" id --key "$KT_WORK/n$i.key" --json | sed -n 's/.*"identity": *"\([^"]*\)".*/\1/p')
	start_node "$i"
done
SIGNERS="${IDS[1]},${IDS[2]},${IDS[3]},${IDS[4]},${IDS[5]}"

log "nodes 1-5 run ca dkg (3 of 5), started one after another"
t0=$(date +%s%N)
declare -a DKG
for i in 1 2 3 4 5; do
	start_bg "$KT_WORK/dkg$i.out" "$KT" ca dkg --control "$KT_WORK/n$i.sock" --trust-domain $TD --threshold 3 \
		--signers "$SIGNERS" --state "$KT_WORK/s$i.state" --ca-cert "$KT_WORK/ca$i.pem" --timeout 2m
	DKG[i]=$BG_PID
	sleep 0.$((RANDOM % 9 + 1))
done
for i in 1 2 3 4 5; do wait "${DKG[i]}" || die "ca dkg on node $i failed: $(tail -n 3 "$KT_WORK/dkg$i.out")"; done
dkg_ms=$((($(date +%s%N) - t0) / 1000000))
key=$(sed -n 's/^ca_key //p' "$KT_WORK/dkg1.out")
[ ${#key} = 64 ] || die "no CA key printed: $(cat "$KT_WORK/dkg1.out")"
for i in 2 3 4 5; do
	[ "$(sed -n 's/^ca_key //p' "$KT_WORK/dkg$i.out")" = "$key" ] || die "node $i printed another CA key"
	cmp -s "$KT_WORK/ca1.pem" "$KT_WORK/ca$i.pem" || die "node $i wrote another CA certificate"
	[ "$(stat -c %a "$KT_WORK/s$i.state")" = 600 ] || die "state file of node $i is not mode 0600"
done
log "DKG done in ${dkg_ms} ms (from the first start to the last exit); CA key $key"
grep -h "^elapsed\|^messages" "$KT_WORK/dkg1.out" | sed 's/^/  node 1: /'
openssl x509 -in "$KT_WORK/ca1.pem" -noout -text | grep -q "CA:TRUE" || die "the CA certificate is not CA:TRUE"

log "signers 1-5 approve node 6 (a signer signs only identities it approved)"
for i in 1 2 3 4 5; do
	"$KT" ca approve --control "$KT_WORK/n$i.sock" "${IDS[6]}" --workload web >/dev/null || die "ca approve on node $i failed"
done
[ "$(stat -c %a "$KT_WORK/s1.state.approvals")" = 600 ] || die "the approvals file is not mode 0600"
grep -q "^${IDS[6]} [0-9]* /web$" "$KT_WORK/s1.state.approvals" || die "the approval is not in node 1's approvals file"

log "node 6 requests a certificate"
t0=$(date +%s%N)
"$KT" cert request --control "$KT_WORK/n6.sock" --trust-domain $TD --workload web --out "$KT_WORK/leaf.pem" \
	--ca-cert "$KT_WORK/ca.pem" >"$KT_WORK/req.out" || die "cert request failed"
log "certificate in $((($(date +%s%N) - t0) / 1000000)) ms"
cmp -s "$KT_WORK/ca.pem" "$KT_WORK/ca1.pem" || die "cert request wrote another CA certificate than the DKG"
openssl verify -CAfile "$KT_WORK/ca.pem" "$KT_WORK/leaf.pem" | tee "$KT_WORK/verify.out"
grep -q "leaf.pem: OK" "$KT_WORK/verify.out" || die "openssl does not verify the leaf"
openssl x509 -in "$KT_WORK/leaf.pem" -noout -ext subjectAltName | grep -q "URI:spiffe://$TD/${IDS[6]}/web" || die "the leaf's URI SAN is not node 6's SPIFFE ID"
"$KT" cert show "$KT_WORK/leaf.pem" --ca-cert "$KT_WORK/ca.pem" --json >"$KT_WORK/show.json" || die "cert show: does not verify: $(cat "$KT_WORK/show.json")"
[ "$(jq -r .spiffe_id "$KT_WORK/show.json")" = "spiffe://$TD/${IDS[6]}/web" ] || die "x509svid.Verify returned another SPIFFE ID: $(cat "$KT_WORK/show.json")"
[ "$(jq -r .verified "$KT_WORK/show.json")" = true ] || die "not verified"
[ "$(jq -r .identity "$KT_WORK/show.json")" = "${IDS[6]}" ] || die "cert show names another identity"
"$KT" cert show "$KT_WORK/leaf.pem" --ca-cert "$KT_WORK/ca.pem"
log "peers' SPIFFE IDs in node 6's status"
"$KT" status --control "$KT_WORK/n6.sock" --json | jq -e --arg td "spiffe://$TD/" '[.peers[] | select(.spiffe_id == $td + .identity)] | length > 0' >/dev/null ||
	die "no peer with its spiffe_id in status"

log "a tampered state file and another node's state file are refused by up"
cp "$KT_WORK/s2.state" "$KT_WORK/bad.state"
printf '\x55' | dd of="$KT_WORK/bad.state" bs=1 seek=40 conv=notrunc 2>/dev/null
for f in bad.state s3.state; do
	if ip netns exec "ka$$n2" "$KT" up --key "$KT_WORK/n2.key" --listen 198.18.2.1:7401 --tun korium9 --pow-bits $POW \
		--control "$KT_WORK/x.sock" --ca-signer "$KT_WORK/$f" >"$KT_WORK/x.out" 2>&1; then die "up accepted $f"; fi
	grep -q "does not decrypt with this node's key" "$KT_WORK/x.out" || die "unclear error for $f: $(cat "$KT_WORK/x.out")"
done

log "node 2 restarts as a signer from its state file"
stop_pid "${PIDS[2]}"
start_node 2 --ca-signer "$KT_WORK/s2.state"
grep -q "CA signer running" "$KT_WORK/n2.log" || wait_until 10 "node 2 signing" grep -q "CA signer running" "$KT_WORK/n2.log"
log "nodes 4 and 5 stop: nodes 1, 2 (restarted) and 3 are the only signers left"
stop_pid "${PIDS[4]}"
stop_pid "${PIDS[5]}"
"$KT" cert request --control "$KT_WORK/n6.sock" --trust-domain $TD --workload web --out "$KT_WORK/leaf2.pem" >"$KT_WORK/req2.out" ||
	die "cert request with 2 of 5 signers down failed"
grep -q "^signers 3" "$KT_WORK/req2.out" || die "not signed by 3: $(cat "$KT_WORK/req2.out")"
openssl verify -CAfile "$KT_WORK/ca.pem" "$KT_WORK/leaf2.pem" | grep -q ": OK" || die "openssl does not verify the second leaf"
log "node 3 stops too: 2 of the 3 needed are left"
stop_pid "${PIDS[3]}"
if "$KT" cert request --control "$KT_WORK/n6.sock" --trust-domain $TD --workload web --out "$KT_WORK/leaf3.pem" >/dev/null 2>"$KT_WORK/req3.err"; then
	die "cert request succeeded with 3 of 5 signers down"
fi
grep -q "2 of the 3 signers needed" "$KT_WORK/req3.err" || die "unclear failure: $(cat "$KT_WORK/req3.err")"
sed 's/^/  /' "$KT_WORK/req3.err"
log "PASS ca-test"
