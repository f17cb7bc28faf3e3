"""Catalog (SPEC §7; issue 3): a bad catalog is refused at start (keygated
exits non-zero with a message naming the file and the field); on SIGHUP a
bad catalog is refused, the old one keeps serving and the reason is logged;
a good one is applied, published to Redis (kg:catalog) and announced on
kg:inval ("catalog"). Also config-file errors at start."""
import copy
import json
import os
import signal
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import kgtest  # noqa: E402
from kgtest import signup  # noqa: E402

with open(kgtest.DEFAULT_CATALOG) as _f:
    GOOD = json.load(_f)


def mutate(fn):
    c = copy.deepcopy(GOOD)
    fn(c)
    return c


def svc(c, i):
    return c["services"][i]


# (label, catalog (dict or text), words the message must contain besides the file path)
BAD_CATALOGS = [
    ("not JSON", '{"currency": "USD", "services": [', []),
    ("not an object", "[1, 2]", []),
    ("currency missing", mutate(lambda c: c.pop("currency")), ["currency"]),
    ("services missing", mutate(lambda c: c.pop("services")), ["services"]),
    ("services empty", mutate(lambda c: c.update(services=[])), ["services"]),
    ("service id missing", mutate(lambda c: svc(c, 0).pop("id")), ["id"]),
    ("service name not a string", mutate(lambda c: svc(c, 1).update(name=5)), ["text-generation", "name"]),
    ("free not a bool", mutate(lambda c: svc(c, 0).update(free="yes")), ["speech-to-text", "free"]),
    ("models empty", mutate(lambda c: svc(c, 1).update(models=[])), ["text-generation", "models"]),
    ("base_micros negative",
     mutate(lambda c: svc(c, 1)["models"][1]["price"].update(base_micros=-1)),
     ["text-generation", "large", "base_micros"]),
    ("base_micros a float",
     mutate(lambda c: svc(c, 0)["models"][0]["price"].update(base_micros=1.5)),
     ["speech-to-text", "fast", "base_micros"]),
    ("units zero",
     mutate(lambda c: svc(c, 1)["models"][0]["price"]["per"][1].update(units=0)),
     ["text-generation", "small", "units"]),
    ("micros negative",
     mutate(lambda c: svc(c, 1)["models"][0]["price"]["per"][0].update(micros=-3)),
     ["text-generation", "small", "micros"]),
    ("param missing",
     mutate(lambda c: svc(c, 0)["models"][0]["price"]["per"][0].pop("param")),
     ["speech-to-text", "fast", "param"]),
    ("duplicate service", mutate(lambda c: c["services"].append(copy.deepcopy(svc(c, 0)))),
     ["speech-to-text"]),
    ("duplicate model",
     mutate(lambda c: svc(c, 1)["models"].append(copy.deepcopy(svc(c, 1)["models"][0]))),
     ["text-generation", "small"]),
    ("free_quota bad",
     mutate(lambda c: svc(c, 0).update(free_quota={"requests_per_day": -1})),
     ["speech-to-text", "requests_per_day"]),
]

NEW_SERVICE = {"id": "image-generation", "name": "Images", "free": True,
               "free_quota": {"requests_per_day": 10},
               "models": [{"id": "sd", "price": {"base_micros": 2000,
                                                  "per": [{"param": "images", "micros": 5000, "units": 1}]}}]}


