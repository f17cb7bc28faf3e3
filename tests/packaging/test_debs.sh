#!/usr/bin/env bash
# The Debian packages, for real, on this machine (label `debs`: slow, root).
#
#   tests/packaging/test_debs.sh OUT_DIR
#
# 1. builds them with scripts/package.sh (dpkg-buildpackage + lintian: no
#    lintian error) into OUT_DIR;
# 2. `apt-get install ./...deb`: checks the keygate user, the generated
#    pepper (root:keygate-pepper 0640), the nginx modules-enabled link, the
#    installed unit (systemd-analyze verify), the man pages, pkg-config;
# 3. runs the demo's story against the installed binaries: keygated
#    (/usr/sbin, as user keygate, no systemd here: --config) on a private
#    Redis with the installed pepper and catalog; /usr/bin/keygate for the
#    sign-up, wallet, paid key and token; debits through the installed
#    libkeygate (keygate authorize, the libkeygate(3) example compiled
#    against libkeygate-dev, and Debian's nginx with the installed module,
#    enabled the Debian way, and its keygate_status counters); the
#    console and /metrics of the installed daemon; keygate-spoa installed
#    (no RPATH anywhere); a reinstall keeps the pepper;
# 4. `apt-get purge`: checks what is removed and what is kept (the pepper,
#    the keygate user and groups: docs/operations.md), then removes what
#    the test itself left, unless it was there before.
# KGDEBS_PREBUILT=1 reuses the packages already in OUT_DIR (while
# working on this test). Exit 77 (CTest skip) when not root, or without dpkg-buildpackage,
# apt-get, redis-server or nginx.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-$root/build-deb/test}
PKGS="keygated libkeygate1 libkeygate-dev libnginx-mod-http-keygate"
MA=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)

skip() { echo "SKIP: $*"; exit 77; }
[ "$(id -u)" = 0 ] || skip "needs root (apt-get install)"
for t in dpkg-buildpackage apt-get redis-server nginx setpriv curl python3 cc pkg-config readelf strings man systemd-analyze; do
    command -v "$t" >/dev/null || skip "$t is missing"
done

