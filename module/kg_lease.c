/*
 * kg_lease.c - debit leased (issue 14, docs/module.md "Leased funds").
 *
 *   decide() ──► kg_lease_decide: lease of the wallet covers the cost,
 *                │                still valid, journal has room?
 *                │  yes: journal entry (before the answer), lease debited
 *                │       in memory, KG_OK — no round trip
 *                └─ no:  KG_LEASE_EXACT (today's debit script), and the
 *                        lease is renewed at the next tick
 *
 *   the journal syncs itself to disk every 50 ms on its own thread
 *   (kg_journal.c);
 *   kg_lease_tick (every request start, the host's timer, kg_close):
 *     one flush script at a time on the main link: the unflushed entries
 *     of one wallet (<= KG_LEASE_BATCH, oldest first) + the lease resized
 *     to `want`; due every KG_LEASE_FLUSH_MS with entries, at once with
 *     KG_LEASE_BATCH of them or a request the lease could not cover, and
 *     every lease_ttl_ms / 3 to keep a lease alive.
 *
 * Local lease accounting. `avail` is what may still be decided locally:
 * the lease's amount in the store minus the entries not yet charged. When a
 * flush is sent, avail is cut to min(avail, want) (0 when the flush asks
 * for a lease big enough for a request it could not cover), so that what
 * the script returns to the balance is never decided meanwhile; its reply
 * gives the lease's new amount A and avail = A − what was decided since
 * the send. A lease is used only until send time of its last confirmed
 * flush + lease_ttl_ms × 0.9 (monotonic): after that keygated may reclaim
 * it, and a decision would be a late charge.
 *
 * Request ids: a window of recent ids of this context answers a retry at
 * once (replayed, or a conflict for another request); the flush script
 * checks the store's request records, so an id charged anywhere else is
 * not charged again (the request was served: docs/module.md).
 */
#include "kg_internal.h"
#include "kg_journal.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct kg_leases kg_leases;

#define KG_LEASE_FLUSH_MS  50      /* entries wait at most this long */
#define KG_LEASE_BATCH     1000    /* entries in one flush script at most */
#define KG_LEASE_SPAN_MS   150     /* a lease holds about this much spend */
#define KG_LEASE_MIN_COSTS 8       /* ... and at least this many requests */
#define KG_LEASE_SHARE     4       /* a grant takes at most available / 4 */
#define KG_LEASE_WALLETS   64      /* wallets leased by one context at once */
#define KG_RID_WINDOW      4096    /* recent request ids (direct-mapped) */

typedef struct wlease {
    char team[KGC_ID_MAX], wallet[KGC_ID_MAX];
    int64_t avail;                /* may be decided locally (micros) */
    int64_t amount;               /* the store's lease, last reply */
    int64_t valid_until;          /* monotonic ms; 0: no lease */
    int64_t since_send;           /* decided since the in-flight flush was sent */
    int64_t spent;                /* decided since rate_at (sizing) */
    int64_t rate_at;              /* monotonic ms the spend window began */
    int64_t rate;                 /* micros per second: up at once, down smoothed */
    int64_t boost;                /* a lease that ran out: ask twice as much */
    int64_t last_cost;            /* the last request's cost */
    int64_t need;                 /* > 0: a request of this cost was not covered */
    int64_t last_send;            /* monotonic ms */
    int64_t balance;              /* the wallet's balance, last reply */
    int inflight;
} wlease;

typedef struct ridslot {
    uint64_t h;                   /* 0: empty */
    char fp[KG_FP_HEX + 1];
} ridslot;

/* The flush command is written straight into RESP (hiredis'
 * redisFormatCommandArgv does a sprintf per argument): a buffer kept by
 * the context, KG_RESP_HEAD bytes left free at its start for "*<argc>",
 * written in front once the count is known. */
#define KG_RESP_HEAD 24

typedef struct respbuf {
    char *p;
    size_t len, cap;
    int argc;
    int oom;                      /* an allocation failed: the command is void */
} respbuf;

/* One usage counter field of a flush: "<kid> <wid> <svc> <model or -> ",
 * as usage_add() in kg_scripts.c names it, with its totals if every
 * entry is charged (the script takes back those it skips). */