class StartErrors(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.env = kgtest.Env(start_daemon=False)

    @classmethod
    def tearDownClass(cls):
        cls.env.close()
        kgtest.check_clean_exit(cls.env)

    def setUp(self):
        self.env.write_config()
        self.env.write_catalog(GOOD)

    def test_bad_catalogs_refused_at_start(self):
        for label, cat, words in BAD_CATALOGS:
            self.env.write_catalog(cat if isinstance(cat, str) else json.dumps(cat))
            rc, log = self.env.run_daemon_to_exit(10)
            self.assertNotEqual(rc, 0, label)
            self.assertIn(self.env.catalog_path, log, "%s: file not named in %r" % (label, log))
            for w in words:
                self.assertIn(w, log, "%s: %r not named in %r" % (label, w, log))
            self.assertFalse(os.path.exists(self.env.socket_path) and self._accepts(), label)

    def _accepts(self):
        try:
            kgtest.Client(self.env.socket_path, timeout=1).close()
            return True
        except OSError:
            return False

    def test_missing_catalog_file(self):
        os.unlink(self.env.catalog_path)
        rc, log = self.env.run_daemon_to_exit(10)
        self.assertNotEqual(rc, 0)
        self.assertIn(self.env.catalog_path, log)

    def test_unknown_config_key(self):
        self.env.write_config(["frobnicate yes"])
        rc, log = self.env.run_daemon_to_exit(10)
        self.assertNotEqual(rc, 0)
        self.assertIn("frobnicate", log)
        self.assertIn(self.env.config_path + ":8", log)  # 7 standard lines, then ours

    def test_missing_config_file(self):
        rc, log = self.env.run_daemon_to_exit(10, args=["--config", self.env.tmp + "/nope.conf"])
        self.assertNotEqual(rc, 0)
        self.assertIn("nope.conf", log)

    def test_world_readable_pepper(self):
        os.chmod(self.env.pepper_path, 0o644)
        try:
            rc, log = self.env.run_daemon_to_exit(10)
        finally:
            os.chmod(self.env.pepper_path, 0o600)
        self.assertNotEqual(rc, 0)
        self.assertIn(self.env.pepper_path, log)
        self.assertNotIn(self.env.pepper_hex, log)

    def test_good_start_publishes_catalog(self):
        self.env.start_daemon()
        try:
            self.assertEqual(json.loads(self.env.redis("GET", "kg:catalog")), GOOD)
        finally:
            self.env.kill_daemon()


class Reload(kgtest.EnvCase):

    def reload(self):
        self.env.signal_daemon(signal.SIGHUP)

    def wait_services(self, ids, timeout=5.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = [s["id"] for s in self.c.ok("service.list")["services"]]
            if got == ids:
                return
            time.sleep(0.05)
        self.fail("service.list never became %r (is %r)" % (ids, got))

    def test_a_bad_reload_keeps_old(self):
        self.env.write_catalog(GOOD)
        cat_before = self.env.redis("GET", "kg:catalog")
        for label, cat, words in BAD_CATALOGS[:4] + BAD_CATALOGS[9:12]:
            start = len(self.env.daemon_log())
            sub = self.env.subscribe()
            self.env.write_catalog(cat if isinstance(cat, str) else json.dumps(cat))
            self.reload()
            log = self.env.wait_log(self.env.catalog_path, timeout=5, start=start)[start:]
            for w in words:
                self.assertIn(w, log, "%s: %r not in the reload log %r" % (label, w, log))
            self.assertTrue(self.env.daemon_alive(), label)
            self.assertEqual(self.c.ok("service.list"), GOOD, label)
            self.assertEqual(self.c.ok("price.estimate", service="text-generation", model="large",
                                       params={"input_tokens": 1000})["cost_micros"], 1400, label)
            self.assertEqual(self.env.redis("GET", "kg:catalog"), cat_before, label)
            self.assertNotIn("catalog", sub.drain(0.2), label)
            sub.close()
        self.env.write_catalog(GOOD)

    def test_b_good_reload_applies(self):
        new = copy.deepcopy(GOOD)
        new["services"].append(NEW_SERVICE)
        new["services"][1]["models"][0]["price"]["per"][0]["micros"] = 300  # price change
        sub = self.env.subscribe()
        self.env.write_catalog(new)
        self.reload()
        self.wait_services(["speech-to-text", "text-generation", "image-generation"])
        sub.wait_for("catalog")
        sub.close()
        self.assertEqual(self.c.ok("service.list"), new)
        self.assertEqual(json.loads(self.env.redis("GET", "kg:catalog")), new)
        self.assertEqual(self.c.ok("price.estimate", service="image-generation", model="sd",
                                   params={"images": 3})["cost_micros"], 17000)
        self.assertEqual(self.c.ok("price.estimate", service="text-generation", model="small",
                                   params={"input_tokens": 1000})["cost_micros"], 300)
        # new sign-ups get every free service of the new catalog on their free key
        s = signup(self.c)
        k = self.c.ok("key.get", s["user_id"], key=s["free_key_id"])
        self.assertEqual(k["services"], {"speech-to-text": {"policy": "free"},
                                         "image-generation": {"policy": "free"}})
        # and keys may enable the new service
        pk = self.c.ok("key.create", s["user_id"], team=s["team_id"], name="p",
                       services={"image-generation": {"policy": "free"}})
        self.assertEqual(pk["services"], {"image-generation": {"policy": "free"}})
        # back to the original
        self.env.write_catalog(GOOD)
        self.reload()
        self.wait_services(["speech-to-text", "text-generation"])
        self.assertEqual(self.c.err("price.estimate", service="image-generation", model="sd",
                                    params={}), "bad_request")

    def test_d_reload_storm_under_load(self):
        """SIGHUPs while clients work: nothing is dropped, nothing crashes."""
        import threading
        errors = []
        stop = threading.Event()

        def load(i):
            try:
                c = kgtest.Client(self.env.socket_path, timeout=10)
                s = signup(c)
                n = 0
                while not stop.is_set():
                    c.ok("key.create", s["user_id"], team=s["team_id"], name="r%d" % n)
                    c.ok("price.estimate", service="text-generation", model="small",
                         params={"input_tokens": 1000})
                    n += 1
                c.close()
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))
        threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for _ in range(30):
            self.reload()
            time.sleep(0.02)
        stop.set()
        for t in threads:
            t.join(20)
        self.assertEqual(errors, [])
        self.assertTrue(self.env.daemon_alive())
        self.assertEqual(self.c.ok("service.list"), GOOD)

    def test_c_reload_with_missing_file(self):
        start = len(self.env.daemon_log())
        os.rename(self.env.catalog_path, self.env.catalog_path + ".away")
        try:
            self.reload()
            self.env.wait_log(self.env.catalog_path, timeout=5, start=start)
            self.assertTrue(self.env.daemon_alive())
            self.assertEqual(self.c.ok("service.list"), GOOD)
        finally:
            os.rename(self.env.catalog_path + ".away", self.env.catalog_path)


if __name__ == "__main__":
    unittest.main()
