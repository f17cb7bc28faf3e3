/*
 * kg_journal.h - a context's journal of leased decisions (kg_journal.c).
 *
 * One file per context, claimed with flock(): "<prefix>.<n>", the first n
 * (0..KG_JRNL_FILES-1) no live process holds. A process killed with -9
 * drops its lock, so the next context opened on the same prefix takes the
 * file over and replays what it holds. The file is a shared mapping: an
 * entry is written with plain stores before the request is answered (no
 * system call), and the kernel keeps it if the process dies; msync() puts
 * it on disk every <= 50 ms, on the journal's own thread (kg_journal.c).
 *
 * Slots form a ring in seq order: appended at the tail, freed once a
 * flush has charged them, the head moving over freed slots.
 */
#ifndef KG_JOURNAL_H
#define KG_JOURNAL_H

#include <stddef.h>
#include <stdint.h>

#define KG_JRNL_FILES 256
#define KG_JRNL_SLOTS 8192
#define KG_JRNL_LEASE_ID 40

/* One decision, 512 bytes. Valid when seq != 0 and crc matches. */
typedef struct kg_jent {
    uint64_t seq;                 /* written last; 0 = free */
    uint32_t crc;                 /* checksum of the slot with seq, crc = 0 */
    uint32_t pad;
    int64_t cost;                 /* micros */
    int64_t at;                   /* wall-clock ms of the decision */
    char team[40], wallet[40], key_id[40], user_id[40];
    char service[64], model[64];
    char rid[129];                /* request id, "" none */
    char fp[33];                  /* request fingerprint, "" without an id */
    char spare[512 - 8 - 8 - 16 - 160 - 128 - 129 - 33];
} kg_jent;

typedef struct kg_journal kg_journal;

/* Claims a file of prefix, creating it if needed. *out owned by the
 * caller (kg_journal_close). 0, or -1 with err. */
int kg_journal_open(const char *prefix, kg_journal **out, char *err, size_t errlen);
void kg_journal_close(kg_journal *j);                 /* syncs; accepts NULL */
const char *kg_journal_lease_id(const kg_journal *j); /* this file's lease id */
const char *kg_journal_path(const kg_journal *j);

/* Appends e (seq and crc are set here). Returns the slot, or NULL when the
 * ring is full. */
kg_jent *kg_journal_append(kg_journal *j, const kg_jent *e);
/* Frees a slot after its flush was charged (or found charged). */
void kg_journal_free(kg_journal *j, kg_jent *e);
/* The valid slots, oldest first: *it starts at 0; NULL at the end. */
kg_jent *kg_journal_next(kg_journal *j, size_t *it);
size_t kg_journal_count(const kg_journal *j);         /* valid slots */
/* msync(MS_SYNC) when something was written since the last sync (the
 * sync thread calls it; kg_journal_close once more). */
void kg_journal_sync(kg_journal *j);

#endif