typedef struct ugroup {
    const kg_jent *first;         /* names the field */
    int64_t n, c;
} ugroup;

/* A distinct (key, user, service, model) of a flush: its ledger text is
 * sent once, and its usage group (from 1; 0: no usage counters). */
typedef struct lmid {
    const kg_jent *first;
    int group;
} lmid;

struct kg_leases {
    kg_journal *j;
    wlease w[KG_LEASE_WALLETS];
    int nw;
    int busy;                     /* a flush on the wire */
    int64_t deadline;             /* its reply is due by then (monotonic ms) */
    wlease *fw;                   /* the wallet it flushes */
    kg_jent **fl;                 /* its entries (KG_LEASE_BATCH) */
    int nfl;
    ugroup *grp;                  /* their usage fields (KG_LEASE_BATCH) */
    lmid *mids;                   /* their distinct key/user/service/model */
    char *seqs;                   /* their seqs, "s1 s2 ..." */
    char *runs;                   /* their runs, "cost mid count ..." */
    respbuf rb;            /* the flush command, kept between flushes */
    int64_t last_flush;           /* monotonic ms of the last send */
    int closing;
    int any_need;                 /* some wlease has need > 0 */
    int64_t outage_from;          /* subscription lost then (monotonic ms); 0 none */
    int64_t last_tick;
    ridslot rids[KG_RID_WINDOW];
};

/* ---- helpers -------------------------------------------------------- */

static int put(char *dst, size_t cap, const char *src)
{
    size_t n = strlen(src);
    if (n >= cap)
        return -1;
    memcpy(dst, src, n + 1);
    return 0;
}

static wlease *find(kg_leases *L, const char *team, const char *wallet, int add)
{
    for (int i = 0; i < L->nw; i++)
        if (strcmp(L->w[i].wallet, wallet) == 0)
            return &L->w[i];
    if (!add || L->nw == KG_LEASE_WALLETS)
        return NULL;
    wlease *w = &L->w[L->nw++];
    memset(w, 0, sizeof *w);
    snprintf(w->team, sizeof w->team, "%s", team);
    snprintf(w->wallet, sizeof w->wallet, "%s", wallet);
    w->balance = -1;
    return w;
}

