/*
 * archive.c - the archiver (archive.h has the design and its proof).
 *
 *   timer ─► [backfill SCAN, once] ─► SSCAN archive:wallets ─► LLEN each
 *        ─► per wallet with LLEN > ledger_tail, until it is not:
 *              read (MULTI) ─► insert (archiver thread) ─► trim (script)
 *        ─► next wallet; when the set is walked: again at once if anything
 *           moved, else after archive_interval_ms.
 *
 * Everything but the insert runs on the loop thread through the store's
 * async calls; one batch at a time per archiver is inserted and trimmed.
 * While a batch is inserted, the next older-but-one batch of the same
 * wallet is read and parsed ahead ("prefetch": the entries just newer than
 * the batch, read in one MULTI with archived_count, which must still be
 * the batch's own); once the batch is trimmed, the prefetched one is
 * inserted at once. Its trim checks, as every trim does, that the oldest
 * entries are the ones inserted. Nothing is inserted ahead of the
 * checkpoint by more than one batch, as before. The archiver stays busy
 * until a prefetch in flight has answered. Callbacks after
 * archive_quiesce() only free what they hold.
 *
 * Fault injection for the tests (tests/archive): KEYGATE_ARCHIVE_FAULT=
 * "<point>:<n>" kills the daemon with SIGKILL at the n-th batch reaching
 * <point>: "read" (read, nothing inserted), "insert" (committed in the
 * database, not trimmed), "trim" (trim script sent, its reply not seen).
 * KEYGATE_ARCHIVERS=2 runs two archivers, each with its own thread and
 * connection, racing over the same wallets (what a lease handover can do).
 */
#include "archive.h"
#include "cmd.h"
#include "lease.h"
#include "log.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ARCH_SCAN_COUNT "200"
#define ARCH_MAX 2
#define ERR_LOG_EVERY_MS 10000

/* KEYS: wallet, ledger. ARGV: A (archived_count read), k, sum of the k,
 * the oldest entry's text, the k-th oldest's text.
 * Returns 1 trimmed, 0 someone else moved the checkpoint (read again),
 * -1 no wallet / too short, -2 the oldest entries are not those archived. */
static const char trim_lua[] =
    "if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end\n"
    "local a = tonumber(redis.call('HGET', KEYS[1], 'archived_count') or '0')\n"
    "if a ~= tonumber(ARGV[1]) then return 0 end\n"
    "local k = tonumber(ARGV[2])\n"
    "if redis.call('LLEN', KEYS[2]) < k then return -1 end\n"
    "if redis.call('LINDEX', KEYS[2], -1) ~= ARGV[4] or\n"
    "   redis.call('LINDEX', KEYS[2], -k) ~= ARGV[5] then return -2 end\n"
    "redis.call('LTRIM', KEYS[2], 0, -(k + 1))\n"
    "redis.call('HINCRBY', KEYS[1], 'archived_count', k)\n"
    "redis.call('HINCRBY', KEYS[1], 'archived_sum_micros', ARGV[3])\n"
    "return 1\n";

typedef struct abatch {
    long long a0, sum;            /* the seq of its oldest entry; Σ amount */
    size_t k;
    arch_row *rows;
    json_t *docs, *texts;         /* keep the rows' strings alive */
} abatch;

typedef struct archiver {
    app *a;
    int id;
    worker *wk;                   /* the engine's thread */
    arch_engine *eng;             /* only on wk's thread (or after it stopped) */
    struct event *timer;
    int busy;                     /* a step in flight */
    char cursor[32];              /* SSCAN of archive:wallets */
    json_t *long_tails;           /* wallet ids whose tail is over ledger_tail, worked
                                     front to back */
    json_t *scanned;              /* a SCAN step's ids, waiting for their LLEN */
    int moved;                    /* entries moved this walk */
    int walking;                  /* a walk over archive:wallets is under way */
    long long err_logged_ms;
    /* The batch in flight (cur) and the one read ahead (next). */
    char wid[KGC_ID_MAX], team[KGC_ID_MAX];
    abatch cur, next;
    long long ahead;              /* entries over ledger_tail not yet in a batch,
                                     as of the last read of the wallet */
    int pf;                       /* PF_*: the read ahead */
    int pf_drop_ms;               /* PF_DROP: done_step's delay once it answers */
    long long pf_expect;          /* the archived_count the read ahead must see:
                                     cur's a0 when it was sent (nothing trimmed yet) */
    long batches, read_ahead;     /* batches trimmed; of them, read ahead */
    int rc;
    char err[400];
} archiver;

