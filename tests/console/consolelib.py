"""consolelib - helpers of the console tests: a keygated with its HTTP
listener on a free loopback port, and a small HTTP client that keeps a
session cookie and a CSRF token like the page does.

Python 3 standard library only; the environment comes from
tests/lib/kgtest.py (redis-server + keygated in a temp dir).
"""

import http.client
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import kgtest  # noqa: E402

CONSOLE_DIR = os.path.abspath(os.path.join(HERE, "..", "..", "daemon", "console"))


def console_env(**kw):
    """A kgtest.Env whose keygated serves the console on 127.0.0.1 at a
    port the kernel picks (port 0); env.http_port is read from its log."""
    extra = list(kw.pop("extra_config", []) or [])
    # Many sign-ups come from 127.0.0.1 here: a test of the limit sets its own.
    env = kgtest.Env(extra_config=["http 127.0.0.1:0", "signup_per_minute 100000"] + extra, **kw)
    try:
        env.http_port = env.listen_port("console")
    except BaseException:
        env.close()
        raise
    return env


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers          # {lower-case name: value}; Set-Cookie kept whole
        self.raw = body
        try:
            self.json = json.loads(body) if body else None
        except ValueError:
            self.json = None

    @property
    def ok(self):
        return isinstance(self.json, dict) and self.json.get("ok") is True

    @property
    def result(self):
        return self.json.get("result") if self.ok else None

    @property
    def code(self):
        if isinstance(self.json, dict) and isinstance(self.json.get("error"), dict):
            return self.json["error"].get("code")
        return None

    @property
    def message(self):
        return self.json["error"]["message"] if self.code else None

    def __repr__(self):
        return "<HTTP %d %s>" % (self.status, self.raw[:300])


class Browser:
    """A client of the console API: keeps the cookie the server sets and
    sends the CSRF token it got from session.login / session.whoami."""

    def __init__(self, port):
        self.port = port
        self.cookie = None       # "kg_session=..." or None
        self.csrf = None
        self.user = None

    def request(self, method, path, body=None, headers=None, raw=None):
        h = {}
        if self.cookie:
            h["Cookie"] = self.cookie
        h.update(headers or {})
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
            c.request(method, path, data, h)
            r = c.getresponse()
            hdrs = {}
            for k, v in r.getheaders():
                hdrs[k.lower()] = v
            resp = Response(r.status, hdrs, r.read())
        finally:
            c.close()
        sc = resp.headers.get("set-cookie")
        if sc:
            pair = sc.split(";")[0]
            self.cookie = None if pair.endswith("=") else pair
        return resp

    def api(self, cmd, csrf=True, **args):
        h = {"Content-Type": "application/json"}
        if csrf and self.csrf:
            h["X-CSRF-Token"] = self.csrf
        return self.request("POST", "/api/" + cmd, args, h)

    def ok(self, cmd, **args):
        r = self.api(cmd, **args)
        if not r.ok:
            raise AssertionError("%s failed: %r" % (cmd, r))
        return r.result

    def login(self, email, password):
        r = self.api("session.login", email=email, password=password)
        if r.ok:
            self.csrf = r.result["csrf_token"]
            self.user = r.result["user"]
        return r

    def session_id(self):
        return self.cookie.split("=", 1)[1] if self.cookie else None


def signup_http(port, name="Test User", password="correct horse battery", team_name=None, email=None):
    """Signs up over HTTP and signs in; returns (Browser, signup result)."""
    b = Browser(port)
    email = email or kgtest.unique_email("web")
    args = {"email": email, "name": name, "password": password}
    if team_name:
        args["team_name"] = team_name
    s = b.ok("user.signup", **args)
    r = b.login(email, password)
    if not r.ok:
        raise AssertionError("login after signup failed: %r" % r)
    s = dict(s, email=email, password=password)
    return b, s