static uint64_t rid_hash(const char *kid, const char *rid)
{
    uint64_t h = 1469598103934665603ULL;
    for (const char *p = kid; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    h = (h ^ 0xffu) * 1099511628211ULL;
    for (const char *p = rid; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    return h | 1;
}

/* What the lease should hold: about KG_LEASE_SPAN_MS of the observed
 * spend, at least KG_LEASE_MIN_COSTS requests; 0 when closing. */
static int64_t want_of(const kg_leases *L, const wlease *w)
{
    int64_t want = w->rate * KG_LEASE_SPAN_MS / 1000, floor = w->last_cost * KG_LEASE_MIN_COSTS;

    if (L->closing)
        return 0;
    if (want < w->boost)
        want = w->boost;
    return want > floor ? want : floor;
}

/* ---- open / close --------------------------------------------------- */

int kg_lease_open(kg_ctx *ctx, char *err, size_t errlen)
{
    kg_leases *L;
    size_t it = 0;
    kg_jent *e;

    /* A journal without 'debit leased' serves the services the catalog
     * leases ("debit": "leased"); without one they are exact. */
    if (ctx->cfg.debit_mode != KGC_DEBIT_LEASED && ctx->cfg.lease_journal[0] == '\0')
        return 0;
    if (ctx->cfg.lease_journal[0] == '\0') {
        snprintf(err, errlen, "'debit leased' needs 'lease_journal' (a file prefix)");
        return -1;
    }
    if ((L = calloc(1, sizeof *L)) == NULL ||
        (L->fl = calloc(KG_LEASE_BATCH, sizeof *L->fl)) == NULL ||
        (L->grp = calloc(KG_LEASE_BATCH, sizeof *L->grp)) == NULL ||
        (L->mids = calloc(KG_LEASE_BATCH, sizeof *L->mids)) == NULL ||
        (L->seqs = malloc(KG_LEASE_BATCH * 21 + 1)) == NULL ||
        (L->runs = malloc(KG_LEASE_BATCH * (21 + 6 + 21 + 6) + 1)) == NULL) {
        if (L != NULL) {
            free(L->fl);
            free(L->grp);
            free(L->mids);
            free(L->seqs);
            free(L);
        }
        snprintf(err, errlen, "kg_open: out of memory");
        return -1;
    }
    if (kg_journal_open(ctx->cfg.lease_journal, &L->j, err, errlen) != 0) {
        free(L->fl);
        free(L->grp);
        free(L->mids);
        free(L->seqs);
        free(L->runs);
        free(L);
        return -1;
    }
    /* Replay: every entry left by the file's last holder is flushed by
     * the first ticks; the store skips the seqs it charged already. */
    while ((e = kg_journal_next(L->j, &it)) != NULL)
        if (find(L, e->team, e->wallet, 1) == NULL)
            break;                      /* > KG_LEASE_WALLETS: flushed as slots free */
    ctx->leases = L;
    return 0;
}

static int pending(const kg_leases *L)
{
    return kg_journal_count(L->j) > 0;
}

static int holds_lease(const kg_leases *L)
{
    for (int i = 0; i < L->nw; i++)
        if (L->w[i].amount > 0 || L->w[i].inflight)
            return 1;
    return 0;
}

void kg_lease_close(kg_ctx *ctx)
{
    kg_leases *L = ctx->leases;
    int64_t end;

    if (L == NULL)
        return;
    L->closing = 1;
    end = kg_mono_ms() + 2000;
    for (int i = 0; i < L->nw; i++)
        L->w[i].last_send = 0;          /* every lease: return it now */
    while ((pending(L) || holds_lease(L) || L->busy) && kg_mono_ms() < end) {
        int64_t now = kg_mono_ms();
        kg_lease_tick(ctx, now);
        if (!L->busy && (pending(L) || holds_lease(L))) {
            /* nothing could be sent (Redis down): the journal keeps it */
            if (ctx->main == NULL && kg_link_main(ctx) != 0)
                break;
        }
        kg_link_write_now(ctx);
        if (L->busy)
            kg_link_poll(ctx, (int)(L->deadline > now ? L->deadline - now : 1));
        if (L->busy && kg_mono_ms() >= L->deadline)
            kg_link_drop(ctx, ctx->main);
    }
    kg_journal_close(L->j);
    free(L->fl);
    free(L->grp);
    free(L->mids);
    free(L->seqs);
    free(L->runs);
    free(L->rb.p);
    free(L);
    ctx->leases = NULL;
}

/* ---- deciding ------------------------------------------------------- */

int kg_lease_decide(kg_ctx *ctx, struct kg_pending *p, const kgc_service *svc)
{
    kg_leases *L = ctx->leases;
    ridslot *rs = NULL;
    wlease *w;
    kg_jent e;
    int64_t now;

    /* Leased: what the catalog says of the service, else the config. */
    if (svc->debit == KGC_SVC_DEBIT_EXACT ||
        (svc->debit == KGC_SVC_DEBIT_CONFIG && ctx->cfg.debit_mode != KGC_DEBIT_LEASED))
        return KG_LEASE_EXACT;
    if (L == NULL || L->closing || p->script != KG_SCRIPT_DEBIT || p->cost <= 0 ||
        p->budget_day != 0 || p->budget_month != 0 || p->per_second != 0 || p->per_minute != 0)
        return KG_LEASE_EXACT;          /* limits and budgets stay exact */
    if ((w = find(L, p->r.team_id, p->r.wallet_id, 1)) == NULL)
        return KG_LEASE_EXACT;
    w->last_cost = p->cost;
    if (p->request_id[0] != '\0') {
        uint64_t h = rid_hash(p->r.key_id, p->request_id);
        rs = &L->rids[h % KG_RID_WINDOW];
        if (rs->h == h) {
            if (strcmp(rs->fp, p->fp) != 0)
                return KG_REQUEST_ID_CONFLICT;
            p->r.replayed = 1;
            p->r.cost_micros = 0;
            p->r.balance_micros = w->balance;
            return KG_OK;
        }
        rs->h = 0;                      /* evicted; set again once decided */
        rs->fp[0] = '\0';
        (void)h;
    }
    now = kg_mono_ms();
    if (w->avail < p->cost || now >= w->valid_until) {
        if (!w->inflight && w->need < p->cost) {
            w->need = p->cost;          /* renew at the next tick (not again while
                                           the renewal is on the wire) */
            L->any_need = 1;
        }
        return KG_LEASE_EXACT;
    }
    memset(&e, 0, sizeof e);
    e.cost = p->cost;
    e.at = kg_wall_ms();
    memcpy(e.team, w->team, sizeof e.team);
    memcpy(e.wallet, w->wallet, sizeof e.wallet);
    if (put(e.key_id, sizeof e.key_id, p->r.key_id) != 0 ||
        put(e.user_id, sizeof e.user_id, p->r.user_id) != 0 ||
        put(e.service, sizeof e.service, p->service) != 0 ||
        put(e.model, sizeof e.model, p->model) != 0 ||
        put(e.rid, sizeof e.rid, p->request_id) != 0 || put(e.fp, sizeof e.fp, p->fp) != 0)
        return KG_LEASE_EXACT;          /* cannot happen: ids are checked shorter */
    if (kg_journal_append(L->j, &e) == NULL)
        return KG_LEASE_EXACT;          /* journal full (store unreachable long) */
    w->avail -= p->cost;
    w->spent += p->cost;
    if (w->inflight)
        w->since_send += p->cost;
    if (rs != NULL) {
        rs->h = rid_hash(p->r.key_id, p->request_id);
        memcpy(rs->fp, p->fp, sizeof rs->fp);
    }
    p->r.cost_micros = p->cost;
    p->r.balance_micros = w->balance;
    return KG_OK;
}

/* ---- flushing ------------------------------------------------------- */

/* Decimal of v into out (>= 21 bytes), NUL-terminated; returns the length.
 * A flush formats three numbers per entry: snprintf was most of its cost. */
static size_t i64s(char *out, int64_t v)
{
    char tmp[24];
    size_t n = 0, len = 0;
    uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;

    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u > 0);
    if (v < 0)
        out[len++] = '-';
    while (n > 0)
        out[len++] = tmp[--n];
    out[len] = '\0';
    return len;
}


static char *rb_room(respbuf *b, size_t n)
{
    if (b->oom)
        return NULL;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 65536;
        char *np;
        while (cap < b->len + n)
            cap *= 2;
        if ((np = realloc(b->p, cap)) == NULL) {
            b->oom = 1;
            return NULL;
        }
        b->p = np;
        b->cap = cap;
    }
    return b->p + b->len;
}