enum { PF_NONE, PF_READING, PF_READY, PF_DROP };

struct archive {
    archiver *arch[ARCH_MAX];
    int n;
    int stopping;
    int backfilled;               /* 1 once archive:backfilled was seen or set */
    char bf_cursor[32];
    char fault[16];
    long fault_n;
    arch_engine *reader;          /* wallet.ledger's, on the worker thread */
    pthread_mutex_t mu;           /* guards reader */
};

static void schedule(archiver *r, int ms);

static void fault(struct archive *s, const char *point)
{
    if (s->fault[0] != '\0' && strcmp(s->fault, point) == 0 && --s->fault_n == 0) {
        log_warn("KEYGATE_ARCHIVE_FAULT: killing keygated at '%s'", point);
        raise(SIGKILL);
    }
}

static void rkey(app *a, char *out, const char *fmt, const char *x, const char *y)
{
    kgc_rkey(out, a->cfg.key_prefix, fmt, x, y);
}

/* Logs a database or Redis problem, at most every ERR_LOG_EVERY_MS. */
static void complain(archiver *r, const char *what, const char *detail)
{
    long long now = now_ms();

    if (now - r->err_logged_ms >= ERR_LOG_EVERY_MS) {
        r->err_logged_ms = now;
        log_warn("archive: %s: %s (Redis keeps the ledgers' tails; retrying)", what, detail);
    }
}

static void abatch_free(abatch *b)
{
    free(b->rows);
    b->rows = NULL;
    json_decref(b->docs);
    json_decref(b->texts);
    b->docs = b->texts = NULL;
    b->k = 0;
}

static void batch_clear(archiver *r)
{
    abatch_free(&r->cur);
}

static void done_step(archiver *r, int ms)
{
    r->busy = 0;
    if (!r->a->arch->stopping)
        schedule(r, ms);
}

/* The batch's step ends: a read ahead is dropped (if still in flight, the
 * step ends when it answers). */
static void finish(archiver *r, int ms)
{
    batch_clear(r);
    if (r->pf == PF_READING) {
        r->pf = PF_DROP;
        r->pf_drop_ms = ms;
        return;
    }
    abatch_free(&r->next);
    r->pf = PF_NONE;
    done_step(r, ms);
}

static void prefetch(archiver *r);
static void insert_submit(archiver *r);

/* The batch read ahead becomes the batch in flight (the one before it is
 * trimmed) and goes to the database at once. */
static void use_read_ahead(archiver *r)
{
    r->read_ahead++;
    r->cur = r->next;
    memset(&r->next, 0, sizeof r->next);
    r->pf = PF_NONE;
    fault(r->a->arch, "read");
    insert_submit(r);
}

/* --- 3. trim ------------------------------------------------------------ */

static void on_trim(void *arg, int ok, json_t *replies)
{
    archiver *r = arg;
    long long res = ok ? json_integer_value(json_array_get(replies, 0)) : 0;

    json_decref(replies);
    if (r->a->arch->stopping) {
        batch_clear(r);
        if (r->pf != PF_READING)
            r->busy = 0;          /* else when the read ahead answers */
        return;
    }
    if (!ok) {
        finish(r, r->a->cfg.archive_interval_ms);   /* re-read: the checkpoint says */
        return;
    }
    if (res == 1) {
        r->moved += (int)r->cur.k;
        r->batches++;
        log_debug("archive: wallet %s: %zu entries from seq %lld archived", r->wid, r->cur.k,
                  r->cur.a0);
        batch_clear(r);
        if (r->pf == PF_READY) {  /* the next batch, read meanwhile: in at once */
            use_read_ahead(r);
            return;
        }
        if (r->pf == PF_READING)
            return;               /* on_prefetch goes on */
    } else if (res == -2) {
        log_err("archive: wallet %s: the oldest ledger entries changed under archived_count %lld "
                "(a failover lost writes?): not archiving it; run keygate fsck", r->wid, r->cur.a0);
        json_array_remove(r->long_tails, 0);
    } else if (res != 0) {
        json_array_remove(r->long_tails, 0);
    }
    finish(r, 0);                 /* the same wallet again, until its tail is short */
}

