/*
 * arch_engine.h - the ledger archive's database (docs/archive.md): one
 * small interface, one file per engine (arch_sqlite.c, arch_pg.c).
 *
 * A handle is one database connection. It is not thread-safe: use it from
 * one thread at a time (the daemon gives the archiver its own thread and
 * handle, and wallet.ledger's reads another one on the worker thread).
 * Every call returns 0, or -1 with the reason in err; after -1 the handle
 * stays usable (a PostgreSQL handle reconnects at its next call), so a
 * database that went away is simply retried later.
 *
 * Rows are identified by (wallet_id, seq): seq is the entry's place in its
 * wallet's ledger counted from the oldest entry ever written (0). insert()
 * writes a batch in one transaction and skips rows whose (wallet_id, seq)
 * exists already (ON CONFLICT DO NOTHING), so sending a batch again after
 * a crash, or two archivers sending the same batch, writes each entry once.
 */
#ifndef KG_ARCH_ENGINE_H
#define KG_ARCH_ENGINE_H

#include <jansson.h>
#include <stddef.h>

/* One ledger entry as archived. Strings are borrowed; NULL = SQL NULL. */
typedef struct arch_row {
    long long seq;
    const char *type;             /* "credit" | "debit" */
    long long amount_micros;      /* signed: + credit, - debit */
    long long at_ms;
    const char *key_id, *service, *model, *request_id;
    const char *entry;            /* the entry's JSON text, as it was in Redis */
} arch_row;

/* wallet.ledger's filters over the archive; NULL / -1 = none. */
typedef struct arch_filter {
    const char *key_id, *service;
    long long from_ms, to_ms;
} arch_filter;

typedef struct arch_engine arch_engine;
struct arch_engine {
    const char *name;             /* "sqlite" | "postgresql" */
    int (*insert)(arch_engine *e, const char *team_id, const char *wallet_id,
                  const arch_row *rows, size_t n, char *err, size_t errlen);
    /* Appends to out (a JSON array) up to limit entries of the wallet with
     * seq <= max_seq passing f, newest first, each [seq, "entry JSON"]. */
    int (*page)(arch_engine *e, const char *wallet_id, long long max_seq, const arch_filter *f,
                int limit, json_t *out, char *err, size_t errlen);
    /* Rows of the wallet with seq < below: how many, their Σ amount_micros,
     * and the largest seq of the wallet overall (-1: none). */
    int (*sums)(arch_engine *e, const char *wallet_id, long long below, long long *count,
                long long *sum, long long *max_seq, char *err, size_t errlen);
    /* Wallet ids that have rows, after `after` ("" first), at most limit,
     * appended to out (sorted). fsck's pass over the archive. */
    int (*wallets)(arch_engine *e, const char *after, int limit, json_t *out, char *err,
                   size_t errlen);
    void (*close)(arch_engine *e);
};

/* Opens engine (KGC_ARCHIVE_SQLITE or KGC_ARCHIVE_POSTGRESQL) at target
 * (a path or a libpq conninfo) and brings its schema up to date
 * (arch_schema.c). The caller frees with e->close(e). NULL on error. */
arch_engine *arch_open(int engine, const char *target, char *err, size_t errlen);

arch_engine *arch_sqlite_open(const char *path, char *err, size_t errlen);
arch_engine *arch_pg_open(const char *conninfo, char *err, size_t errlen);

/* The schema's migrations (arch_schema.c): migration v (1-based) for an
 * engine, NULL past the last one. */
#define ARCH_SCHEMA_VERSION 1
const char *arch_migration(const char *engine, int v);

/* Parses one ledger entry's JSON text into *row (strings borrowed from
 * doc, which the caller keeps). 0, or -1 if it is not a ledger entry. */
int arch_row_parse(json_t *doc, const char *text, long long seq, arch_row *row);

#endif