static void rb_bulk(respbuf *b, const char *s, size_t n)
{
    char *d = rb_room(b, 1 + 20 + 2 + n + 2);

    if (d == NULL)
        return;
    *d++ = '$';
    d += i64s(d, (int64_t)n);
    *d++ = '\r';
    *d++ = '\n';
    memcpy(d, s, n);
    d += n;
    *d++ = '\r';
    *d++ = '\n';
    b->len = (size_t)(d - b->p);
    b->argc++;
}

static void rb_str(respbuf *b, const char *s)
{
    rb_bulk(b, s, strlen(s));
}

static void rb_int(respbuf *b, int64_t v)
{
    char t[24];
    rb_bulk(b, t, i64s(t, v));
}

/* s as a JSON string, byte for byte what the scripts' cjson.encode makes
 * of it (Redis 7's lua_cjson: \" \\ \/, \b \t \n \f \r, other bytes below
 * 0x20 and 0x7f as \u00xx, bytes above 0x7f as they are), at d (room for
 * 2 + 6 strlen(s)); returns the length. */
static size_t kg_json_str(char *d, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    char *o = d;

    *o++ = '"';
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        if (*c >= 0x20 && *c != '"' && *c != '\\' && *c != '/' && *c != 0x7f) {
            *o++ = (char)*c;
            continue;
        }
        *o++ = '\\';
        switch (*c) {
        case '"': case '\\': case '/': *o++ = (char)*c; break;
        case '\b': *o++ = 'b'; break;
        case '\t': *o++ = 't'; break;
        case '\n': *o++ = 'n'; break;
        case '\f': *o++ = 'f'; break;
        case '\r': *o++ = 'r'; break;
        default:
            *o++ = 'u';
            *o++ = '0';
            *o++ = '0';
            *o++ = hex[*c >> 4];
            *o++ = hex[*c & 15];
        }
    }
    *o++ = '"';
    return (size_t)(o - d);
}