static void trim(archiver *r)
{
    char kw[KGC_RKEY_MAX], kl[KGC_RKEY_MAX], a0[24], k[24], sum[24];
    json_t *cmds;

    rkey(r->a, kw, KGC_RK_WALLET, r->team, r->wid);
    rkey(r->a, kl, KGC_RK_LEDGER, r->team, r->wid);
    snprintf(a0, sizeof a0, "%lld", r->cur.a0);
    snprintf(k, sizeof k, "%zu", r->cur.k);
    snprintf(sum, sizeof sum, "%lld", r->cur.sum);
    cmds = json_pack("[[s,s,s,s,s,s,s,s,O,O]]", "EVAL", trim_lua, "2", kw, kl, a0, k, sum,
                     json_array_get(r->cur.texts, 0), json_array_get(r->cur.texts, r->cur.k - 1));
    if (store_exec(r->a->st, cmds, 0, on_trim, r) != 0) {
        finish(r, r->a->cfg.archive_interval_ms);
    } else {
        fault(r->a->arch, "trim");
    }
    json_decref(cmds);
}

/* --- 2. insert (archiver thread) --------------------------------------- */

static void insert_work(void *arg)
{
    archiver *r = arg;

    r->rc = -1;
    if (r->eng == NULL &&
        (r->eng = arch_open(r->a->cfg.archive_engine, r->a->cfg.archive_target, r->err,
                            sizeof r->err)) == NULL)
        return;
    r->rc = r->eng->insert(r->eng, r->team, r->wid, r->cur.rows, r->cur.k, r->err, sizeof r->err);
}

static void insert_done(void *arg)
{
    archiver *r = arg;

    if (r->a->arch->stopping) {
        batch_clear(r);
        if (r->pf != PF_READING)
            r->busy = 0;
        return;
    }
    if (r->rc != 0) {
        complain(r, "the database refused a batch", r->err);
        finish(r, r->a->cfg.archive_interval_ms);
        return;
    }
    fault(r->a->arch, "insert");
    trim(r);
}

static void insert_submit(archiver *r)
{
    if (worker_submit(r->wk, insert_work, insert_done, r) != 0) {
        finish(r, r->a->cfg.archive_interval_ms);
        return;
    }
    prefetch(r);
}

/* --- 1. read ------------------------------------------------------------ */

/* Parses k entries of list (n elements, the oldest last) into b, seqs from
 * b->a0. 0, or -1 (logged) when one is not a ledger entry. */
static int parse_batch(archiver *r, abatch *b, json_t *list, size_t n, size_t k)
{
    b->k = k;
    b->rows = xcalloc(k, sizeof *b->rows);
    b->docs = json_array();
    b->texts = json_array();
    b->sum = 0;
    for (size_t i = 0; i < k; i++) {
        json_t *t = json_array_get(list, n - 1 - i);     /* the oldest is last */
        json_t *doc = json_is_string(t) ? json_loads(json_string_value(t), 0, NULL) : NULL;

        json_array_append(b->texts, t);
        if (doc == NULL ||
            arch_row_parse(doc, json_string_value(t), b->a0 + (long long)i, &b->rows[i]) != 0) {
            log_err("archive: wallet %s: entry seq %lld is not a ledger entry: not archiving "
                    "this wallet; run keygate fsck", r->wid, b->a0 + (long long)i);
            json_decref(doc);
            abatch_free(b);
            return -1;
        }
        json_array_append_new(b->docs, doc);
        b->sum += b->rows[i].amount_micros;
    }
    return 0;
}

