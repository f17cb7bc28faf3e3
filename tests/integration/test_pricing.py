"""price.estimate over the socket against hand-computed values (SPEC §7):
cost = max(min_micros, base_micros + sum of ceil(quantity * micros / units)),
missing optional params count 0, min_micros 1 by default on a paid service
(issue 10: a paid model never prices at 0 by accident); an unpriced or negative param, an overflow, an unknown service or
model is bad_request. Also a seeded random sweep against an independent
Python implementation of the same formula, on a catalog with odd prices."""
import os
import random
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import kgtest  # noqa: E402

I64 = 2 ** 63 - 1

# (service, model, params, cost, [(param, quantity, subtotal)]) on tests/data/catalog.json
CASES = [
    ("speech-to-text", "fast", {}, 100, [("audio_seconds", 0, 0)]),
    ("speech-to-text", "fast", {"audio_seconds": 0}, 100, [("audio_seconds", 0, 0)]),
    ("speech-to-text", "fast", {"audio_seconds": 1}, 140, [("audio_seconds", 1, 40)]),
    ("speech-to-text", "fast", {"audio_seconds": 10}, 500, [("audio_seconds", 10, 400)]),
    # a paid model's floor: min_micros defaults to 1 (docs/module.md)
    ("text-generation", "small", {}, 1, [("input_tokens", 0, 0), ("output_tokens", 0, 0)]),
    ("text-generation", "small", {"input_tokens": 0, "output_tokens": 0}, 1,
     [("input_tokens", 0, 0), ("output_tokens", 0, 0)]),
    # rounding up: 1 * 150 / 1000 = 0.15 -> 1; 1 * 600 / 1000 -> 1
    ("text-generation", "small", {"input_tokens": 1, "output_tokens": 1}, 2,
     [("input_tokens", 1, 1), ("output_tokens", 1, 1)]),
    ("text-generation", "small", {"input_tokens": 1000, "output_tokens": 1000}, 750,
     [("input_tokens", 1000, 150), ("output_tokens", 1000, 600)]),
    # 1001 * 150 / 1000 = 150.15 -> 151
    ("text-generation", "small", {"input_tokens": 1001}, 151,
     [("input_tokens", 1001, 151), ("output_tokens", 0, 0)]),
    # 7*150 = 1050 -> 2; 3*600 = 1800 -> 2 (params in any order)
    ("text-generation", "small", {"output_tokens": 3, "input_tokens": 7}, 4,
     [("input_tokens", 7, 2), ("output_tokens", 3, 2)]),
    # exact multiples do not round up: 20000 * 150 / 1000 = 3000
    ("text-generation", "small", {"input_tokens": 20000}, 3000,
     [("input_tokens", 20000, 3000), ("output_tokens", 0, 0)]),
    # 123456 * 900 / 1000 = 111110.4 -> 111111; 7890 * 3 = 23670; + 500
    ("text-generation", "large", {"input_tokens": 123456, "output_tokens": 7890}, 135281,
     [("input_tokens", 123456, 111111), ("output_tokens", 7890, 23670)]),
    ("text-generation", "large", {}, 500, [("input_tokens", 0, 0), ("output_tokens", 0, 0)]),
    # large values: 10^15 * 150 / 1000 = 1.5e14
    ("text-generation", "small", {"input_tokens": 10 ** 15}, 150000000000000,
     [("input_tokens", 10 ** 15, 150000000000000), ("output_tokens", 0, 0)]),
    # 2^62 * 150 / 1000 = 691752902764108185.6 -> ...186 (needs more than 64-bit intermediates)
    ("text-generation", "small", {"input_tokens": 2 ** 62}, 691752902764108186,
     [("input_tokens", 2 ** 62, 691752902764108186), ("output_tokens", 0, 0)]),
    # the largest quantity: (2^63-1) * 900 / 1000 = 8301034833169298226.3 -> ...227, + 500
    ("text-generation", "large", {"input_tokens": I64}, 8301034833169298227 + 500,
     [("input_tokens", I64, 8301034833169298227), ("output_tokens", 0, 0)]),
    # the sum lands one micro under INT64_MAX: no overflow
    ("text-generation", "large", {"input_tokens": I64, "output_tokens": 307445734561825693}, I64 - 1,
     [("input_tokens", I64, 8301034833169298227), ("output_tokens", 307445734561825693, 922337203685477079)]),
    # both at the maximum, no overflow: ceil(I64 * 0.15) + ceil(I64 * 0.6)
    ("text-generation", "small", {"input_tokens": I64, "output_tokens": I64}, 6917529027641081857,
     [("input_tokens", I64, 1383505805528216372), ("output_tokens", I64, 5534023222112865485)]),
    # (2^63-1) * 600 / 1000 -> 5534023222112865485 (ceil of ...484.2)
    ("text-generation", "small", {"output_tokens": I64}, 5534023222112865485,
     [("input_tokens", 0, 0), ("output_tokens", I64, 5534023222112865485)]),
]