static void flush_done(kg_ctx *ctx, redisReply *r)
{
    kg_leases *L = ctx->leases;
    wlease *w = L->fw;
    long long v[7];

    L->busy = 0;
    w->inflight = 0;
    if (r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements >= 7 &&
        r->element[0]->type == REDIS_REPLY_STRING && strcmp(r->element[0]->str, "ok") == 0) {
        for (int i = 1; i < 7; i++)
            v[i] = r->element[i]->type == REDIS_REPLY_INTEGER ? r->element[i]->integer : 0;
        for (int i = 0; i < L->nfl; i++)
            kg_journal_free(L->j, L->fl[i]);
        w->amount = v[1];
        w->balance = v[2];
        w->avail = v[1] - w->since_send;
        w->valid_until = v[1] > 0 ? w->last_send + ctx->cfg.lease_ttl_ms * 9 / 10 : 0;
    } else {
        /* Not charged, or not known: the entries stay in the journal and
         * go again (the store skips seqs it charged). The lease is not
         * renewed: it is used until valid_until, then refused locally. */
        if (r != NULL && r->type == REDIS_REPLY_ERROR && kgc_sentinel_demoted(r->str))
            ctx->relink = 1;
    }
    w->since_send = 0;
    L->nfl = 0;
    L->fw = NULL;
}

static void on_flush(redisAsyncContext *ac, void *reply, void *priv)
{
    kg_ctx *ctx = priv;

    if (ctx->leases != NULL && ctx->leases->busy)   /* AUTH refused: as if lost */
        flush_done(ctx, kg_link_trusted(ac) ? reply : NULL);
}

/* The wallet to flush now, or NULL: the oldest entry's wallet; else a
 * lease to renew (needed, running low, or a third of its ttl old). */
static wlease *due(kg_leases *L, int ttl, int64_t now, int *nentries)
{
    size_t it = 0;
    kg_jent *e = kg_journal_next(L->j, &it), *first = e;
    int n = 0;

    for (; e != NULL && n < KG_LEASE_BATCH; e = kg_journal_next(L->j, &it))
        n++;
    *nentries = n;
    if (first != NULL) {
        wlease *w = find(L, first->team, first->wallet, 1);
        if (w == NULL)
            return NULL;
        if (n >= KG_LEASE_BATCH || w->need > 0 || L->closing ||
            now - L->last_flush >= KG_LEASE_FLUSH_MS)
            return w;
    }
    for (int i = 0; i < L->nw; i++) {
        wlease *w = &L->w[i];
        int64_t want = want_of(L, w);
        if (w->need > 0 || (L->closing && w->amount > 0) ||
            (w->amount > 0 && now - w->last_send >= ttl / 3) ||
            (w->last_cost > 0 && w->amount > 0 && w->avail < want / 2 &&
             now - w->last_send >= KG_LEASE_FLUSH_MS / 5))
            return w;
    }
    return NULL;
}


static int same_use(const kg_jent *a, const kg_jent *b)
{
    return strcmp(a->key_id, b->key_id) == 0 && strcmp(a->service, b->service) == 0 &&
           strcmp(a->model, b->model) == 0;
}

static int same_mid(const kg_jent *a, const kg_jent *b)
{
    return same_use(a, b) && strcmp(a->user_id, b->user_id) == 0;
}

/* "cost mid at count " (mid numbered from 1) at u; returns the end. */
static char *run_put(char *u, int64_t cost, int mid, int64_t at, int n)
{
    u += i64s(u, cost);
    *u++ = ' ';
    u += i64s(u, mid + 1);
    *u++ = ' ';
    u += i64s(u, at);
    *u++ = ' ';
    u += i64s(u, n);
    *u++ = ' ';
    return u;
}

static void rb_usage_field(respbuf *b, const kg_jent *e, const char *wid)
{
    char f[4 * KGC_ID_MAX + 2 * 64];

    snprintf(f, sizeof f, "%s %s %s %s ", e->key_id, wid, e->service,
             e->model[0] != '\0' ? e->model : "-");
    rb_str(b, f);
}

