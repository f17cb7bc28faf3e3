"""Pipelined mutations of one connection take effect in the order they were
sent: [token.generate K, key.update K, key.revoke K] on one connection must
rename the key and then revoke it, never refuse the rename because of the
revocation that was sent after it.

Found by tests/faults/test_daemon_kill.py: with the optimistic window full
(32 mutations active), a command re-run after a conflict used to commit
after a later command of the same connection. The engine now lets commands
decide in arrival order (daemon/job.c, parking)."""
import json
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safety  # noqa: E402
from safety import kgtest  # noqa: E402


class PipelineOrder(kgtest.EnvCase):

    def test_pipelined_mutations_apply_in_order(self):
        c = self.c
        o = kgtest.signup(c)
        a, team = o["user_id"], o["team_id"]
        w = c.ok("wallet.create", a, team=team, name="w")["wallet_id"]
        refused = []
        for fill in range(0, 66):
            k = c.ok("key.create", a, team=team, name="k", users=[a])["key_id"]
            reqs = [{"id": "f%d" % n, "cmd": "wallet.credit", "actor": a, "wallet": w,
                     "amount_micros": 1, "reference": "f-%d-%d" % (fill, n)} for n in range(fill)]
            reqs += [{"id": "gen", "cmd": "token.generate", "actor": a, "key": k},
                     {"id": "upd", "cmd": "key.update", "actor": a, "key": k, "name": "renamed"},
                     {"id": "rev", "cmd": "key.revoke", "actor": a, "key": k}]
            c.send_raw("".join(json.dumps(r) + "\n" for r in reqs).encode())
            answers = [c.read_json() for _ in reqs]
            self.assertTrue(all(r["ok"] for r in answers[:-2]), answers)
            if not answers[-2]["ok"]:
                refused.append((fill, answers[-2]["error"]["code"]))
            doc = c.ok("key.get", a, key=k)
            self.assertEqual(doc["status"], "revoked")
        safety.assert_clean(self, self.env)
        self.assertEqual(refused, [], "key.update refused although key.revoke was sent after it "
                                      "(fill = mutations pipelined ahead)")


if __name__ == "__main__":
    unittest.main()