BAD = [
    # overflow of one term: (2^63-1) * 3000 / 1000 > 2^63-1
    ("text-generation", "large", {"output_tokens": I64}),
    # overflow of the sum (each term fits)
    ("text-generation", "large", {"input_tokens": I64, "output_tokens": 10 ** 18}),
    # base + term overflows
    ("text-generation", "large", {"input_tokens": I64, "output_tokens": 307445734561825694}),
    # quantity beyond int64 (JSON integer too big)
    ("text-generation", "small", {"input_tokens": 2 ** 63}),
    ("text-generation", "small", {"input_tokens": 2 ** 64 + 5}),
    # negative
    ("text-generation", "small", {"input_tokens": -1}),
    ("speech-to-text", "fast", {"audio_seconds": -100}),
    ("text-generation", "small", {"input_tokens": 5, "output_tokens": -1}),
    # unknown param, param of another model/service
    ("text-generation", "small", {"images": 1}),
    ("text-generation", "small", {"audio_seconds": 1}),
    ("speech-to-text", "fast", {"input_tokens": 1}),
    # not integers
    ("text-generation", "small", {"input_tokens": 1.5}),
    ("text-generation", "small", {"input_tokens": "10"}),
    ("text-generation", "small", {"input_tokens": None}),
    ("text-generation", "small", {"input_tokens": True}),
    ("text-generation", "small", {"input_tokens": [1]}),
    # unknown service / model, model of another service
    ("image-generation", "small", {}),
    ("text-generation", "huge", {}),
    ("text-generation", "fast", {}),
    ("speech-to-text", "small", {}),
]


def ceil_div(a, b):
    return -((-a) // b)


def py_price(model, params, free):
    total = model["price"]["base_micros"]
    lines = []
    for r in model["price"]["per"]:
        q = params.get(r["param"], 0)
        sub = ceil_div(q * r["micros"], r["units"])
        total += sub
        lines.append({"param": r["param"], "quantity": q, "subtotal_micros": sub})
    return max(total, model["price"].get("min_micros", 0 if free else 1)), lines


ODD_CATALOG = {
    "currency": "EUR",
    "services": [
        {"id": "ocr", "name": "OCR", "free": True, "free_quota": {"requests_per_day": 5},
         "models": [{"id": "v1", "price": {"base_micros": 7, "per": [
             {"param": "pages", "micros": 333, "units": 7},
             {"param": "dpi", "micros": 1, "units": 3},
             {"param": "kb", "micros": 999999, "units": 1000003}]}},
                    {"id": "flat", "price": {"base_micros": 12345, "per": []}}]},
        {"id": "embed", "name": "Embeddings", "free": False,
         "models": [{"id": "e-1", "price": {"base_micros": 0, "per": [
             {"param": "tokens", "micros": 13, "units": 1000000}]}}]},
    ],
}


class Pricing(kgtest.EnvCase):

    def test_cases(self):
        for svc, model, params, cost, lines in CASES:
            r = self.c.ok("price.estimate", service=svc, model=model, params=params)
            self.assertEqual(r["cost_micros"], cost, (svc, model, params))
            self.assertEqual(r["breakdown"], [{"param": p, "quantity": q, "subtotal_micros": s}
                                              for p, q, s in lines], (svc, model, params))
            self.assertEqual(r["currency"], "USD")
            base = {"fast": 100, "small": 0, "large": 500}[model]
            self.assertEqual(r["base_micros"], base)
            # the hand values agree with the formula
            s = [s for s in self.env.catalog()["services"] if s["id"] == svc][0]
            m = [x for x in s["models"] if x["id"] == model][0]
            self.assertEqual(py_price(m, params, s["free"])[0], cost)

    def test_bad(self):
        for svc, model, params in BAD:
            r = self.c.call("price.estimate", service=svc, model=model, params=params)
            self.assertEqual(r["ok"], False, (svc, model, params, r))
            self.assertEqual(r["error"]["code"], "bad_request", (svc, model, params, r))
        self.assertEqual(self.c.ok("ping"), {})

    def test_no_actor_needed_and_actor_ignored(self):
        s = kgtest.signup(self.c)
        r1 = self.c.ok("price.estimate", service="speech-to-text", model="fast", params={"audio_seconds": 3})
        r2 = self.c.ok("price.estimate", s["user_id"], service="speech-to-text", model="fast",
                       params={"audio_seconds": 3})
        self.assertEqual(r1, r2)
        self.assertEqual(r1["cost_micros"], 220)


class PricingOddCatalog(kgtest.EnvCase):
    env_args = {"catalog": ODD_CATALOG}

    def test_random_sweep(self):
        rnd = random.Random(20240601)
        models = [(s["id"], s["free"], m) for s in ODD_CATALOG["services"] for m in s["models"]]
        for i in range(400):
            svc, free, m = rnd.choice(models)
            params = {}
            for r in m["price"]["per"]:
                if rnd.random() < 0.8:
                    params[r["param"]] = rnd.choice([0, 1, 2, 3, 6, 7, 8, 999, 1000003, 10 ** 12,
                                                     rnd.randrange(0, 10 ** 6),
                                                     rnd.randrange(0, 2 ** 40)])
            cost, lines = py_price(m, params, free)
            r = self.c.ok("price.estimate", service=svc, model=m["id"], params=params)
            self.assertEqual(r["cost_micros"], cost, (svc, m["id"], params))
            self.assertEqual(r["breakdown"], lines, (svc, m["id"], params))
            self.assertEqual(r["currency"], "EUR")

    def test_model_without_params(self):
        r = self.c.ok("price.estimate", service="ocr", model="flat", params={})
        self.assertEqual((r["cost_micros"], r["breakdown"], r["base_micros"]), (12345, [], 12345))
        self.assertEqual(self.c.err("price.estimate", service="ocr", model="flat", params={"pages": 1}),
                         "bad_request")

    def test_tiny_prices_round_up(self):
        r = self.c.ok("price.estimate", service="embed", model="e-1", params={"tokens": 1})
        self.assertEqual(r["cost_micros"], 1)
        r = self.c.ok("price.estimate", service="embed", model="e-1", params={"tokens": 1000000})
        self.assertEqual(r["cost_micros"], 13)
        r = self.c.ok("price.estimate", service="embed", model="e-1", params={"tokens": 1000001})
        self.assertEqual(r["cost_micros"], 14)


if __name__ == "__main__":
    unittest.main()
