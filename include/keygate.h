/*
 * keygate.h - the gateway ABI of libkeygate.
 *
 * A PAM-style module: a gateway loads libkeygate (linked or dlopen()ed),
 * opens one kg_ctx per thread from a config file, and asks kg_authorize()
 * about each request. The names and meanings below are a stable ABI: new
 * symbols may be added, none written here is ever changed.
 *
 * Thread rules: a kg_ctx is used by one thread at a time. Open one per
 * thread (or per nginx worker process); contexts share nothing.
 */
#ifndef KEYGATE_H
#define KEYGATE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KG_ABI_VERSION 1

#if defined(KG_BUILDING_LIBRARY)
#define KG_EXPORT __attribute__((visibility("default")))
#else
#define KG_EXPORT
#endif

typedef struct kg_ctx kg_ctx;              /* opaque; one per thread */

typedef enum kg_status {
    KG_OK = 0,
    KG_TOKEN_MALFORMED,    /* 401 bad format or checksum; no store lookup  */
    KG_TOKEN_UNKNOWN,      /* 401 never issued, rotated away, unassigned   */
    KG_KEY_REVOKED,        /* 401                                          */
    KG_SERVICE_DISABLED,   /* 403 service not enabled on the key           */
    KG_MODEL_DENIED,       /* 403 model not allowed under the key's policy */
    KG_QUOTA_EXCEEDED,     /* 429 free-tier quota used up                  */
    KG_INSUFFICIENT_FUNDS, /* 402 wallet balance below the request's cost  */
    KG_BAD_REQUEST,        /* 400 unknown service/model/param, bad args    */
    KG_BACKEND_ERROR,      /* 503 store unreachable or timed out           */
    /* Appended in ABI version 1 (values above never change). A host built
     * against an older header may see values it has no name for: it must
     * treat any status other than KG_OK as a refusal, and can still ask
     * kg_http_status/kg_status_code/kg_strerror about it. */
    KG_REQUEST_ID_CONFLICT, /* 409 request_id already used by a different
                              request (other user, service, model or
                              params) of the same key: refused, never served */
    KG_KEY_EXPIRED,        /* 401 the key's expires_at has passed (paid keys) */
    KG_BUDGET_EXCEEDED,    /* 402 the key's daily or monthly spend cap would be
                              passed by this request's cost or hold */
    KG_RATE_LIMITED        /* 429 the key's per-second or per-minute limit for
                              the service is reached: retry later
                              (kg_hold.retry_after_ms says when) */
} kg_status;

typedef struct kg_param { const char *name; int64_t value; } kg_param;

typedef struct kg_request {
    const char *token;  size_t token_len;
    const char *service;
    const char *model;            /* NULL if the service has none */
    const kg_param *params; size_t nparams;
    const char *request_id;       /* NULL, or: a retry with this id is never charged twice */
} kg_request;

typedef struct kg_result {
    kg_status status;
    char key_id[64], team_id[64], user_id[64], wallet_id[64];
    int64_t cost_micros;          /* charged by this call; 0 when free, denied or replayed */
    int64_t balance_micros;       /* wallet balance after the call; -1 when no wallet      */
    int replayed;                 /* 1: the same request_id with the same request seen
                                     before: nothing charged again (KG_OK). The same id
                                     with a different request is KG_REQUEST_ID_CONFLICT */
} kg_result;

/* Opens a context from a config file (SPEC §7 format). On failure returns
 * NULL and writes a human-readable reason into err (if err != NULL). The
 * store is connected lazily: kg_open does not fail because Redis is down. */
KG_EXPORT kg_ctx     *kg_open(const char *config_path, char *err, size_t errlen);

/* Blocking form: answers one request, waiting at most timeout_ms for the
 * store per round trip. Fills *res (always, even on refusal). */
KG_EXPORT kg_status   kg_authorize(kg_ctx *ctx, const kg_request *req, kg_result *res);

/* Frees the context and everything it owns. Accepts NULL. Pending
 * non-blocking requests complete with KG_BACKEND_ERROR before it returns. */
KG_EXPORT void        kg_close(kg_ctx *ctx);