mkdir -p "$out"; out=$(cd "$out" && pwd)
T=$(mktemp -d /tmp/kgdebs.XXXXXX)
chmod 0755 "$T"
t0=$(date +%s)
step() { printf '\n== [%3ds] %s\n' "$(( $(date +%s) - t0 ))" "$*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
check() { local what=$1; shift; "$@" || fail "$what"; }
apt() { DEBIAN_FRONTEND=noninteractive apt-get -y -q -o DPkg::Lock::Timeout=300 "$@"; }

had_user=0; getent passwd keygate >/dev/null && had_user=1
had_group=0; getent group keygate-pepper >/dev/null && had_group=1
had_etc=0; [ -e /etc/keygate ] && had_etc=1

cleanup() {
    set +e
    [ -n "${NGX_PID:-}" ] && kill "$NGX_PID" 2>/dev/null && wait "$NGX_PID" 2>/dev/null
    [ -n "${SPOA_PID:-}" ] && kill "$SPOA_PID" 2>/dev/null && wait "$SPOA_PID" 2>/dev/null
    [ -n "${KGD_PID:-}" ] && kill "$KGD_PID" 2>/dev/null && wait "$KGD_PID" 2>/dev/null
    [ -n "${REDIS_PID:-}" ] && kill "$REDIS_PID" 2>/dev/null && wait "$REDIS_PID" 2>/dev/null
    # packages still installed after a failure: purge them
    for p in $PKGS; do
        if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok\|config-files'; then
            apt purge $PKGS >/dev/null 2>&1; break
        fi
    done
    getent passwd kgtest-gw >/dev/null && userdel kgtest-gw
    [ "$had_user" = 0 ] && getent passwd keygate >/dev/null && userdel keygate
    [ "$had_user" = 0 ] && getent group keygate >/dev/null && groupdel keygate
    [ "$had_group" = 0 ] && getent group keygate-pepper >/dev/null && groupdel keygate-pepper
    [ "$had_etc" = 0 ] && rm -rf /etc/keygate
    if [ -n "${KGTEST_KEEP:-}" ]; then echo "kept $T"; else rm -rf "$T"; fi
}
trap cleanup EXIT
trap 'echo "FAIL: line $LINENO: $BASH_COMMAND" >&2' ERR

step "packages left by an earlier run are purged first"
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok\|config-files' &&
        { apt purge $PKGS >/dev/null; break; }
done

if [ -n "${KGDEBS_PREBUILT:-}" ] && ls "$out"/keygated_*.deb >/dev/null 2>&1; then
    step "build: skipped (KGDEBS_PREBUILT), using $out"
else
    step "build: scripts/package.sh $out"
    bash "$root/scripts/package.sh" "$out"
fi
debs=()
for p in $PKGS; do debs+=("$(ls "$out/${p}_"*.deb)"); done

step "apt-get install ./*.deb"
apt install "${debs[@]}" >"$T/apt-install.log" 2>&1 || { cat "$T/apt-install.log"; fail "apt-get install"; }
for p in $PKGS; do
    check "$p installed" test "$(dpkg-query -W -f='${Status}' "$p")" = "install ok installed"
done

step "what the installation made"
check "user keygate" getent passwd keygate >/dev/null
check "keygate's shell is nologin" test "$(getent passwd keygate | cut -d: -f7)" = /usr/sbin/nologin
check "keygate in keygate-pepper" grep -qw keygate-pepper <<<"$(id -nG keygate)"
P=/etc/keygate/pepper
check "pepper: root:keygate-pepper 0640" test "$(stat -c '%U:%G %a' $P)" = "root:keygate-pepper 640"
check "pepper: 64 hex" grep -qxE '[0-9a-f]{64}' $P
pepper_sum=$(sha256sum $P | cut -d' ' -f1)
check "nginx module enabled the Debian way" \
    test "$(readlink /etc/nginx/modules-enabled/50-mod-http-keygate.conf)" = /usr/share/nginx/modules-available/mod-http-keygate.conf
check "module load line" grep -qx 'load_module modules/ngx_http_keygate_module.so;' /usr/share/nginx/modules-available/mod-http-keygate.conf
for u in keygated keygate-spoa; do
    out_verify=$(systemd-analyze verify "/lib/systemd/system/$u.service" 2>&1) || true
    [ -z "$out_verify" ] || fail "systemd-analyze verify of the installed $u.service: $out_verify"
done
check "keygate-spoa.service not enabled" test ! -e /etc/systemd/system/multi-user.target.wants/keygate-spoa.service
for page in keygated.8 keygate.1 keygate.conf.5 libkeygate.3 kg_open.3 kg_authorize_start.3 keygate-spoa.8 ngx_http_keygate_module.8; do
    check "man page $page" grep -q "^/usr/share/man/" <<<"$(man -w "${page##*.}" "${page%.*}" 2>/dev/null)"
    warn=$(man --warnings -l "$(man -w "${page##*.}" "${page%.*}")" 2>&1 >/dev/null) || true
    [ -z "$warn" ] || fail "man $page warns: $warn"
done
check "pkg-config keygate: -lkeygate only" test "$(pkg-config --libs keygate | xargs)" = -lkeygate
check "CLI uses the installed libkeygate" grep -qE "libkeygate.so.1 => (/usr)?/lib/$MA/libkeygate.so.1" <<<"$(ldd /usr/bin/keygate)"
check "keygate-spoa --help" /usr/sbin/keygate-spoa --help >/dev/null
check "keygate-spoa uses the installed libkeygate" grep -qE "libkeygate.so.1 => (/usr)?/lib/$MA/libkeygate.so.1" <<<"$(ldd /usr/sbin/keygate-spoa)"
for b in /usr/sbin/keygated /usr/sbin/keygate-spoa /usr/bin/keygate /usr/lib/nginx/modules/ngx_http_keygate_module.so; do
    check "$b has no RPATH/RUNPATH" sh -c "! readelf -d '$b' | grep -qE 'RPATH|RUNPATH'"
done
check "unit enabled" test -L /etc/systemd/system/multi-user.target.wants/keygated.service
check "keygated names no build-tree path" sh -c "! strings /usr/sbin/keygated | grep -q '$out'"
check "keygated needs no libsystemd" sh -c '! ldd /usr/sbin/keygated | grep -q libsystemd'

step "the libkeygate(3) example, built against libkeygate-dev"
awk '/^\.Sh EXAMPLES/{e=1} e&&/^\.Bd -literal/{p=1;next} p&&/^\.Ed/{exit} p' "$root/docs/man/libkeygate.3" |
    sed 's/\\e/\\/g' >"$T/example.c"
# shellcheck disable=SC2046
cc -Wall -Wextra -Werror -o "$T/example" "$T/example.c" $(pkg-config --cflags --libs keygate)

step "keygated from /usr/sbin as user keygate, with the installed pepper and catalog"
mkdir -p "$T/run" && chown keygate:keygate "$T/run" && chmod 0750 "$T/run"
redis-server --port 0 --unixsocket "$T/redis.sock" --unixsocketperm 777 --save '' \
    --appendonly no --dir "$T" --daemonize no >"$T/redis.log" 2>&1 &
REDIS_PID=$!
freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
hport=$(freeport)
sed -e "s#^socket .*#socket $T/run/keygated.sock#" \
    -e "s#^redis .*#redis unix:$T/redis.sock#" \
    -e "s|^#http .*|http 127.0.0.1:$hport|" /etc/keygate/keygate.conf >"$T/keygate.conf"
grep -q "^http 127.0.0.1:$hport" "$T/keygate.conf" || fail "no commented http line in the packaged config"
chmod 0644 "$T/keygate.conf"
grep -q "^pepper_file */etc/keygate/pepper" "$T/keygate.conf" || fail "config does not use the installed pepper"
for _ in $(seq 100); do [ -S "$T/redis.sock" ] && break; sleep 0.05; done
setpriv --reuid=keygate --regid=keygate --init-groups \
    /usr/sbin/keygated --config "$T/keygate.conf" 2>"$T/keygated.log" &
KGD_PID=$!
KG=/usr/bin/keygate
export KEYGATE_SOCKET="$T/run/keygated.sock"
for _ in $(seq 100); do $KG ping >/dev/null 2>&1 && break; sleep 0.05; done
check "keygated answers" $KG ping >/dev/null
check "socket group keygate, mode 0660" test "$(stat -c '%G %a' "$KEYGATE_SOCKET")" = "keygate 660"
rc=0; setpriv --reuid=nobody --regid=nogroup --clear-groups $KG ping >/dev/null 2>&1 || rc=$?
check "a user outside group keygate cannot reach the socket (exit 3, got $rc)" test "$rc" = 3

step "the demo's story with the installed CLI"
json() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1], {}, {"d": d}))' "$1"; }
S=$($KG --json signup --email olga@example.com --name Olga --team-name "Zeta Labs")
export KEYGATE_ACTOR=$(echo "$S" | json 'd["user_id"]')
TEAM=$(echo "$S" | json 'd["team_id"]')
W=$($KG --json wallet create "$TEAM" Production | json 'd["wallet_id"]')
$KG wallet credit "$W" 2000 --reference invoice-1 >/dev/null
K=$($KG --json key create "$TEAM" --name prod --user "$KEYGATE_ACTOR" \
      --service "text-generation=payg:small@$W" | json 'd["key_id"]')
$KG token generate "$K" --out "$T/token" >/dev/null
check "token file 0600" test "$(stat -c %a "$T/token")" = 600
est=$($KG --json price estimate text-generation small input_tokens=2000 output_tokens=1000 | json 'd["cost_micros"]')
check "estimate 900 micros (got $est)" test "$est" = 900
auth() {  # request-id -> "status cost balance replayed"
    $KG --json authorize --config "$T/keygate.conf" --token-file "$T/token" --service text-generation \
        --model small --param input_tokens=2000 --param output_tokens=1000 --request-id "$1" |
        json '"%s %s %s %s" % (d["status"], d["cost_micros"], d["balance_micros"], d["replayed"])' || true
}
r=$(auth req-a); check "debit through installed libkeygate: $r" test "${r#* }" = "900 1100 False"
r=$(auth req-a); check "replay not charged: $r" test "${r#* }" = "0 1100 True"

step "a debit from the example program (libkeygate-dev) and one through nginx with the installed module"
TOKEN=$(cat "$T/token") "$T/example" "$T/keygate.conf" </dev/null >"$T/example.out" 2>&1 ||
    { cat "$T/example.out"; fail "example program"; }
# The example charges request id req-1 for 2000/1000 tokens: 900 micros.
check "example: $(cat "$T/example.out")" grep -q '^200 ok cost 900 balance 200$' "$T/example.out"
TOKEN=$(cat "$T/token") "$T/example" "$T/keygate.conf" </dev/null >"$T/example.out" 2>&1 || true
check "example again: replayed, $(cat "$T/example.out")" grep -q '^200 ok cost 0 balance 200$' "$T/example.out"

useradd --system --no-create-home --shell /usr/sbin/nologin kgtest-gw
usermod -aG keygate-pepper kgtest-gw    # the operator's step for a gateway's user
port=$(freeport)
mkdir -p "$T/www/v1" && echo generated >"$T/www/v1/generate"
cat >"$T/nginx.conf" <<NGX
include /etc/nginx/modules-enabled/*.conf;
user kgtest-gw;
worker_processes 1;
pid $T/nginx.pid;
error_log $T/nginx-error.log;
events { worker_connections 64; }
http {
    client_body_temp_path $T/body; proxy_temp_path $T/proxy; fastcgi_temp_path $T/fcgi;
    uwsgi_temp_path $T/uwsgi; scgi_temp_path $T/scgi;
    access_log off;
    keygate_config $T/keygate.conf;
    server {
        listen 127.0.0.1:$port;
        root $T/www;
        location = /keygate-metrics { keygate_status; }
        location /v1/ {
            keygate_service text-generation;
            keygate_model small;
            keygate_param input_tokens 2000;
            keygate_param output_tokens 100;
            keygate_request_id \$http_x_request_id;
            add_header X-Kg "\$keygate_status \$keygate_cost_micros \$keygate_balance_micros" always;
        }
    }
}
NGX
nginx -t -e "$T/nginx-early.log" -c "$T/nginx.conf" >"$T/nginx-t.log" 2>&1 || { cat "$T/nginx-t.log"; fail "nginx -t"; }
nginx -e "$T/nginx-early.log" -c "$T/nginx.conf" -g 'daemon off;' &
NGX_PID=$!
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.05; done
h=$(curl -s -D - -o /dev/null -H "Authorization: Bearer $(cat "$T/token")" -H 'X-Request-Id: ngx-1' \
      "http://127.0.0.1:$port/v1/generate" | tr -d '\r' | grep -i '^x-kg:' || true)
# 2000 input + 100 output tokens: 300 + 60 = 360 micros; the balance was 200
check "nginx refuses for funds (402): $h" test "$h" = "X-Kg: insufficient_funds 0 200"
$KG wallet credit "$W" 10000 --reference invoice-2 >/dev/null
code=$(curl -s -o "$T/body.out" -w '%{http_code}' -H "Authorization: Bearer $(cat "$T/token")" \
      -H 'X-Request-Id: ngx-2' "http://127.0.0.1:$port/v1/generate")
check "nginx serves and charges (got $code)" test "$code" = 200
bal=$($KG --json wallet get "$W" | json 'd["balance_micros"]')
check "balance after the nginx debit (got $bal)" test "$bal" = $(( 200 + 10000 - 360 ))
curl -s "http://127.0.0.1:$port/keygate-metrics" >"$T/ngx-metrics"
check "nginx metrics: one refusal for funds" grep -qx 'keygate_authorizations_total{status="insufficient_funds"} 1' "$T/ngx-metrics"
check "nginx metrics: 360 micros charged" grep -qx 'keygate_charged_micros_total 360' "$T/ngx-metrics"
kill "$NGX_PID"; wait "$NGX_PID" 2>/dev/null || true; NGX_PID=

# keygate-spoa from /usr/sbin, as a gateway user in keygate-pepper (as its unit runs it)
sport=$(freeport)
setpriv --reuid=kgtest-gw --regid=nogroup --init-groups \
    /usr/sbin/keygate-spoa --config "$T/keygate.conf" --listen "127.0.0.1:$sport" 2>"$T/spoa.log" &
SPOA_PID=$!
up=0
for _ in $(seq 100); do
    python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1).close()' "$sport" 2>/dev/null && { up=1; break; }
    sleep 0.05
done
[ "$up" = 1 ] || { cat "$T/spoa.log"; fail "keygate-spoa did not listen"; }
kill -TERM "$SPOA_PID"; rc=0; wait "$SPOA_PID" || rc=$?; SPOA_PID=
check "keygate-spoa stopped cleanly (exit $rc)" test "$rc" = 0

step "the console (from /usr/share/keygate/console) and /metrics of the installed daemon"
code=$(curl -s -o "$T/index.html" -w '%{http_code}' "http://127.0.0.1:$hport/")
check "console page served (got $code)" test "$code" = 200
check "console page is the packaged one" cmp -s "$T/index.html" /usr/share/keygate/console/index.html
curl -s "http://127.0.0.1:$hport/metrics" >"$T/metrics"
check "metrics: the sign-up counted" grep -qx 'keygated_commands_total{command="user.signup",outcome="ok"} 1' "$T/metrics"
check "metrics: admin clients gauge" grep -q '^keygated_admin_clients ' "$T/metrics"

check "fsck clean" $KG fsck --config "$T/keygate.conf" >/dev/null
check "keygated logged no token" sh -c "! grep -q \"$(cat "$T/token")\" '$T/keygated.log'"
kill -TERM "$KGD_PID"; rc=0; wait "$KGD_PID" || rc=$?; KGD_PID=
check "keygated stopped cleanly (exit $rc)" test "$rc" = 0

step "a reinstall keeps the pepper"
apt install --reinstall "${debs[0]}" >"$T/apt-reinstall.log" 2>&1 || { cat "$T/apt-reinstall.log"; fail "reinstall"; }
check "same pepper after reinstall" test "$(sha256sum $P | cut -d' ' -f1)" = "$pepper_sum"

step "apt-get purge: removed, and kept"
apt purge $PKGS >"$T/apt-purge.log" 2>&1 || { cat "$T/apt-purge.log"; fail "apt-get purge"; }
for p in $PKGS; do
    st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    case "$st" in ""|*not-installed*) ;; *) fail "$p still known to dpkg: $st" ;; esac
done
for f in /usr/sbin/keygated /usr/sbin/keygate-spoa /usr/bin/keygate /usr/share/keygate /lib/systemd/system/keygated.service \
         /etc/keygate/keygate.conf /etc/keygate/catalog.json /usr/include/keygate.h \
         "/usr/lib/$MA/libkeygate.so" "/usr/lib/$MA/libkeygate.so.1" "/usr/lib/$MA/pkgconfig/keygate.pc" \
         /usr/lib/nginx/modules/ngx_http_keygate_module.so \
         /usr/share/nginx/modules-available/mod-http-keygate.conf \
         /etc/nginx/modules-enabled/50-mod-http-keygate.conf \
         /etc/nginx/modules-enabled/50-mod-http-keygate.conf.removed \
         /usr/share/man/man8/keygated.8.gz /usr/share/man/man3/kg_open.3.gz /usr/share/man/man8/ngx_http_keygate_module.8.gz /usr/share/doc/keygated \
         /etc/systemd/system/multi-user.target.wants/keygated.service \
         /lib/systemd/system/keygate-spoa.service; do
    [ ! -e "$f" ] && [ ! -L "$f" ] || fail "left after purge: $f"
done
check "kept: the pepper, unchanged" test "$(sha256sum $P | cut -d' ' -f1)" = "$pepper_sum"
check "kept: only the pepper in /etc/keygate" test "$(ls -A /etc/keygate)" = pepper
check "kept: user keygate" getent passwd keygate >/dev/null
check "kept: group keygate-pepper" getent group keygate-pepper >/dev/null

step "done in $(( $(date +%s) - t0 )) s"