static void on_read(void *arg, int ok, json_t *replies)
{
    archiver *r = arg;
    json_t *hm = json_array_get(replies, 0), *list = json_array_get(replies, 2);
    long long len = json_integer_value(json_array_get(replies, 1)), k;
    size_t n;

    if (r->a->arch->stopping || !ok || !json_is_array(list) || !json_is_array(hm)) {
        json_decref(replies);
        if (!r->a->arch->stopping && ok)
            json_array_remove(r->long_tails, 0);        /* wrong types: fsck says */
        r->busy = 0;
        if (!r->a->arch->stopping)
            schedule(r, ok ? 0 : r->a->cfg.archive_interval_ms);
        return;
    }
    r->cur.a0 = json_is_string(json_array_get(hm, 0))
                    ? strtoll(json_string_value(json_array_get(hm, 0)), NULL, 10) : 0;
    n = json_array_size(list);
    k = len - r->a->cfg.ledger_tail;
    r->ahead = k;
    if (k > (long long)n)
        k = (long long)n;
    if (k <= 0) {                 /* short enough: next wallet */
        json_decref(replies);
        json_array_remove(r->long_tails, 0);
        done_step(r, 0);
        return;
    }
    if (parse_batch(r, &r->cur, list, n, (size_t)k) != 0) {
        json_decref(replies);
        json_array_remove(r->long_tails, 0);
        done_step(r, 0);
        return;
    }
    r->ahead -= k;
    json_decref(replies);
    fault(r->a->arch, "read");
    insert_submit(r);
}

/* The read ahead's answer: archived_count still the batch's own (nothing
 * trimmed meanwhile, by us or another archiver), then the entries. */
static void on_prefetch(void *arg, int ok, json_t *replies)
{
    archiver *r = arg;
    json_t *hm = json_array_get(replies, 0), *list = json_array_get(replies, 1);
    int drop = r->pf == PF_DROP, waiting;
    long long a;

    if (r->a->arch->stopping) {
        json_decref(replies);
        r->pf = PF_NONE;
        if (r->cur.k == 0)
            r->busy = 0;          /* the batch ended while this was in flight */
        return;
    }
    if (drop) {
        json_decref(replies);
        r->pf = PF_NONE;
        done_step(r, r->pf_drop_ms);
        return;
    }
    /* The batch may be trimmed already (its reply came first): it then
     * waits for this one. */
    waiting = r->cur.k == 0;
    a = !ok ? -1 : json_is_string(hm) ? strtoll(json_string_value(hm), NULL, 10)
                 : json_is_null(hm) ? 0 : -1;       /* no checkpoint yet: 0 */
    r->pf = PF_NONE;
    if (ok && json_is_array(list) && a == r->pf_expect &&
        json_array_size(list) == r->next.k &&
        parse_batch(r, &r->next, list, r->next.k, r->next.k) == 0)
        r->pf = PF_READY;
    else
        memset(&r->next, 0, sizeof r->next);
    json_decref(replies);
    if (!waiting)
        return;                   /* on_trim goes on */
    if (r->pf == PF_READY)
        use_read_ahead(r);
    else
        done_step(r, 0);
}

/* Reads the batch after the one in flight (cur), if the last read saw
 * entries for it: LRANGE of the cur.k + k' oldest minus the cur.k oldest. */
