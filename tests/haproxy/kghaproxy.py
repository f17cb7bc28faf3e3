"""kghaproxy - a real haproxy in front of keygate-spoa, for tests and benches.

Python 3 standard library only. Agent() starts the built keygate-spoa on a
Unix socket (or a loopback port) in a temp dir; Haproxy() writes a
haproxy.cfg and a SPOE config (the example of docs/haproxy.md, with the
agent's address and free loopback ports filled in), starts
`haproxy -db` and stops it by PID on close():

    port        the gateway frontend: keygate paths + an open path
    up_port     the upstream frontend (same haproxy), which echoes the
                X-Kg-* headers the gateway set, one "name=value" per line

Gateway paths:
    /stt/      speech-to-text (free tier), param audio_seconds
    /gen/      text-generation (pay-as-you-go), model and tokens from headers
    /tiny/     tiny-free (free tier, quota 3/day; kggateway.catalog())
    /free/     echo-free (free tier, no quota)
    /open/     the same upstream, no keygate

Environment:
    KEYGATE_SPOA          the built keygate-spoa (default <repo>/build/module/haproxy/keygate-spoa)
    KEYGATE_HAPROXY_BIN   haproxy (default /usr/sbin/haproxy)
    KEYGATE_SPOA_WRAPPER  a command line the agent runs under (e.g. valgrind ...)
"""

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(REPO, "tests", "lib"))

import kggateway  # noqa: E402
from kggateway import free_port  # noqa: E402

_tail = kggateway.tail


def agent_path():
    return os.environ.get("KEYGATE_SPOA") or os.path.join(
        REPO, "build", "module", "haproxy", "keygate-spoa")


def haproxy_path():
    return os.environ.get("KEYGATE_HAPROXY_BIN") or shutil.which("haproxy") or "/usr/sbin/haproxy"


class Agent:
    """keygate-spoa on unix:<tmp>/spoa.sock (or tcp=True: a loopback port)."""

    def __init__(self, kg_config, tmp=None, tcp=False, args=(), wrapper=None, start=True):
        self.own_tmp = tmp is None
        self.tmp = tmp or tempfile.mkdtemp(prefix="kgspoa")
        self.kg_config = kg_config
        if tcp:
            self.port = free_port()
            self.address = "127.0.0.1:%d" % self.port
            self.haproxy_address = self.address
        else:
            self.sock = os.path.join(self.tmp, "spoa.sock")
            self.address = "unix:" + self.sock
            self.haproxy_address = self.sock
        self.args = list(args)
        self.wrapper = shlex.split(os.environ.get("KEYGATE_SPOA_WRAPPER", "")) \
            if wrapper is None else list(wrapper)
        self.log_path = os.path.join(self.tmp, "spoa.log")
        self.proc = None
        if start:
            self.start()

    def start(self, timeout=10):
        log = open(self.log_path, "ab")
        argv = self.wrapper + [agent_path(), "--config", self.kg_config,
                               "--listen", self.address] + self.args
        self.proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        slow = 10 if self.wrapper else 1
        deadline = time.monotonic() + timeout * slow
        while "listening on" not in self.log():
            if self.proc.poll() is not None:
                raise RuntimeError("keygate-spoa exited with %s:\n%s"
                                   % (self.proc.returncode, self.log()[-4000:]))
            if time.monotonic() > deadline:
                raise TimeoutError("keygate-spoa did not start:\n" + self.log()[-4000:])
            time.sleep(0.02)

    def stop(self, sig=signal.SIGTERM, timeout=15):
        """Sends sig, waits; returns the exit status (None if not running)."""
        p = self.proc
        if p is None:
            return None
        rc, killed = kggateway.stop_process(p, sig, timeout * (4 if self.wrapper else 1))
        self.proc = None
        return "killed after timeout" if killed else rc

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log(self):
        return _tail(self.log_path, 10 ** 7)

    def close(self):
        rc = self.stop()
        if self.own_tmp and not os.environ.get("KGTEST_KEEP"):
            shutil.rmtree(self.tmp, ignore_errors=True)
        return rc


# The SPOE configuration of docs/haproxy.md ({...} filled in).
SPOE_CONF = """
[keygate]
spoe-agent keygate-agent
    groups keygate-check
    option var-prefix keygate
    option set-on-error error
    timeout hello      2s
    timeout idle       30s
    timeout processing {processing}
    use-backend keygate-agents
    register-var-names status http_status message body key_id user_id team_id cost_micros balance_micros retry_after

spoe-message keygate
    args authorization=req.fhdr(authorization) api_key=req.fhdr(x-api-key) service=var(txn.kg.service) model=var(txn.kg.model) request_id=var(txn.kg.request_id) param.input_tokens=var(txn.kg.input_tokens) param.output_tokens=var(txn.kg.output_tokens) param.audio_seconds=var(txn.kg.audio_seconds)

spoe-group keygate-check
    messages keygate
"""

ECHO = "\\n".join("%s=%%[req.hdr(x-kg-%s)]" % (n, n) for n in kggateway.ECHO_FIELDS)