KG_EXPORT const char *kg_strerror(kg_status s);    /* static string, never NULL */
KG_EXPORT int         kg_http_status(kg_status s); /* 200, 401, 402, 403, 429, 400, 503, 409 */

/* ---------------------------------------------------------------------
 * Additions (ABI version 1).
 * ------------------------------------------------------------------- */

/* Machine-readable short code of a status, e.g. "insufficient_funds";
 * used in the JSON bodies of HTTP adapters. Static string. */
KG_EXPORT const char *kg_status_code(kg_status s);

/* Prices req with the catalog the context charges by (the same code as the
 * daemon's price.estimate), touching no store and no wallet: KG_OK and
 * *cost_micros; KG_BAD_REQUEST for an unknown service, model or param,
 * or a param the catalog marks required left out;
 * KG_BACKEND_ERROR while the context holds no catalog (no request has
 * reached the store yet). Lets a host tell a client refused with
 * KG_INSUFFICIENT_FUNDS what the request would have cost. */
KG_EXPORT kg_status   kg_estimate(kg_ctx *ctx, const kg_request *req, int64_t *cost_micros);

/* The ABI version the library was built with (KG_ABI_VERSION). A host
 * compares it with its own KG_ABI_VERSION at load time. */
KG_EXPORT int         kg_abi_version(void);

/* Counters of one context since kg_open, never reset, for a host's metrics
 * (the nginx module adds every worker's into one shared zone). */
typedef struct kg_stats {
    uint64_t cache_hits;          /* tokens resolved from the in-process cache */
    uint64_t cache_misses;        /* tokens resolved by reading Redis */
    uint64_t invalidations;       /* invalidation messages received */
    uint64_t backend_errors;      /* requests answered KG_BACKEND_ERROR by the
                                     store's fault: unreachable, too slow,
                                     damaged records */
} kg_stats;

/* Copies the context's counters into *st. size is sizeof(kg_stats) as the
 * host knows it: fields added later are left out for an older host, and a
 * newer host's extra fields are zeroed. Accepts ctx NULL (all zero). */
KG_EXPORT void        kg_stats_get(kg_ctx *ctx, kg_stats *st, size_t size);

/* ---------------------------------------------------------------------
 * Non-blocking form, for hosts with an event loop (nginx).
 *
 * The host attaches its loop once with kg_loop_attach(). From then on the
 * library tells the host which file descriptors it wants watched through
 * hooks->watch(host, fd, events): events is a mask of KG_EV_READ and
 * KG_EV_WRITE, and 0 means "stop watching fd" (it is about to be closed).
 * When fd is ready the host calls kg_loop_ready(ctx, fd, events).
 * The host also runs a timer: kg_loop_next_timeout_ms() says how long until
 * the library needs kg_loop_timeout() called (-1: no timer needed).
 *
 * kg_authorize_start() begins one request. If the answer is known at once
 * (malformed token, a refusal decided from a warm cache, ...) it
 * fills *res, returns 0 and never calls done. Otherwise it returns 1 and
 * calls done(arg, res) later from inside kg_loop_ready/kg_loop_timeout/
 * kg_close; *res and the strings of *req must stay valid until then, or
 * until kg_authorize_cancel(ctx, *handle) is called: after a cancel, done
 * is never called and *res is never touched again. Returns -1 if the
 * request could not be started (res->status says why).
 * ------------------------------------------------------------------- */
#define KG_EV_READ  1
#define KG_EV_WRITE 2

typedef struct kg_loop_hooks {
    int version;                                   /* KG_ABI_VERSION */
    void (*watch)(void *host, int fd, int events); /* events 0: forget fd */
} kg_loop_hooks;

typedef struct kg_pending kg_pending;              /* opaque handle */
typedef void (*kg_done_fn)(void *arg, kg_result *res);

KG_EXPORT int  kg_loop_attach(kg_ctx *ctx, const kg_loop_hooks *hooks, void *host);
KG_EXPORT void kg_loop_ready(kg_ctx *ctx, int fd, int events);
KG_EXPORT int  kg_loop_next_timeout_ms(kg_ctx *ctx);
KG_EXPORT void kg_loop_timeout(kg_ctx *ctx);