static void prefetch(archiver *r)
{
    char kw[KGC_RKEY_MAX], kl[KGC_RKEY_MAX], lo[24], hi[24];
    long long k = r->ahead < r->a->cfg.archive_batch ? r->ahead : r->a->cfg.archive_batch;
    json_t *cmds;

    if (k <= 0 || r->pf != PF_NONE)
        return;
    rkey(r->a, kw, KGC_RK_WALLET, r->team, r->wid);
    rkey(r->a, kl, KGC_RK_LEDGER, r->team, r->wid);
    snprintf(lo, sizeof lo, "%lld", -((long long)r->cur.k + k));
    snprintf(hi, sizeof hi, "%lld", -((long long)r->cur.k + 1));
    cmds = json_pack("[[s,s,s],[s,s,s,s]]", "HGET", kw, "archived_count", "LRANGE", kl, lo, hi);
    memset(&r->next, 0, sizeof r->next);
    r->pf_expect = r->cur.a0;
    r->next.a0 = r->cur.a0 + (long long)r->cur.k;
    r->next.k = (size_t)k;
    if (store_exec(r->a->st, cmds, 1, on_prefetch, r) == 0) {
        r->pf = PF_READING;
        r->ahead -= k;
    } else {
        memset(&r->next, 0, sizeof r->next);
    }
    json_decref(cmds);
}

static void read_wallet(archiver *r)
{
    char kw[KGC_RKEY_MAX], kl[KGC_RKEY_MAX], lo[24];
    const char *wid = json_string_value(json_array_get(r->long_tails, 0));
    json_t *cmds;

    if (wid == NULL || kgc_id_team_of(wid, 'w', r->team) != 0) {
        json_array_remove(r->long_tails, 0);
        done_step(r, 0);
        return;
    }
    snprintf(r->wid, sizeof r->wid, "%s", wid);
    rkey(r->a, kw, KGC_RK_WALLET, r->team, r->wid);
    rkey(r->a, kl, KGC_RK_LEDGER, r->team, r->wid);
    snprintf(lo, sizeof lo, "-%d", r->a->cfg.archive_batch);
    cmds = json_pack("[[s,s,s,s],[s,s],[s,s,s,s]]", "HMGET", kw, "archived_count",
                     "archived_sum_micros", "LLEN", kl, "LRANGE", kl, lo, "-1");
    if (store_exec(r->a->st, cmds, 1, on_read, r) != 0)
        done_step(r, r->a->cfg.archive_interval_ms);
    json_decref(cmds);
}

/* --- the walk over archive:wallets -------------------------------------- */

static void on_lens(void *arg, int ok, json_t *replies)
{
    archiver *r = arg;
    json_t *v;
    size_t i;

    json_array_clear(r->long_tails);
    if (ok)
        json_array_foreach(replies, i, v)
            if (json_integer_value(v) > r->a->cfg.ledger_tail)
                json_array_append(r->long_tails, json_array_get(r->scanned, i));
    json_decref(replies);
    json_decref(r->scanned);
    r->scanned = NULL;
    if (r->a->arch->stopping) {
        r->busy = 0;
        return;
    }
    done_step(r, ok ? 0 : r->a->cfg.archive_interval_ms);
}

static void on_scan(void *arg, int ok, json_t *replies)
{
    archiver *r = arg;
    json_t *res = json_array_get(replies, 0), *ids = json_array_get(res, 1), *id, *cmds;
    char team[KGC_ID_MAX], kl[KGC_RKEY_MAX];
    size_t i;

    if (r->a->arch->stopping || !ok || !json_is_array(ids)) {
        json_decref(replies);
        r->busy = 0;
        if (!r->a->arch->stopping)
            schedule(r, r->a->cfg.archive_interval_ms);
        return;
    }
    snprintf(r->cursor, sizeof r->cursor, "%s", json_string_value(json_array_get(res, 0)) ?: "0");
    cmds = json_array();
    json_array_foreach(ids, i, id) {
        if (kgc_id_team_of(json_string_value(id), 'w', team) != 0)
            snprintf(team, sizeof team, "-");
        rkey(r->a, kl, KGC_RK_LEDGER, team, json_string_value(id));
        json_array_append_new(cmds, json_pack("[s,s]", "LLEN", kl));
    }
    json_decref(r->scanned);
    r->scanned = json_incref(ids);
    json_decref(replies);
    if (json_array_size(cmds) == 0 || store_exec(r->a->st, cmds, 0, on_lens, r) != 0) {
        json_decref(r->scanned);
        r->scanned = NULL;
        done_step(r, 0);
    }
    json_decref(cmds);
}