HAPROXY_CFG = r"""
global
    pidfile {tmp}/haproxy.pid
    nbthread {threads}
    maxconn 4096
{global_extra}

defaults
    mode http
    timeout connect 2s
    timeout client  30s
    timeout server  30s
    {log}

frontend gateway
    bind 127.0.0.1:{port}
    filter spoe engine keygate config {spoe}

    # what each path sells: the service, its model and its priced params
    acl kg_stt  path_beg /stt/
    acl kg_gen  path_beg /gen/
    acl kg_tiny path_beg /tiny/
    acl kg_free path_beg /free/
    http-request set-var(txn.kg.service) str(speech-to-text)  if kg_stt
    http-request set-var(txn.kg.model)   str(fast)            if kg_stt
    http-request set-var(txn.kg.audio_seconds) req.fhdr(x-audio-seconds) if kg_stt
    http-request set-var(txn.kg.service) str(text-generation) if kg_gen
    http-request set-var(txn.kg.model)   req.fhdr(x-model)    if kg_gen
    http-request set-var(txn.kg.input_tokens)  req.fhdr(x-input-tokens)  if kg_gen
    http-request set-var(txn.kg.output_tokens) req.fhdr(x-output-tokens) if kg_gen
    http-request set-var(txn.kg.service) str(tiny-free)       if kg_tiny
    http-request set-var(txn.kg.service) str(echo-free)       if kg_free
    http-request set-var(txn.kg.request_id) req.fhdr(x-request-id) if {{ var(txn.kg.service) -m found }}

    # ask keygate, then act on its answer (fail closed: no answer is 503)
    acl kg_on  var(txn.kg.service) -m found
    http-request send-spoe-group keygate keygate-check if kg_on
    http-request return status 503 content-type application/json string "{{\"error\": \"backend_error\", \"message\": \"keygate agent unavailable\"}}" if kg_on !{{ var(txn.keygate.http_status) -m found }}
    http-request return status 401 content-type application/json hdr WWW-Authenticate "Bearer realm=\"keygate\"" lf-string "%[var(txn.keygate.body)]" if kg_on {{ var(txn.keygate.http_status) -m int 401 }}
    http-request return status 402 content-type application/json lf-string "%[var(txn.keygate.body)]" if kg_on {{ var(txn.keygate.http_status) -m int 402 }}
    http-request return status 403 content-type application/json lf-string "%[var(txn.keygate.body)]" if kg_on {{ var(txn.keygate.http_status) -m int 403 }}
    http-request return status 429 content-type application/json hdr Retry-After "%[var(txn.keygate.retry_after)]" lf-string "%[var(txn.keygate.body)]" if kg_on {{ var(txn.keygate.retry_after) -m found }}
    http-request return status 429 content-type application/json lf-string "%[var(txn.keygate.body)]" if kg_on {{ var(txn.keygate.http_status) -m int 429 }}
    http-request return status 409 content-type application/json lf-string "%[var(txn.keygate.body)]" if kg_on {{ var(txn.keygate.http_status) -m int 409 }}
    http-request return status 400 content-type application/json lf-string "%[var(txn.keygate.body)]" if kg_on {{ var(txn.keygate.http_status) -m int 400 }}
    http-request return status 503 content-type application/json lf-string "%[var(txn.keygate.body)]" if kg_on !{{ var(txn.keygate.http_status) -m int 200 }}

    # what the upstream gets to know; the token itself stays here
    http-request del-header Authorization
    http-request del-header X-API-Key
    http-request del-header X-Kg-Key
    http-request del-header X-Kg-User
    http-request del-header X-Kg-Team
    http-request del-header X-Kg-Cost
    http-request del-header X-Kg-Balance
    http-request del-header X-Kg-Status
    http-request set-header X-Kg-Key     %[var(txn.keygate.key_id)]         if kg_on
    http-request set-header X-Kg-User    %[var(txn.keygate.user_id)]        if kg_on
    http-request set-header X-Kg-Team    %[var(txn.keygate.team_id)]        if kg_on
    http-request set-header X-Kg-Cost    %[var(txn.keygate.cost_micros)]    if kg_on
    http-request set-header X-Kg-Balance %[var(txn.keygate.balance_micros)] if kg_on
    http-request set-header X-Kg-Status  %[var(txn.keygate.status)]         if kg_on
    default_backend echo

backend echo
    http-reuse always
    server up 127.0.0.1:{up_port}

backend keygate-agents
    mode tcp
    timeout connect 1s
    timeout server  60s
    server agent1 {agent}

# the upstream: says what the gateway passed on
frontend upstream
    bind 127.0.0.1:{up_port}
    http-request return status 200 content-type text/plain lf-string "{echo}\n"
"""


class Haproxy(kggateway.Gateway):
    """haproxy with the keygate SPOE filter, serving on 127.0.0.1:port."""

    name = "kghaproxy"

    def __init__(self, agent_address, processing="5s", threads=1, log=False, start=True):
        self.tmp = tempfile.mkdtemp(prefix="kghap")
        self.port = free_port()
        self.up_port = free_port()
        self.cfg_path = os.path.join(self.tmp, "haproxy.cfg")
        self.spoe_path = os.path.join(self.tmp, "spoe-keygate.conf")
        self.log_path = os.path.join(self.tmp, "haproxy.log")
        self.proc = None
        with open(self.spoe_path, "w") as f:
            f.write(SPOE_CONF.format(processing=processing))
        with open(self.cfg_path, "w") as f:
            f.write(HAPROXY_CFG.format(
                tmp=self.tmp, threads=threads, port=self.port, up_port=self.up_port,
                spoe=self.spoe_path, agent=agent_address, echo=ECHO,
                global_extra="    log stderr format raw local0 info" if log else "",
                log="log global\n    option httplog" if log else "no log"))
        if start:
            self.start_or_close()

    def check_config(self):
        p = subprocess.run([haproxy_path(), "-c", "-f", self.cfg_path],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
        return p.returncode, p.stdout.decode("utf-8", "replace")

    def start(self):
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([haproxy_path(), "-db", "-f", self.cfg_path],
                                     stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        self.wait_ready()

    def startup_log(self):
        return _tail(self.log_path)

    def stop(self, timeout=10):
        return self.stop_proc(signal.SIGTERM, timeout)

    def log(self):
        return _tail(self.log_path, 10 ** 7)
