"""kgnginx - a real nginx with the built keygate module, for tests and benches.

Python 3 standard library only. Nginx() writes an nginx.conf into a temp
dir, starts `nginx -g 'daemon off;'` (a master and `workers` worker
processes) on two free loopback ports and stops it on close():

    port        the gateway server: keygate locations + open locations
    up_port     the upstream server (same nginx), which echoes what it was
                told by the gateway's proxy_set_header lines, one
                "name=value" per line

Gateway locations (see CONF below):
    /stt/      speech-to-text (free tier), param audio_seconds
    /gen/      text-generation (pay-as-you-go), model and tokens from headers
    /gen-bal/  as /gen/, with keygate_refusal_balance on (a 402 tells
               the wallet's balance)
    /gen-redirect/  text-generation, whose 404 from the upstream is sent
               by error_page into /gen/ (an internal redirect)
    /tiny/     tiny-free (free tier with a small quota; see catalog())
    /free/     echo-free (free tier, no quota)
    /open/     the same upstream, no keygate
    /static    a local file, no keygate, no upstream

Request headers the keygate locations read:
    Authorization / X-API-Key   the token
    X-Model, X-Input-Tokens, X-Output-Tokens, X-Audio-Seconds, X-Request-Id

Environment:
    KEYGATE_NGINX_MODULE  the built ngx_http_keygate_module.so
                          (default <repo>/build/module/nginx/...)
    NGINX                 the nginx binary (default /usr/sbin/nginx)
"""

import os
import signal
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(REPO, "tests", "lib"))

import kggateway  # noqa: E402
# the shared harness, re-exported for the tests and the bench
from kggateway import (bearer, catalog, fake_token, free_port,  # noqa: E402,F401
                       gen_headers, setup_accounts)


def module_path():
    return os.environ.get("KEYGATE_NGINX_MODULE") or os.path.join(
        REPO, "build", "module", "nginx", "ngx_http_keygate_module.so")


def nginx_path():
    return os.environ.get("KEYGATE_NGINX_BIN") or shutil.which("nginx") or "/usr/sbin/nginx"


def nginx_env():
    """nginx's environment: without NGINX (nginx reads it as inherited
    sockets), and with the sanitizer runtimes preloaded when the module was
    built with them (KEYGATE_NGINX_PRELOAD), since nginx itself is not."""
    env = dict(os.environ)
    env.pop("NGINX", None)
    pre = os.environ.get("KEYGATE_NGINX_PRELOAD")
    if pre:
        env["LD_PRELOAD"] = pre
        env["ASAN_OPTIONS"] = "detect_leaks=0:abort_on_error=1"
    return env


ECHO = "\\n".join("%s=$http_x_kg_%s" % (n, n) for n in kggateway.ECHO_FIELDS)

CONF = r"""
load_module {module};
worker_processes {workers};
{user}
pid {tmp}/nginx.pid;
error_log {tmp}/error.log {log_level};

events {{
    worker_connections 1024;
}}

http {{
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;

    log_format kg '$remote_addr "$request" $status pid=$pid kg=$keygate_status '
                  'key=$keygate_key_id user=$keygate_user_id team=$keygate_team_id '
                  'cost=$keygate_cost_micros balance=$keygate_balance_micros';
    access_log {access_log};

    keygate_config {kgconf};

    upstream echo {{
        server 127.0.0.1:{up_port};
        keepalive 64;
    }}

    # the upstream: says what the gateway passed on
    server {{
        listen 127.0.0.1:{up_port};
        access_log off;
        location = /missing {{
            return 404;
        }}
        # an LLM-like upstream: reports the usage it was told (X-Use)
        location /usage {{
            add_header X-Usage-Output-Tokens $http_x_use;
            default_type text/plain;
            return 200 "used\n";
        }}
        location / {{
            default_type text/plain;
            return 200 "{echo}\n";
        }}
    }}

    server {{
        listen 127.0.0.1:{port} backlog=1024;

        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Authorization "";
        proxy_set_header X-API-Key "";
        proxy_set_header X-Kg-Key $keygate_key_id;
        proxy_set_header X-Kg-User $keygate_user_id;
        proxy_set_header X-Kg-Team $keygate_team_id;
        proxy_set_header X-Kg-Cost $keygate_cost_micros;
        proxy_set_header X-Kg-Balance $keygate_balance_micros;
        proxy_set_header X-Kg-Status $keygate_status;

        location /stt/ {{
            keygate_service speech-to-text;
            keygate_model fast;
            keygate_param audio_seconds $http_x_audio_seconds;
            keygate_request_id $http_x_request_id;
            proxy_pass http://echo;
        }}

        location /gen/ {{
            keygate_service text-generation;
            keygate_model $http_x_model;
            keygate_param input_tokens $http_x_input_tokens;
            keygate_param output_tokens $http_x_output_tokens;
            keygate_request_id $http_x_request_id;
            proxy_pass http://echo;

            location /gen/open/ {{
                keygate_service off;
                proxy_pass http://echo;
            }}
        }}

        location /gen-bal/ {{
            keygate_service text-generation;
            keygate_model $http_x_model;
            keygate_param input_tokens $http_x_input_tokens;
            keygate_param output_tokens $http_x_output_tokens;
            keygate_request_id $http_x_request_id;
            keygate_refusal_balance on;
            proxy_pass http://echo;
        }}

        # the upstream answers 404, error_page redirects into /gen/
        location /gen-redirect/ {{
            keygate_service text-generation;
            keygate_model $http_x_model;
            keygate_param input_tokens $http_x_input_tokens;
            keygate_param output_tokens $http_x_output_tokens;
            proxy_pass http://echo/missing;
            proxy_intercept_errors on;
            error_page 404 = /gen/after-redirect;
        }}

        location /tiny/ {{
            keygate_service tiny-free;
            proxy_pass http://echo;
        }}

        location /free/ {{
            keygate_service echo-free;
            proxy_pass http://echo;
        }}

        location /open/ {{
            proxy_pass http://echo;
        }}

        location = /static {{
            root {tmp}/www;
        }}
{extra}
    }}
}}
"""