static int send_flush(kg_ctx *ctx, wlease *w, int64_t now)
{
    kg_leases *L = ctx->leases;
    const char *P = ctx->cfg.key_prefix, *T = w->team, *W = w->wallet;
    size_t it = 0;
    kg_jent *e;
    char key[KGC_RKEY_MAX], day[16], hour[16], mid[2048];
    int nrid = 0, ng = 0, nm = 0, rc = -1, usage = ctx->cfg.usage_counters;
    int64_t want, need, elapsed;
    uint64_t lo = 0, hi = 0;
    respbuf *b = &L->rb;
    char *seqs = L->seqs, *runs = L->runs;

    L->nfl = 0;
    while ((e = kg_journal_next(L->j, &it)) != NULL && L->nfl < KG_LEASE_BATCH)
        if (strcmp(e->wallet, W) == 0 && strcmp(e->team, T) == 0) {
            L->fl[L->nfl++] = e;
            nrid += e->rid[0] != '\0';
        }
    b->len = KG_RESP_HEAD;
    b->argc = 0;
    b->oom = 0;
    if (rb_room(b, 0) == NULL)
        goto out;
    {
        time_t t = time(NULL);
        struct tm tm;
        gmtime_r(&t, &tm);
        strftime(day, sizeof day, "%Y%m%d", &tm);
        strftime(hour, sizeof hour, "%Y%m%d%H", &tm);
    }
    rb_str(b, "EVAL");
    rb_str(b, kg_lease_lua);
    rb_int(b, 9 + nrid);
    {
        static const char *const rk[7] = {KGC_RK_WALLET, KGC_RK_LEDGER, KGC_RK_LEASE, KGC_RK_HOLDS,
                                  KGC_RK_HOLDEXP, KGC_RK_LEASEEXP, KGC_RK_LEASESEQ};
        for (int i = 0; i < 7; i++) {
            if (kgc_rkey(key, P, rk[i], T, W) < 0)
                goto out;
            rb_str(b, key);
        }
        if (!usage) {
            rb_str(b, "");
            rb_str(b, "");
        } else {
            if (kgc_rkey(key, P, KGC_RK_USAGE_DAY, T, day) < 0)
                goto out;
            rb_str(b, key);
            if (kgc_rkey(key, P, KGC_RK_USAGE_HOUR, T, hour) < 0)
                goto out;
            rb_str(b, key);
        }
    }
    for (int i = 0; i < L->nfl; i++)
        if (L->fl[i]->rid[0] != '\0') {
            if (kgc_rkey(key, P, KGC_RK_REQ, T, L->fl[i]->key_id, L->fl[i]->rid) < 0)
                goto out;
            rb_str(b, key);
        }
    /* Sizing: the spend rate over windows of >= 10 ms (up at once, down
     * halfway), and a lease that ran out asks twice what it had. */
    elapsed = now - w->rate_at;
    if (w->rate_at == 0 || elapsed >= 1000) {
        w->rate_at = now;
        w->spent = 0;
    } else if (elapsed >= 10) {
        int64_t inst = w->spent * 1000 / elapsed;
        w->rate = inst > w->rate ? inst : (w->rate + inst) / 2;
        w->rate_at = now;
        w->spent = 0;
    }
    if (w->need > 0)
        w->boost = 2 * (w->amount > w->need ? w->amount : w->need * KG_LEASE_MIN_COSTS);
    else
        w->boost /= 2;
    want = want_of(L, w);
    need = L->closing ? 0 : w->need;
    /* One pass: the seqs (read by the script only when some may have been
     * charged already), the usage groups, the distinct (key, user,
     * service, model) texts ("mids", each with its group), and the runs
     * of entries of one cost, mid and "at" ("cost mid at count ..."). */
    {
        char *q = seqs, *u = runs;
        int64_t rc_cost = -1, rc_at = -1;
        int rc_mid = -1, rc_n = 0;
        for (int i = 0; i < L->nfl; i++) {
            const kg_jent *x = L->fl[i];
            int g = ng - 1, k = nm - 1;
            if (i > 0)
                *q++ = ' ';
            q += i64s(q, (int64_t)x->seq);
            if (lo == 0 || x->seq < lo)
                lo = x->seq;
            if (x->seq > hi)
                hi = x->seq;
            if (k < 0 || !same_mid(L->mids[k].first, x))
                for (k = 0; k < nm && !same_mid(L->mids[k].first, x); k++)
                    ;
            if (k == nm) {
                L->mids[nm].first = x;
                L->mids[nm].group = 0;
                nm++;
                if (usage) {
                    for (g = 0; g < ng && !same_use(L->grp[g].first, x); g++)
                        ;
                    if (g == ng) {
                        L->grp[ng].first = x;
                        L->grp[ng].n = L->grp[ng].c = 0;
                        ng++;
                    }
                    L->mids[k].group = g + 1;
                }
            }
            if (usage) {
                L->grp[L->mids[k].group - 1].n++;
                L->grp[L->mids[k].group - 1].c += x->cost;
            }
            if (x->cost == rc_cost && k == rc_mid && x->at == rc_at) {
                rc_n++;
                continue;
            }
            if (rc_n > 0)
                u = run_put(u, rc_cost, rc_mid, rc_at, rc_n);
            rc_cost = x->cost;
            rc_mid = k;
            rc_at = x->at;
            rc_n = 1;
        }
        if (rc_n > 0)
            u = run_put(u, rc_cost, rc_mid, rc_at, rc_n);
        *q = '\0';
        *u = '\0';
    }
    rb_str(b, kg_journal_lease_id(L->j));
    rb_str(b, W);
    rb_int(b, want);
    rb_int(b, need);
    rb_int(b, ctx->cfg.lease_ttl_ms);
    rb_int(b, KG_LEASE_SHARE);
    rb_int(b, L->nfl);
    rb_int(b, nrid);
    rb_int(b, ng);
    rb_int(b, (int64_t)lo);
    rb_int(b, (int64_t)hi);
    rb_str(b, seqs);
    rb_int(b, nm);
    rb_str(b, runs);
    /* The ledger entry of each is formatted as entry() in kg_scripts.c
     * would (docs/redis-schema.md "Ledger entry"): the script joins its
     * head, the balance, "at", the mid, the request id and the lease. */
    for (int k = 0; k < nm; k++) {
        const kg_jent *x = L->mids[k].first;
        char *m = mid;
        memcpy(m, ",\"key_id\":", 10), m += 10;
        m += kg_json_str(m, x->key_id);
        memcpy(m, ",\"user_id\":", 11), m += 11;
        m += kg_json_str(m, x->user_id);
        memcpy(m, ",\"service\":", 11), m += 11;
        m += kg_json_str(m, x->service);
        memcpy(m, ",\"model\":", 9), m += 9;
        m += kg_json_str(m, x->model);
        memcpy(m, ",\"request_id\":", 14), m += 14;
        rb_bulk(b, mid, (size_t)(m - mid));
        rb_int(b, L->mids[k].group);
    }
    for (int i = 0; i < L->nfl; i++) {       /* the request records */
        const kg_jent *x = L->fl[i];
        if (x->rid[0] == '\0')
            continue;
        rb_int(b, i + 1);
        rb_str(b, x->user_id);
        rb_str(b, x->service);
        rb_str(b, x->model);
        rb_str(b, x->fp);
        rb_bulk(b, mid, kg_json_str(mid, x->rid));
    }
    for (int g = 0; g < ng; g++) {
        rb_usage_field(b, L->grp[g].first, W);
        rb_int(b, L->grp[g].n);
        rb_int(b, L->grp[g].c);
    }
    if (b->oom || kg_link_main(ctx) != 0)
        goto out;
    {
        char head[KG_RESP_HEAD];
        size_t hl = 0;
        head[hl++] = '*';
        hl += i64s(head + hl, b->argc);
        head[hl++] = '\r';
        head[hl++] = '\n';
        memcpy(b->p + KG_RESP_HEAD - hl, head, hl);
        if (kg_link_put(ctx->main->ac, on_flush, ctx, b->p + KG_RESP_HEAD - hl,
                        b->len - KG_RESP_HEAD + hl) != 0) {
            rc = -1;
            goto out;
        }
    }
    rc = 0;
    L->busy = 1;
    L->fw = w;
    L->deadline = now + ctx->cfg.timeout_ms + 50 + L->nfl / 10;
    L->last_flush = now;
    w->inflight = 1;
    w->since_send = 0;
    w->last_send = now;
    /* What the script may return is not decided meanwhile (see the top). */
    if (w->need > 0 || L->closing)
        w->avail = 0;
    else if (w->avail > want)
        w->avail = want;
    w->need = 0;
out:
    if (rc != 0)
        L->nfl = 0;
    if (b->cap > 4u << 20) {            /* a burst of escapes: do not keep it */
        free(b->p);
        b->p = NULL;
        b->cap = 0;
    }
    return rc;
}