KG_EXPORT int  kg_authorize_start(kg_ctx *ctx, const kg_request *req, kg_result *res,
                                  kg_done_fn done, void *arg, kg_pending **handle);
KG_EXPORT void kg_authorize_cancel(kg_ctx *ctx, kg_pending *handle);

/* ---------------------------------------------------------------------
 * Reserve and settle (additions, ABI version 1; docs/module.md).
 *
 * A service the catalog marks "settle": true is charged after the
 * response, for what it measured (output tokens, audio seconds). Its
 * payg requests must carry a request_id (KG_BAD_REQUEST without one):
 * it names the hold. kg_authorize then places a hold for the worst-case
 * price instead of a debit: every measured param counts at the value the
 * request gives (the most it may use, e.g. max output tokens) or else at
 * the catalog's "max". Held money is not available to other requests
 * (available = balance − holds, never below zero) but has not left the
 * wallet: kg_result.cost_micros is 0 and balance_micros unchanged.
 *
 * kg_settle then names the same token, service, model and request_id,
 * with params holding the actual quantities (all of them: the request is
 * priced again by the same code): the actual cost, capped at the hold, is
 * debited, the rest released, one ledger entry written;
 * kg_result.cost_micros is the amount charged. A retried settle changes
 * nothing and answers KG_OK with replayed = 1 (cost 0). A hold not
 * settled within hold_ttl_ms (config, default 600000) is captured at its
 * full amount by the next script that touches the wallet; a settle that
 * comes later also answers replayed = 1, cost 0 (kg_hold.captured says
 * why). A settle whose request_id names no hold of the key is
 * KG_BAD_REQUEST. Services without "settle" keep the one-step debit;
 * kg_settle refuses them (KG_BAD_REQUEST).
 *
 * kg_result cannot grow (hosts allocate it, and it has no size field), so
 * what a hold is comes in a separate struct of the host's size, as with
 * kg_stats_get: fields added later are left out for an older host. The
 * _hold forms take it (NULL / 0: not wanted); kg_authorize and
 * kg_authorize_start are these with hold NULL.
 * ------------------------------------------------------------------- */
typedef struct kg_hold {
    int64_t hold_micros;      /* authorize: reserved by this call (0: none, or a
                                 replay of a hold already placed: its amount);
                                 settle: the hold that was settled or captured */
    int64_t available_micros; /* authorize: balance − holds after the call;
                                 -1 when unknown (no hold placed) */
    int64_t expires_ms;       /* authorize: wall-clock ms (the store's clock) at
                                 which the hold is captured unless settled; 0 none */
    int captured;             /* settle: 1 when the hold had expired and was
                                 captured at its full amount (nothing charged now) */
    /* Appended (kg_hold is sized by the host): not about holds, but the one
     * answer struct that can grow. */
    int64_t retry_after_ms;   /* authorize refused KG_RATE_LIMITED: ms until the
                                 oldest request in the full window leaves it
                                 (≥ 1); 0 otherwise */
} kg_hold;

KG_EXPORT kg_status kg_authorize_hold(kg_ctx *ctx, const kg_request *req, kg_result *res,
                                      kg_hold *hold, size_t hold_size);
KG_EXPORT int  kg_authorize_hold_start(kg_ctx *ctx, const kg_request *req, kg_result *res,
                                       kg_hold *hold, size_t hold_size,
                                       kg_done_fn done, void *arg, kg_pending **handle);

/* Blocking settle; fills *res (and *hold, when given) as above. */
KG_EXPORT kg_status kg_settle(kg_ctx *ctx, const kg_request *req, kg_result *res,
                              kg_hold *hold, size_t hold_size);
/* Non-blocking settle: the rules of kg_authorize_start (returns 0, 1 or -1;
 * done called later from the loop; *res, *hold and *req's strings valid
 * until then); cancel with kg_authorize_cancel. A cancelled settle may
 * still happen in the store: retry it with the same request_id. */
KG_EXPORT int  kg_settle_start(kg_ctx *ctx, const kg_request *req, kg_result *res,
                               kg_hold *hold, size_t hold_size,
                               kg_done_fn done, void *arg, kg_pending **handle);

#ifdef __cplusplus
}
#endif

#endif /* KEYGATE_H */
