#!/usr/bin/env bash
# keygate's main job, end to end, on this machine:
# a private Redis and keygated, a sign-up, a wallet, a paid key with a
# pay-as-you-go service, a personal token, requests through the gateway
# module that debit the wallet, a refusal for funds, rotation, revocation.
# Everything runs in a temporary folder and is removed at the end.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)

bash "$here/setup.sh" >/dev/null
B="$root/build"
KG="$B/daemon/cli/keygate"
[ -x "$KG" ] || { echo "demo: $KG was not built" >&2; exit 1; }

T=$(mktemp -d /tmp/keygate-demo.XXXXXX)
cleanup() {
  [ -n "${KGD_PID:-}" ] && kill "$KGD_PID" 2>/dev/null && wait "$KGD_PID" 2>/dev/null
  [ -n "${REDIS_PID:-}" ] && kill "$REDIS_PID" 2>/dev/null && wait "$REDIS_PID" 2>/dev/null
  rm -rf "$T"
}
trap cleanup EXIT

say()  { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run()  { printf '$ %s\n' "$*"; "$@"; }
json() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1], {}, {"d": d}))' "$1"; }

say "A private Redis and keygated in $T"
redis-server --port 0 --unixsocket "$T/redis.sock" --save '' --appendonly no \
  --daemonize no >"$T/redis.log" 2>&1 &
REDIS_PID=$!
head -c32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$T/pepper"; chmod 600 "$T/pepper"
cat >"$T/keygate.conf" <<CONF
# read by keygated and by libkeygate alike
socket       $T/keygated.sock
socket_mode  0660
catalog      $root/docs/examples/catalog.json
redis        unix:$T/redis.sock
pepper_file  $T/pepper
key_prefix   kg:
timeout_ms   50
cache_ttl_ms 1000
# the ledger's history beyond the newest 1000 entries per wallet (docs/archive.md)
archive      sqlite:$T/archive.db
ledger_tail  1000
CONF
for _ in $(seq 100); do [ -S "$T/redis.sock" ] && break; sleep 0.05; done
"$B/daemon/keygated" --config "$T/keygate.conf" 2>"$T/keygated.log" &
KGD_PID=$!
for _ in $(seq 100); do "$KG" --socket "$T/keygated.sock" ping >/dev/null 2>&1 && break; sleep 0.05; done
export KEYGATE_SOCKET="$T/keygated.sock"
cat "$T/keygate.conf" | sed 's/^/  /'

say "Olga signs up: a user, a team, and the team's free service key"
SIGNUP=$("$KG" --json signup --email olga@example.com --name Olga --team-name "Zeta Labs")
U=$(echo "$SIGNUP" | json 'd["user_id"]'); TEAM=$(echo "$SIGNUP" | json 'd["team_id"]')
echo "$SIGNUP"
export KEYGATE_ACTOR=$U
run "$KG" key list "$TEAM"

say "A wallet for the team, topped up with 2,000 micros"
W=$("$KG" --json wallet create "$TEAM" "Production" | json 'd["wallet_id"]')
run "$KG" wallet credit "$W" 2000 --reference invoice-2026-001

say "A paid key: text-generation, pay-as-you-go, model 'small', charged to that wallet"
K=$("$KG" --json key create "$TEAM" --name "prod backend" --description "the API servers" \
      --user "$U" --service "text-generation=payg:small@$W" | json 'd["key_id"]')
run "$KG" key get "$K"

say "Olga's personal token for it: shown once, written to a 0600 file"
run "$KG" token generate "$K" --out "$T/token"
ls -l "$T/token" | awk '{print "  " $1, $NF}'

say "What will a request of 2,000 input and 1,000 output tokens cost?"
run "$KG" price estimate text-generation small input_tokens=2000 output_tokens=1000

auth() {  # token-file request-id
  run "$KG" authorize --config "$T/keygate.conf" --token-file "$1" --service text-generation \
      --model small --param input_tokens=2000 --param output_tokens=1000 --request-id "$2" || true
}
say "Requests through the gateway module (libkeygate), each debiting the wallet atomically"
auth "$T/token" req-1
say "The same request id again (a client retry): replayed, not charged twice"
auth "$T/token" req-1
auth "$T/token" req-2
say "The wallet cannot pay for a third one: refused (402), nothing charged"
auth "$T/token" req-3
run "$KG" wallet ledger "$W"

say "A top-up, then Olga rotates her token: the old one stops working at once"
run "$KG" wallet credit "$W" 100000 --reference invoice-2026-002
cp "$T/token" "$T/token.old"
run "$KG" token rotate "$K" --out "$T/token"
auth "$T/token.old" req-4
auth "$T/token" req-5

say "The key is revoked: every token of it is refused"
run "$KG" key revoke "$K"
sleep 0.1
auth "$T/token" req-6

say "What the team's audit log recorded (never a token)"
run "$KG" audit "$TEAM" --limit 8
say "keygate fsck: every invariant of the store holds (balance = credits - debits, no plain token)"
run "$KG" fsck --config "$T/keygate.conf"
say "Done: the temporary Redis, keygated and folder are removed"