static void ignore(void *arg, int ok, json_t *replies)
{
    (void)arg;
    (void)ok;
    json_decref(replies);
}

/* Once per store: every wallet made before archiving was configured. */
static void on_backfill(void *arg, int ok, json_t *replies)
{
    archiver *r = arg;
    struct archive *s = r->a->arch;
    json_t *res = json_array_get(replies, 0), *keys = json_array_get(res, 1), *k, *cmds;
    char key[KGC_RKEY_MAX];
    size_t i;

    if (s->stopping || !ok || !json_is_array(keys)) {
        json_decref(replies);
        r->busy = 0;
        if (!s->stopping)
            schedule(r, r->a->cfg.archive_interval_ms);
        return;
    }
    snprintf(s->bf_cursor, sizeof s->bf_cursor, "%s",
             json_string_value(json_array_get(res, 0)) ?: "0");
    cmds = json_array();
    kgc_rkey(key, r->a->cfg.key_prefix, ARCH_RK_WALLETS);
    json_array_foreach(keys, i, k) {
        const char *w = strrchr(json_string_value(k) ?: "", ':');
        if (w != NULL && kgc_id_plausible(w + 1))
            json_array_append_new(cmds, json_pack("[s,s,s]", "SADD", key, w + 1));
    }
    if (strcmp(s->bf_cursor, "0") == 0) {
        kgc_rkey(key, r->a->cfg.key_prefix, ARCH_RK_BACKFILLED);
        json_array_append_new(cmds, json_pack("[s,s,s]", "SET", key, "1"));
        s->backfilled = 1;
        log_info("archive: wallets registered for archiving");
    }
    json_decref(replies);
    if (json_array_size(cmds) > 0)
        store_exec(r->a->st, cmds, 0, ignore, NULL);
    json_decref(cmds);
    done_step(r, 0);
}

static void on_backfilled(void *arg, int ok, json_t *replies)
{
    archiver *r = arg;
    struct archive *s = r->a->arch;

    if (ok && json_is_string(json_array_get(replies, 0)))
        s->backfilled = 1;
    else if (ok)
        s->backfilled = -1;       /* walk the keys */
    json_decref(replies);
    r->busy = 0;
    if (!s->stopping)
        schedule(r, ok ? 0 : r->a->cfg.archive_interval_ms);
}

static void step(archiver *r)
{
    struct archive *s = r->a->arch;
    app *a = r->a;
    char key[KGC_RKEY_MAX], pat[KGC_RKEY_MAX];
    json_t *cmds;
    store_done_fn fn;

    if (s->backfilled == 0 && r->id == 0) {
        kgc_rkey(key, a->cfg.key_prefix, ARCH_RK_BACKFILLED);
        cmds = json_pack("[[s,s]]", "GET", key);
        fn = on_backfilled;
    } else if (s->backfilled == -1 && r->id == 0) {
        kgc_rkey(pat, a->cfg.key_prefix, KGC_RK_WALLET, "*", "*");
        cmds = json_pack("[[s,s,s,s,s,s,s,s]]", "SCAN", s->bf_cursor, "MATCH", pat, "COUNT",
                         "1000", "TYPE", "hash");
        fn = on_backfill;
    } else if (s->backfilled != 1) {
        schedule(r, a->cfg.archive_interval_ms);
        return;
    } else if (json_array_size(r->long_tails) > 0) {
        r->busy = 1;
        read_wallet(r);
        return;
    } else {
        if (strcmp(r->cursor, "0") == 0 && r->walking) {   /* a walk ended */
            int moved = r->moved;
            r->walking = 0;
            r->moved = 0;
            if (moved == 0) {     /* nothing to do: rest, then walk again */
                schedule(r, a->cfg.archive_interval_ms);
                return;
            }
        }
        r->walking = 1;
        kgc_rkey(key, a->cfg.key_prefix, ARCH_RK_WALLETS);
        cmds = json_pack("[[s,s,s,s,s]]", "SSCAN", key, r->cursor, "COUNT", ARCH_SCAN_COUNT);
        fn = on_scan;
    }
    r->busy = 1;
    if (store_exec(a->st, cmds, 0, fn, r) != 0) {
        r->busy = 0;
        schedule(r, a->cfg.archive_interval_ms);
    }
    json_decref(cmds);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    archiver *r = arg;
    app *a = r->a;

    (void)fd;
    (void)what;
    if (a->arch->stopping || r->busy)
        return;
    if (a->st == NULL || !store_connected(a->st) || !lease_held(a)) {
        schedule(r, a->cfg.archive_interval_ms);
        return;
    }
    step(r);
}

