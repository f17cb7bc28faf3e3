/*
 * arch_schema.c - the archive database's versioned schema (docs/archive.md).
 *
 * Migrations are applied in order at open, each in one transaction with
 * its row in keygate_schema, under a lock (BEGIN IMMEDIATE in SQLite, an
 * advisory lock in PostgreSQL), so two daemons starting at once apply each
 * one once. Never edit a released migration: add the next one.
 */
#include "arch_engine.h"
#include "kgc_config.h"

#include <stdio.h>
#include <string.h>

/* v1: the ledger. amount_micros is signed (credits +, debits -), so the
 * checkpoint's archived_sum_micros is a plain SUM. */
#define V1_COMMON(BIGINT)                                                          \
    "CREATE TABLE ledger ("                                                        \
    " wallet_id TEXT NOT NULL,"                                                    \
    " seq " BIGINT " NOT NULL,"                                                    \
    " team_id TEXT NOT NULL,"                                                      \
    " type TEXT NOT NULL,"                                                         \
    " amount_micros " BIGINT " NOT NULL,"                                          \
    " at_ms " BIGINT " NOT NULL,"                                                  \
    " key_id TEXT, service TEXT, model TEXT, request_id TEXT,"                     \
    " entry TEXT NOT NULL,"                                                        \
    " PRIMARY KEY (wallet_id, seq));"                                              \
    "CREATE INDEX ledger_by_key ON ledger (wallet_id, key_id, seq);"               \
    "CREATE INDEX ledger_by_service ON ledger (wallet_id, service, seq);"          \
    "CREATE INDEX ledger_by_time ON ledger (wallet_id, at_ms);"

static const char *const sqlite_v[] = {V1_COMMON("INTEGER")};
static const char *const pg_v[] = {V1_COMMON("BIGINT")};

const char *arch_migration(const char *engine, int v)
{
    if (v < 1 || v > ARCH_SCHEMA_VERSION)
        return NULL;
    return strcmp(engine, "sqlite") == 0 ? sqlite_v[v - 1] : pg_v[v - 1];
}

int arch_row_parse(json_t *doc, const char *text, long long seq, arch_row *row)
{
    const char *type = json_string_value(json_object_get(doc, "type"));
    json_t *amt = json_object_get(doc, "amount_micros"), *at = json_object_get(doc, "at");

    memset(row, 0, sizeof *row);
    if (type == NULL || !json_is_integer(amt) || !json_is_integer(at) ||
        (strcmp(type, "credit") != 0 && strcmp(type, "debit") != 0))
        return -1;
    row->seq = seq;
    row->type = type;
    row->amount_micros = strcmp(type, "credit") == 0 ? json_integer_value(amt)
                                                     : -json_integer_value(amt);
    row->at_ms = json_integer_value(at);
    row->key_id = json_string_value(json_object_get(doc, "key_id"));
    row->service = json_string_value(json_object_get(doc, "service"));
    row->model = json_string_value(json_object_get(doc, "model"));
    row->request_id = json_string_value(json_object_get(doc, "request_id"));
    row->entry = text;
    return 0;
}

arch_engine *arch_open(int engine, const char *target, char *err, size_t errlen)
{
    if (engine == KGC_ARCHIVE_SQLITE)
        return arch_sqlite_open(target, err, errlen);
    if (engine == KGC_ARCHIVE_POSTGRESQL)
        return arch_pg_open(target, err, errlen);
    snprintf(err, errlen, "no archive engine configured");
    return NULL;
}
