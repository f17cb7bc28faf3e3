/*
 * arch_sqlite.c - the SQLite archive engine (Debian's libsqlite3): the
 * embedded default for one machine. WAL mode, so wallet.ledger's reader
 * and the archiver's writer do not wait for each other; a busy timeout,
 * so a second writer (another keygated, `sqlite3` by hand) is waited for
 * a while, then the batch fails and is retried later. Statements are
 * prepared once at open; values are bound, never quoted into SQL.
 */
#include "arch_engine.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BUSY_TIMEOUT_MS 2000

typedef struct sq_engine {
    arch_engine base;             /* first: a sq_engine * is an arch_engine * */
    sqlite3 *db;
    sqlite3_stmt *ins, *sums, *maxseq;
} sq_engine;

static int fail(sq_engine *q, const char *what, char *err, size_t errlen)
{
    snprintf(err, errlen, "sqlite: %s: %s", what, sqlite3_errmsg(q->db));
    return -1;
}

static int exec(sq_engine *q, const char *sql, char *err, size_t errlen)
{
    char *msg = NULL;

    if (sqlite3_exec(q->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        snprintf(err, errlen, "sqlite: %s", msg ? msg : sqlite3_errmsg(q->db));
        sqlite3_free(msg);
        return -1;
    }
    return 0;
}

static void bind_text(sqlite3_stmt *st, int i, const char *v)
{
    if (v == NULL)
        sqlite3_bind_null(st, i);
    else
        sqlite3_bind_text(st, i, v, -1, SQLITE_STATIC);
}

static int sq_insert(arch_engine *e, const char *team_id, const char *wallet_id,
                     const arch_row *rows, size_t n, char *err, size_t errlen)
{
    sq_engine *q = (sq_engine *)e;

    if (exec(q, "BEGIN IMMEDIATE", err, errlen) != 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        const arch_row *r = &rows[i];
        int rc;

        sqlite3_bind_text(q->ins, 1, wallet_id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(q->ins, 2, r->seq);
        sqlite3_bind_text(q->ins, 3, team_id, -1, SQLITE_STATIC);
        bind_text(q->ins, 4, r->type);
        sqlite3_bind_int64(q->ins, 5, r->amount_micros);
        sqlite3_bind_int64(q->ins, 6, r->at_ms);
        bind_text(q->ins, 7, r->key_id);
        bind_text(q->ins, 8, r->service);
        bind_text(q->ins, 9, r->model);
        bind_text(q->ins, 10, r->request_id);
        bind_text(q->ins, 11, r->entry);
        rc = sqlite3_step(q->ins);
        sqlite3_clear_bindings(q->ins);
        if (sqlite3_reset(q->ins) != SQLITE_OK || rc != SQLITE_DONE) {
            fail(q, "insert", err, errlen);
            sqlite3_exec(q->db, "ROLLBACK", NULL, NULL, NULL);
            return -1;
        }
    }
    if (exec(q, "COMMIT", err, errlen) != 0) {
        sqlite3_exec(q->db, "ROLLBACK", NULL, NULL, NULL);
        return -1;
    }
    return 0;
}

static int sq_page(arch_engine *e, const char *wallet_id, long long max_seq,
                   const arch_filter *f, int limit, json_t *out, char *err, size_t errlen)
{
    sq_engine *q = (sq_engine *)e;
    char sql[512];
    sqlite3_stmt *st = NULL;
    int rc;

    /* Only the filters asked for are in the SQL, so the planner can use
     * the index that fits (by key, by service, by time). */
    snprintf(sql, sizeof sql,
             "SELECT seq, entry FROM ledger WHERE wallet_id = ?1 AND seq <= ?2%s%s%s%s"
             " ORDER BY seq DESC LIMIT %d",
             f->key_id ? " AND key_id = ?3" : "", f->service ? " AND service = ?4" : "",
             f->from_ms >= 0 ? " AND at_ms >= ?5" : "", f->to_ms >= 0 ? " AND at_ms <= ?6" : "",
             limit);
    if (sqlite3_prepare_v2(q->db, sql, -1, &st, NULL) != SQLITE_OK)
        return fail(q, "page", err, errlen);
    sqlite3_bind_text(st, 1, wallet_id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, max_seq);
    if (f->key_id)
        sqlite3_bind_text(st, 3, f->key_id, -1, SQLITE_STATIC);
    if (f->service)
        sqlite3_bind_text(st, 4, f->service, -1, SQLITE_STATIC);
    if (f->from_ms >= 0)
        sqlite3_bind_int64(st, 5, f->from_ms);
    if (f->to_ms >= 0)
        sqlite3_bind_int64(st, 6, f->to_ms);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const unsigned char *t = sqlite3_column_text(st, 1);
        json_array_append_new(out, json_pack("[I,s]", (json_int_t)sqlite3_column_int64(st, 0),
                                             t ? (const char *)t : ""));
    }
    if (rc != SQLITE_DONE) {
        fail(q, "page", err, errlen);
        sqlite3_finalize(st);
        return -1;
    }
    sqlite3_finalize(st);
    return 0;
}

static int sq_sums(arch_engine *e, const char *wallet_id, long long below, long long *count,
                   long long *sum, long long *max_seq, char *err, size_t errlen)
{
    sq_engine *q = (sq_engine *)e;
    int rc;

    sqlite3_bind_text(q->sums, 1, wallet_id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(q->sums, 2, below);
    rc = sqlite3_step(q->sums);
    if (rc == SQLITE_ROW) {
        *count = sqlite3_column_int64(q->sums, 0);
        *sum = sqlite3_column_int64(q->sums, 1);
    }
    if (sqlite3_reset(q->sums) != SQLITE_OK || rc != SQLITE_ROW)
        return fail(q, "sums", err, errlen);
    sqlite3_bind_text(q->maxseq, 1, wallet_id, -1, SQLITE_STATIC);
    rc = sqlite3_step(q->maxseq);
    if (rc == SQLITE_ROW)
        *max_seq = sqlite3_column_type(q->maxseq, 0) == SQLITE_NULL
                       ? -1 : sqlite3_column_int64(q->maxseq, 0);
    if (sqlite3_reset(q->maxseq) != SQLITE_OK || rc != SQLITE_ROW)
        return fail(q, "max seq", err, errlen);
    return 0;
}

static int sq_wallets(arch_engine *e, const char *after, int limit, json_t *out, char *err,
                      size_t errlen)
{
    sq_engine *q = (sq_engine *)e;
    sqlite3_stmt *st = NULL;
    int rc;

    /* The primary key's order: one index walk per wallet, no scan of rows. */
    if (sqlite3_prepare_v2(q->db, "SELECT DISTINCT wallet_id FROM ledger WHERE wallet_id > ?1"
                                  " ORDER BY wallet_id LIMIT ?2", -1, &st, NULL) != SQLITE_OK)
        return fail(q, "wallets", err, errlen);
    sqlite3_bind_text(st, 1, after, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 2, limit);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        json_array_append_new(out, json_string((const char *)sqlite3_column_text(st, 0)));
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : fail(q, "wallets", err, errlen);
}

static void sq_close(arch_engine *e)
{
    sq_engine *q = (sq_engine *)e;

    if (q == NULL)
        return;
    sqlite3_finalize(q->ins);
    sqlite3_finalize(q->sums);
    sqlite3_finalize(q->maxseq);
    sqlite3_close(q->db);
    free(q);
}

/* Applies the migrations this database has not seen (arch_schema.c). */
static int migrate(sq_engine *q, char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    int have = 0;

    if (exec(q, "CREATE TABLE IF NOT EXISTS keygate_schema (version INTEGER NOT NULL)", err,
             errlen) != 0 ||
        exec(q, "BEGIN IMMEDIATE", err, errlen) != 0)
        return -1;
    if (sqlite3_prepare_v2(q->db, "SELECT coalesce(max(version), 0) FROM keygate_schema", -1, &st,
                           NULL) != SQLITE_OK || sqlite3_step(st) != SQLITE_ROW) {
        fail(q, "schema version", err, errlen);
        goto rollback;
    }
    have = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    st = NULL;
    if (have > ARCH_SCHEMA_VERSION) {
        snprintf(err, errlen, "sqlite: the archive's schema is version %d, newer than this "
                              "keygated's %d", have, ARCH_SCHEMA_VERSION);
        goto rollback;
    }
    for (int v = have + 1; v <= ARCH_SCHEMA_VERSION; v++) {
        char row[80];
        if (exec(q, arch_migration("sqlite", v), err, errlen) != 0)
            goto rollback;
        snprintf(row, sizeof row, "INSERT INTO keygate_schema VALUES (%d)", v);
        if (exec(q, row, err, errlen) != 0)
            goto rollback;
    }
    return exec(q, "COMMIT", err, errlen);
rollback:
    sqlite3_finalize(st);
    sqlite3_exec(q->db, "ROLLBACK", NULL, NULL, NULL);
    return -1;
}

arch_engine *arch_sqlite_open(const char *path, char *err, size_t errlen)
{
    sq_engine *q = calloc(1, sizeof *q);

    if (q == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    q->base.name = "sqlite";
    q->base.insert = sq_insert;
    q->base.page = sq_page;
    q->base.sums = sq_sums;
    q->base.wallets = sq_wallets;
    q->base.close = sq_close;
    if (sqlite3_open_v2(path, &q->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                                           SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "sqlite: %s: %s", path,
                 q->db ? sqlite3_errmsg(q->db) : "cannot open");
        sq_close(&q->base);
        return NULL;
    }
    sqlite3_busy_timeout(q->db, BUSY_TIMEOUT_MS);
    /* synchronous=FULL in WAL: the WAL is synced at every commit. Redis
     * trims a batch as soon as its commit returns, so a commit that a power
     * loss could still undo (NORMAL syncs only at checkpoints) would lose
     * entries nobody holds any more. One fsync per batch of up to 1,000. */
    if (exec(q, "PRAGMA journal_mode=WAL", err, errlen) != 0 ||
        exec(q, "PRAGMA synchronous=FULL", err, errlen) != 0 || migrate(q, err, errlen) != 0) {
        sq_close(&q->base);
        return NULL;
    }
    if (sqlite3_prepare_v2(q->db,
                           "INSERT INTO ledger (wallet_id, seq, team_id, type, amount_micros,"
                           " at_ms, key_id, service, model, request_id, entry)"
                           " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
                           " ON CONFLICT (wallet_id, seq) DO NOTHING",
                           -1, &q->ins, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(q->db,
                           "SELECT count(*), coalesce(sum(amount_micros), 0) FROM ledger"
                           " WHERE wallet_id = ?1 AND seq < ?2", -1, &q->sums, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(q->db, "SELECT max(seq) FROM ledger WHERE wallet_id = ?1", -1,
                           &q->maxseq, NULL) != SQLITE_OK) {
        fail(q, "prepare", err, errlen);
        sq_close(&q->base);
        return NULL;
    }
    return &q->base;
}