static void schedule(archiver *r, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};

    evtimer_add(r->timer, &tv);
}

void archive_start(app *a)
{
    struct archive *s;
    const char *f = getenv("KEYGATE_ARCHIVE_FAULT"), *n = getenv("KEYGATE_ARCHIVERS");

    if (a->cfg.archive_engine == KGC_ARCHIVE_NONE)
        return;
    s = xcalloc(1, sizeof *s);
    a->arch = s;
    pthread_mutex_init(&s->mu, NULL);
    s->n = n != NULL && atoi(n) >= 2 ? ARCH_MAX : 1;
    if (f != NULL && sscanf(f, "%15[a-z]:%ld", s->fault, &s->fault_n) != 2)
        s->fault[0] = '\0';
    for (int i = 0; i < s->n; i++) {
        archiver *r = xcalloc(1, sizeof *r);
        r->a = a;
        r->id = i;
        r->wk = worker_new(a->base);
        r->timer = evtimer_new(a->base, on_timer, r);
        r->long_tails = json_array();
        snprintf(r->cursor, sizeof r->cursor, "0");
        s->arch[i] = r;
        schedule(r, 0);
    }
    log_info("archive: %s, keeping the newest %d entries of each ledger in Redis%s",
             a->cfg.archive_engine == KGC_ARCHIVE_SQLITE ? "sqlite" : "postgresql",
             a->cfg.ledger_tail, s->n > 1 ? " (two archivers: test mode)" : "");
}

void archive_quiesce(app *a)
{
    struct archive *s = a->arch;

    if (s == NULL)
        return;
    s->stopping = 1;
    for (int i = 0; i < s->n; i++) {
        archiver *r = s->arch[i];
        evtimer_del(r->timer);
        worker_free(r->wk);       /* runs the batch in flight to its end */
        r->wk = NULL;
    }
}

void archive_free(app *a)
{
    struct archive *s = a->arch;

    if (s == NULL)
        return;
    for (int i = 0; i < s->n; i++) {
        archiver *r = s->arch[i];
        worker_free(r->wk);
        if (r->eng)
            r->eng->close(r->eng);
        if (r->batches > 0)
            log_info("archive: archiver %d: %ld batches archived, %ld of them read ahead",
                     r->id, r->batches, r->read_ahead);
        batch_clear(r);
        abatch_free(&r->next);
        event_free(r->timer);
        json_decref(r->long_tails);
        json_decref(r->scanned);
        free(r);
    }
    if (s->reader)
        s->reader->close(s->reader);
    pthread_mutex_destroy(&s->mu);
    free(s);
    a->arch = NULL;
}

int archive_page(app *a, const char *wallet_id, long long max_seq, const arch_filter *f,
                 int limit, json_t *out, char *err, size_t errlen)
{
    struct archive *s = a->arch;
    int rc = -1;

    if (s == NULL) {
        snprintf(err, errlen, "this ledger's older entries are archived, but no 'archive' is "
                              "configured");
        return -1;
    }
    pthread_mutex_lock(&s->mu);
    if (s->reader == NULL)
        s->reader = arch_open(a->cfg.archive_engine, a->cfg.archive_target, err, errlen);
    if (s->reader != NULL)
        rc = s->reader->page(s->reader, wallet_id, max_seq, f, limit, out, err, errlen);
    pthread_mutex_unlock(&s->mu);
    return rc;
}