void kg_lease_tick(kg_ctx *ctx, int64_t now)
{
    kg_leases *L = ctx->leases;
    wlease *w;
    int n;

    if (L == NULL)
        return;
    /* Called on every request: the full look is made once a millisecond,
     * or at once when a batch is full or a request was not covered. */
    if (now == L->last_tick && !L->any_need && kg_journal_count(L->j) < KG_LEASE_BATCH &&
        !L->closing)
        return;
    L->last_tick = now;
    if (L->busy) {
        if (now >= L->deadline && ctx->main != NULL)
            kg_link_drop(ctx, ctx->main);   /* runs on_flush with NULL */
        return;
    }
    if ((w = due(L, ctx->cfg.lease_ttl_ms, now, &n)) == NULL) {
        L->any_need = 0;
        return;
    }
    if (ctx->main == NULL && now - L->last_flush < KG_LEASE_FLUSH_MS)
        return;                         /* store unreachable: retry at this pace */
    if (send_flush(ctx, w, now) != 0)
        L->last_flush = now;
    else if (ctx->hooks == NULL)
        kg_link_write_now(ctx);         /* blocking mode: nothing else writes it */
}

int64_t kg_lease_next(const kg_ctx *ctx)
{
    const kg_leases *L = ctx->leases;
    int64_t next = -1;

    if (L == NULL)
        return -1;
    if (L->busy)
        return L->deadline;
    if (pending(L))
        next = L->last_flush + KG_LEASE_FLUSH_MS;
    for (int i = 0; i < L->nw; i++) {
        const wlease *w = &L->w[i];
        int64_t t = -1;
        if (w->need > 0)
            t = 0;
        else if (w->amount > 0)
            t = w->last_send + ctx->cfg.lease_ttl_ms / 3;
        if (t >= 0 && (next < 0 || t < next))
            next = t;
    }
    return next;
}

