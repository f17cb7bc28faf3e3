"""No secret at rest: after a run that generates, rotates (with and without
grace), revokes, unassigns and removes, a scan of every Redis key and value
finds no plain token and no pepper (hex, upper hex or raw bytes); the
daemon's log holds neither; audit entries and admin answers never hold a
token's keyed hash."""
import json
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import kgtest  # noqa: E402
from kgtest import signup  # noqa: E402


class Secrets(kgtest.EnvCase):

    def test_no_secret_in_redis_or_log(self):
        c = self.c
        tokens, hashes, answers = [], [], []

        def keep(r):
            answers.append(json.dumps(r))
            return r

        for i in range(6):
            o = signup(c)
            a, team = o["user_id"], o["team_id"]
            u = signup(c)
            c.ok("team.member.add", a, team=team, user=u["user_id"], role="user")
            w = c.ok("wallet.create", a, team=team, name="w")["wallet_id"]
            c.ok("wallet.credit", a, wallet=w, amount_micros=10 ** 6, reference="t%d" % i)
            k = c.ok("key.create", a, team=team, name="k", users=[a, u["user_id"]], services={
                "text-generation": {"policy": "payg", "models": ["small", "large"], "wallet": w}})["key_id"]
            for key in (k, o["free_key_id"]):
                if key == o["free_key_id"]:
                    c.ok("key.users.set", a, key=key, users=[a, u["user_id"]], notify=True)
                for who in (a, u["user_id"]):
                    tokens.append(c.ok("token.generate", who, key=key)["token"])
                tokens.append(c.ok("token.rotate", a, key=key)["token"])
                tokens.append(c.ok("token.rotate", a, key=key, user=u["user_id"], grace_seconds=3600)["token"])
                tokens.append(c.ok("token.rotate", u["user_id"], key=key, grace_seconds=0)["token"])
            for key in (k, o["free_key_id"]):
                keep(c.ok("key.get", a, key=key))
            keep(c.ok("key.list", a, team=team))
            if i % 3 == 0:
                c.ok("key.revoke", a, key=k)
            elif i % 3 == 1:
                c.ok("key.users.set", a, key=k, users=[a], notify=True)
            else:
                c.ok("team.member.remove", a, team=team, user=u["user_id"])
            keep(c.ok("audit.list", a, team=team))
            keep(c.ok("notification.list", u["user_id"]))
            keep(c.ok("wallet.ledger", a, wallet=w))
            # failed attempts that carry a token-shaped value in their arguments
            c.call("token.generate", a, key=tokens[-1])
            c.call("key.get", tokens[-2], key=k)

        self.assertEqual(len(set(tokens)), len(tokens))
        hashes = [kgtest.token_hash(self.env.pepper_bytes, t) for t in tokens]

        needles = tokens + [t[3:] for t in tokens] + self.env.pepper_needles()
        found = self.env.find_secrets_in_redis(needles)
        self.assertEqual(found, [], "secrets found in Redis")

        log = self.env.daemon_log()
        for t in tokens:
            self.assertNotIn(t, log)
            self.assertNotIn(t[3:20], log)
        self.assertNotIn(self.env.pepper_hex, log)
        self.assertNotIn(self.env.pepper_hex.upper(), log)

        # hashes: only as tok:<hash> key names and in key documents' tokens.*.hash
        snap = self.env.redis_scan_all()
        for k, vals in snap.items():
            if k.endswith(b":audit") or k.startswith(b"kg:notif:") or b":ledger:" in k:
                for v in vals:
                    for h in hashes:
                        self.assertNotIn(h.encode(), v, k)
        for blob in answers:
            for h in hashes:
                self.assertNotIn(h, blob)
            for t in tokens:
                self.assertNotIn(t, blob)

    def test_errors_do_not_echo_tokens(self):
        o = signup(self.c)
        tok = self.c.ok("token.generate", o["user_id"], key=o["free_key_id"])["token"]
        for cmd, args in (("key.get", {"key": tok}), ("token.rotate", {"key": o["free_key_id"], "user": tok}),
                          ("team.get", {"team": tok})):
            r = self.c.call(cmd, o["user_id"], **args)
            self.assertEqual(r["ok"], False)
            self.assertNotIn(tok, json.dumps(r))
        r = self.c.call("key.get", tok, key=o["free_key_id"])
        self.assertEqual(r["error"]["code"], "unauthenticated")
        self.assertNotIn(tok, json.dumps(r))
        self.assertNotIn(tok, self.env.daemon_log())
        self.assertEqual(self.env.find_secrets_in_redis([tok]), [])


if __name__ == "__main__":
    unittest.main()
