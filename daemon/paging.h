/*
 * paging.h - cursors of the listing commands (docs/protocol.md, "Paging").
 *
 * A cursor is an opaque string to the client; inside it names a position
 * that does not move while the list changes the way it can change:
 *
 *   wallet.ledger      "L1.<pos>"               pos: the entry's place counted
 *                                               from the oldest entry (0), so
 *                                               debits pushed at the head do
 *                                               not move it
 *   key.list           "K1.<created_at>.<key_id>"   the last key returned, in
 *                                               (score, id) order of the keys
 *                                               zset: keys are never removed
 *   audit.list         "A1.<ms>.<seq>.<n>.<s>"  the last entry returned: its
 *                                               stream id, audit sequence and
 *                                               stream (0 accepted, 1 refused)
 *   notification.list  "N1.<at>.<hash>.<k>"     the last entry returned: its
 *                                               time, FNV-1a of its text, and
 *                                               k-th such entry from the head
 *
 * Decoders return 0, or -1 for anything that is not exactly such a cursor
 * (the caller answers bad_request). Encoders write into caller buffers of
 * PAGE_CURSOR_MAX bytes.
 */
#ifndef KG_PAGING_H
#define KG_PAGING_H

#include <jansson.h>
#include <stdint.h>

#include "kgc_keys.h"

#define PAGE_CURSOR_MAX 160
/* Most keys one Redis command of a listing touches (MGET, LRANGE, ...). */
#define PAGE_BATCH_MAX 1000

void page_ledger_cursor(char *out, long long pos);
int page_ledger_parse(const char *s, long long *pos);

void page_key_cursor(char *out, long long score, const char *key_id);
int page_key_parse(const char *s, long long *score, char key_id[KGC_ID_MAX]);

typedef struct page_audit_pos {
    unsigned long long ms, seq;   /* stream id */
    long long n;                  /* audit sequence, -1 if absent */
    int stream;                   /* 0 accepted, 1 refused */
} page_audit_pos;

void page_audit_cursor(char *out, const page_audit_pos *p);
int page_audit_parse(const char *s, page_audit_pos *p);
/* Position of one XRANGE entry [id, [f, v, ...]] of stream s; -1 if its id is bad. */
int page_audit_of(json_t *entry, int stream, page_audit_pos *p);
/* >0 if a comes before b in audit.list's order (newest first), <0 after, 0 same. */
int page_audit_cmp(const page_audit_pos *a, const page_audit_pos *b);

void page_notif_cursor(char *out, long long at, uint64_t hash, long long k);
int page_notif_parse(const char *s, long long *at, uint64_t *hash, long long *k);
uint64_t page_hash(const char *s, size_t n);

#endif