/* ---- outage --------------------------------------------------------- */

/* A lost subscription means revocations may be missed. In exact mode the
 * cache is cleared at once (every request then needs the store, which is
 * likely down). With a lease still valid, the cache (as it was at the
 * loss) and the catalog are kept for local decisions only, which stop at
 * the lease's valid_until anyway: a revocation made meanwhile is missed
 * for at most lease_ttl_ms (docs/module.md). */
int kg_lease_sub_lost(kg_ctx *ctx)
{
    kg_leases *L = ctx->leases;
    int64_t now = kg_mono_ms();

    if (L == NULL || L->closing)
        return 0;
    if (L->outage_from > 0)
        return 1;
    for (int i = 0; i < L->nw; i++)
        if (L->w[i].valid_until > now) {
            L->outage_from = now;
            return 1;
        }
    return 0;
}

void kg_lease_sub_back(kg_ctx *ctx)
{
    kg_leases *L = ctx->leases;

    if (L == NULL || L->outage_from == 0)
        return;
    L->outage_from = 0;
    ctx->catalog_trusted = 0;
    kgc_catalog_free(ctx->catalog);
    ctx->catalog = NULL;
    kg_cache_clear(&ctx->cache);
}

int64_t kg_lease_outage(kg_ctx *ctx)
{
    kg_leases *L = ctx->leases;
    int64_t now;

    if (L == NULL || L->outage_from == 0)
        return 0;
    now = kg_mono_ms();
    for (int i = 0; i < L->nw; i++)
        if (L->w[i].valid_until > now)
            return L->outage_from;
    kg_lease_sub_back(ctx);             /* every lease ran out: as in exact mode */
    return 0;
}