class Nginx(kggateway.Gateway):
    """nginx with the keygate module, serving on 127.0.0.1:port."""

    name = "kgnginx"
    ready_path = "/static"
    tail = staticmethod(kggateway.tail)

    def __init__(self, kg_config, workers=1, extra="", access_log=True,
                 log_level="info", start=True):
        self.tmp = tempfile.mkdtemp(prefix="kgngx")
        self.port = free_port()
        self.up_port = free_port()
        self.conf_path = os.path.join(self.tmp, "nginx.conf")
        self.error_log_path = os.path.join(self.tmp, "error.log")
        self.access_log_path = os.path.join(self.tmp, "access.log")
        self.stderr_path = os.path.join(self.tmp, "stderr.log")
        self.proc = None
        os.makedirs(os.path.join(self.tmp, "www"))
        with open(os.path.join(self.tmp, "www", "static"), "w") as f:
            f.write("static ok\n")
        self.write_conf(kg_config, workers, extra, access_log, log_level)
        if start:
            self.start_or_close()

    def write_conf(self, kg_config, workers=1, extra="", access_log=True,
                   log_level="info"):
        text = CONF.format(
            module=module_path(), workers=workers, tmp=self.tmp,
            # workers must read the pepper (mode 0600, the test's own user)
            user="user root root;" if os.geteuid() == 0 else "",
            log_level=log_level,
            access_log=("%s kg" % self.access_log_path) if access_log else "off",
            kgconf=kg_config, up_port=self.up_port, port=self.port,
            echo=ECHO, extra=extra)
        with open(self.conf_path, "w") as f:
            f.write(text)

    def test_config(self):
        """Runs `nginx -t`; returns (returncode, output)."""
        p = subprocess.run([nginx_path(), "-t", "-p", self.tmp, "-c", self.conf_path],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30,
                           env=nginx_env())
        return p.returncode, p.stdout.decode("utf-8", "replace")

    def start(self):
        err = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(
            [nginx_path(), "-p", self.tmp, "-c", self.conf_path, "-g", "daemon off;"],
            stdout=err, stderr=err, stdin=subprocess.DEVNULL, env=nginx_env())
        err.close()
        self.wait_ready()

    def startup_log(self):
        return self.tail(self.stderr_path) + self.tail(self.error_log_path)

    def stop(self, sig=signal.SIGQUIT, timeout=10):
        return self.stop_proc(sig, timeout)

    def worker_pids(self):
        """Pids of the worker processes (children of the master)."""
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)],
                             stdout=subprocess.PIPE).stdout.decode()
        return [int(x) for x in out.split()]

    # -- logs --------------------------------------------------------------

    def error_log(self):
        return self.tail(self.error_log_path, 10 ** 7)

    def access_log(self):
        return self.tail(self.access_log_path, 10 ** 7)

    def all_logs(self):
        return self.error_log() + self.access_log() + self.tail(self.stderr_path, 10 ** 7)
