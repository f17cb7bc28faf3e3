"""keygated's Prometheus metrics: GET /metrics on the console listener and
on the `metrics` listener alone; counts that follow what was sent."""
import os
import re
import signal
import sys
import unittest
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import kgtest  # noqa: E402


def parse(text):
    """{(name, frozenset(labels)): value}; checks one HELP and TYPE per name."""
    out, helps, types = {}, set(), set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split()[2]
            assert name not in helps, "two HELP lines for " + name
            helps.add(name)
            continue
        if line.startswith("# TYPE "):
            name = line.split()[2]
            assert name not in types, "two TYPE lines for " + name
            types.add(name)
            continue
        m = re.fullmatch(r'([a-z_]+)(?:\{(.*)\})? (\S+)', line)
        assert m, "bad line: %r" % line
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


class Metrics(kgtest.EnvCase):
    env_args = {"extra_config": ["http 127.0.0.1:0", "metrics 127.0.0.1:0"]}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.mport = cls.env.listen_port("metrics")
        cls.hport = cls.env.listen_port("console")

    def scrape(self, port=None):
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % (port or self.mport),
                                    timeout=10) as r:
            self.assertEqual(r.status, 200)
            self.assertTrue(r.headers["Content-Type"].startswith("text/plain; version=0.0.4"))
            return parse(r.read().decode())

    @staticmethod
    def get(m, name, **labels):
        return m.get((name, frozenset(labels.items())), 0.0)

    def test_commands_by_outcome(self):
        before = self.scrape()
        t = kgtest.make_team(self.c, admins=0, users=1, outsiders=0)
        for _ in range(7):
            self.c.ok("ping")
        for _ in range(3):
            self.assertEqual(self.c.err("key.create", t["users"][0], team=t["team"], name="x"),
                             "forbidden")
        self.assertEqual(self.c.call("no.such.command")["error"]["code"], "unknown_command")
        after = self.scrape()
        d = lambda name, **kw: self.get(after, name, **kw) - self.get(before, name, **kw)  # noqa: E731
        self.assertEqual(d("keygated_commands_total", command="ping", outcome="ok"), 7)
        self.assertEqual(d("keygated_commands_total", command="key.create", outcome="forbidden"), 3)
        self.assertEqual(d("keygated_commands_total", command="user.signup", outcome="ok"), 2)
        self.assertEqual(d("keygated_commands_total", command="unknown",
                           outcome="unknown_command"), 1)
        self.assertEqual(d("keygated_command_duration_seconds_count", command="ping"), 7)
        self.assertEqual(self.get(after, "keygated_command_duration_seconds_bucket",
                                  command="ping", le="+Inf"),
                         self.get(after, "keygated_command_duration_seconds_count", command="ping"))
        self.assertGreater(d("keygated_redis_round_trips_total"), 0)

    def test_clients_gauge_and_reloads(self):
        base = self.get(self.scrape(), "keygated_admin_clients")
        extra = [self.env.client() for _ in range(4)]
        for c in extra:
            c.ok("ping")
        self.assertEqual(self.get(self.scrape(), "keygated_admin_clients"), base + 4)
        for c in extra:
            c.close()
        kgtest._wait_for(lambda: self.get(self.scrape(), "keygated_admin_clients") == base, 5,
                         "the gauge to come back")
        r0 = self.get(self.scrape(), "keygated_catalog_reloads_total")
        self.env.signal_daemon(signal.SIGHUP)
        kgtest._wait_for(lambda: self.get(self.scrape(), "keygated_catalog_reloads_total") == r0 + 1,
                         5, "the reload to count")

    def test_console_listener_serves_it_too_and_the_other_paths_are_404(self):
        m = self.scrape(self.hport)
        self.assertIn(("keygated_admin_clients", frozenset()), m)
        with self.assertRaises(urllib.error.HTTPError) as e:
            urllib.request.urlopen("http://127.0.0.1:%d/" % self.mport, timeout=10)
        self.assertEqual(e.exception.code, 404)
        with self.assertRaises(urllib.error.HTTPError) as e:
            urllib.request.urlopen("http://127.0.0.1:%d/api/ping" % self.mport, data=b"{}",
                                   timeout=10)
        self.assertIn(e.exception.code, (404, 405))


if __name__ == "__main__":
    unittest.main()
