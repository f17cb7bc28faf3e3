/*
 * archive.h - the ledger archive (docs/archive.md): Redis keeps the newest
 * `ledger_tail` entries of each wallet's ledger, keygated moves the older
 * ones to a database (archive/arch_engine.h) exactly once, then trims them.
 *
 * Sequence numbers: an entry's seq is its place in the wallet's ledger
 * counted from the oldest entry ever written (0). The wallet hash keeps the
 * checkpoint: archived_count (entries moved out of Redis: the tail's
 * oldest entry has seq archived_count) and archived_sum_micros (their
 * credits − debits). Debits only push at the newest end and only the trim
 * script below removes from the oldest end, advancing the checkpoint in
 * the same step, so (archived_count, the tail) always names the same seq
 * for the same entry.
 *
 * One batch of a wallet:
 *   1. read, in one MULTI: the checkpoint, LLEN and the oldest
 *      archive_batch entries; k = min(batch, LLEN − ledger_tail)
 *   2. insert the k entries as seq A .. A+k−1 in one transaction, ON
 *      CONFLICT (wallet_id, seq) DO NOTHING (the archiver's own thread)
 *   3. trim script: only if archived_count is still A (and the entries at
 *      the oldest end are still the ones archived) remove them and add k
 *      and their sum to the checkpoint.
 * A crash between 2 and 3, or a second archiver that did 2 with the same
 * A, leaves rows the next step 2 skips and a step 3 that runs once: every
 * entry ends in the database once and leaves Redis once.
 *
 * The archiver runs only while this daemon holds the writer lease, never
 * blocks the loop (the database is on its own thread) and, when the
 * database is away, retries every archive_interval_ms while Redis keeps a
 * longer tail.
 */
#ifndef KG_ARCHIVE_H
#define KG_ARCHIVE_H

#include "app.h"
#include "arch_engine.h"

/* Global set of every wallet id: what the archiver walks. wallet.create
 * adds to it; at the first start with an archive a SCAN backfills it. */
#define ARCH_RK_WALLETS "archive:wallets"
#define ARCH_RK_BACKFILLED "archive:backfilled"

/* Starts the archiver when cfg.archive_engine is set (else does nothing). */
void archive_start(app *a);
/* Before store_free: no new work, the archiver threads joined. */
void archive_quiesce(app *a);
/* After store_free: frees everything. Accepts an app without archive. */
void archive_free(app *a);

/* wallet.ledger's read of the archive, on the worker thread (job_offload):
 * as arch_engine's page(), through a handle of its own. -1 with err also
 * when no archive is configured. */
int archive_page(app *a, const char *wallet_id, long long max_seq, const arch_filter *f,
                 int limit, json_t *out, char *err, size_t errlen);

#endif
