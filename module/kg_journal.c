/*
 * kg_journal.c - the mmap()ed journal of leased decisions (kg_journal.h).
 *
 *   file = header (4096 bytes) + KG_JRNL_SLOTS slots of 512 bytes
 *   header: magic "KGJRNL01", the file's lease id (hex, made at creation
 *   and kept: the store knows which seqs of that lease it has charged)
 *
 * Torn slots (a machine crash in the middle of a write) fail the checksum
 * and are dropped; the exposure this leaves is in docs/module.md.
 *
 * Sync: msync(MS_SYNC) waits for the disk (tens of ms on a busy one), so
 * it runs on a thread of the journal's own, every KG_JRNL_SYNC_MS while
 * something was written: the request path only stores into the mapping.
 * The thread touches nothing but the mapping's address and two atomics.
 */
#include "kg_journal.h"

#include <errno.h>
#include <pthread.h>
#include <time.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define JRNL_MAGIC "KGJRNL01"
#define JRNL_HDR 4096
#define KG_JRNL_SYNC_MS 50

typedef struct jhdr {
    char magic[8];
    char lease_id[KG_JRNL_LEASE_ID];
    uint64_t next_seq;            /* kept here too: when every slot was freed, the
                                     store still knows the seqs charged, and a new
                                     entry must not reuse one */
} jhdr;

struct kg_journal {
    int fd;
    char path[1100];
    unsigned char *map;
    size_t maplen;
    jhdr *hdr;
    kg_jent *slots;
    uint64_t next_seq;
    size_t head, tail, count;     /* ring: [head, tail) holds every valid slot */
    int dirty;                    /* atomic: written since the last msync */
    int stop;                     /* atomic: the sync thread ends */
    int has_thread;
    pthread_t thread;
};

_Static_assert(sizeof(kg_jent) == 512, "a journal slot is 512 bytes");

/* A checksum of the slot with crc = 0: 64-bit words through a
 * multiply-xor, folded to 32 bits. Only torn writes are to be caught, and
 * a table CRC of 512 bytes cost more than the rest of a local decision. */
static uint32_t slot_crc(const kg_jent *e)
{
    kg_jent c = *e;
    uint64_t w, h = 0x9e3779b97f4a7c15ULL;

    c.crc = 0;
    for (size_t i = 0; i < sizeof c; i += 8) {
        memcpy(&w, (const char *)&c + i, 8);
        h = (h ^ w) * 0x100000001b3ULL;
        h ^= h >> 29;
    }
    return (uint32_t)(h ^ (h >> 32));
}

static int slot_valid(const kg_jent *e)
{
    return e->seq != 0 && e->crc == slot_crc(e);
}

/* Rebuilds the ring from the valid slots: head at the lowest seq. */
static void scan(kg_journal *j)
{
    uint64_t lo = 0, hi = 0;
    size_t ilo = 0, ihi = 0;

    j->count = 0;
    for (size_t i = 0; i < KG_JRNL_SLOTS; i++) {
        kg_jent *e = &j->slots[i];
        if (e->seq == 0)
            continue;
        if (!slot_valid(e)) {
            memset(e, 0, sizeof *e);    /* torn by a machine crash */
            continue;
        }
        if (j->count == 0 || e->seq < lo) {
            lo = e->seq;
            ilo = i;
        }
        if (j->count == 0 || e->seq > hi) {
            hi = e->seq;
            ihi = i;
        }
        j->count++;
    }
    j->next_seq = j->hdr->next_seq > hi + 1 ? j->hdr->next_seq : hi + 1;
    if (j->count == 0) {
        j->head = j->tail = 0;
        return;
    }
    j->head = ilo;
    j->tail = (ihi + 1) % KG_JRNL_SLOTS;
}

static int claim(kg_journal *j, const char *prefix, int n, char *err, size_t errlen)
{
    struct stat st;
    size_t len = JRNL_HDR + (size_t)KG_JRNL_SLOTS * sizeof(kg_jent);

    if ((size_t)snprintf(j->path, sizeof j->path, "%s.%d", prefix, n) >= sizeof j->path) {
        snprintf(err, errlen, "lease_journal: path too long");
        return -1;
    }
    j->fd = open(j->path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (j->fd < 0) {
        snprintf(err, errlen, "%s: %s", j->path, strerror(errno));
        return -1;
    }
    if (flock(j->fd, LOCK_EX | LOCK_NB) != 0) {
        close(j->fd);
        j->fd = -1;
        return 1;                       /* a live context holds it: next */
    }
    if (fstat(j->fd, &st) != 0 || !S_ISREG(st.st_mode) ||
        ((size_t)st.st_size != len && ftruncate(j->fd, (off_t)len) != 0)) {
        snprintf(err, errlen, "%s: not a regular file, or cannot be sized", j->path);
        return -1;
    }
    j->map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, j->fd, 0);
    if (j->map == MAP_FAILED) {
        j->map = NULL;
        snprintf(err, errlen, "%s: mmap: %s", j->path, strerror(errno));
        return -1;
    }
    j->maplen = len;
    j->hdr = (jhdr *)j->map;
    j->slots = (kg_jent *)(j->map + JRNL_HDR);
    if (memcmp(j->hdr->magic, JRNL_MAGIC, 8) != 0 ||
        j->hdr->lease_id[KG_JRNL_LEASE_ID - 1] != '\0' || strlen(j->hdr->lease_id) != 32) {
        unsigned char rnd[16];
        if ((size_t)st.st_size == len && memcmp(j->hdr->magic, "\0\0\0\0\0\0\0\0", 8) != 0) {
            snprintf(err, errlen, "%s: not a keygate journal", j->path);
            return -1;
        }
        memset(j->map, 0, len);
        randombytes_buf(rnd, sizeof rnd);
        sodium_bin2hex(j->hdr->lease_id, sizeof j->hdr->lease_id, rnd, sizeof rnd);
        memcpy(j->hdr->magic, JRNL_MAGIC, 8);
        __atomic_store_n(&j->dirty, 1, __ATOMIC_RELEASE);
    }
    scan(j);
    return 0;
}

static void *sync_main(void *arg);

int kg_journal_open(const char *prefix, kg_journal **out, char *err, size_t errlen)
{
    kg_journal *j;

    *out = NULL;
    for (int n = 0; n < KG_JRNL_FILES; n++) {
        int rc;
        if ((j = calloc(1, sizeof *j)) == NULL) {
            snprintf(err, errlen, "kg_open: out of memory");
            return -1;
        }
        j->fd = -1;
        rc = claim(j, prefix, n, err, errlen);
        if (rc == 0 && pthread_create(&j->thread, NULL, sync_main, j) != 0) {
            snprintf(err, errlen, "%s: cannot start the journal's sync thread", j->path);
            rc = -1;
        }
        if (rc == 0) {
            j->has_thread = 1;
            *out = j;
            return 0;
        }
        kg_journal_close(j);
        if (rc < 0)
            return -1;
    }
    snprintf(err, errlen, "%s.*: all %d journal files are held by live contexts", prefix,
             KG_JRNL_FILES);
    return -1;
}

void kg_journal_sync(kg_journal *j)
{
    if (j == NULL || j->map == NULL || !__atomic_exchange_n(&j->dirty, 0, __ATOMIC_ACQ_REL))
        return;
    (void)msync(j->map, j->maplen, MS_SYNC);
}

static void *sync_main(void *arg)
{
    kg_journal *j = arg;
    struct timespec ts = {0, KG_JRNL_SYNC_MS * 1000000L};

    while (!__atomic_load_n(&j->stop, __ATOMIC_ACQUIRE)) {
        nanosleep(&ts, NULL);
        kg_journal_sync(j);
    }
    return NULL;
}

void kg_journal_close(kg_journal *j)
{
    if (j == NULL)
        return;
    if (j->has_thread) {
        __atomic_store_n(&j->stop, 1, __ATOMIC_RELEASE);
        pthread_join(j->thread, NULL);
    }
    if (j->map != NULL) {
        kg_journal_sync(j);
        munmap(j->map, j->maplen);
    }
    if (j->fd >= 0)
        close(j->fd);                   /* drops the lock */
    free(j);
}

const char *kg_journal_lease_id(const kg_journal *j)
{
    return j->hdr->lease_id;
}

const char *kg_journal_path(const kg_journal *j)
{
    return j->path;
}

kg_jent *kg_journal_append(kg_journal *j, const kg_jent *e)
{
    kg_jent *s;

    if (j->count == KG_JRNL_SLOTS)
        return NULL;
    s = &j->slots[j->tail];
    if (s->seq != 0)
        return NULL;                    /* a freed hole behind an older entry */
    memcpy((char *)s + 8, (const char *)e + 8, sizeof *s - 8);
    s->crc = 0;
    s->seq = j->next_seq;
    s->crc = slot_crc(s);
    s->seq = 0;
    /* The slot's body before its seq: a reader (the replay after a kill)
     * never sees a seq over a half-written body. */
    __atomic_store_n(&s->seq, j->next_seq, __ATOMIC_RELEASE);
    j->next_seq++;
    j->hdr->next_seq = j->next_seq;
    j->tail = (j->tail + 1) % KG_JRNL_SLOTS;
    j->count++;
    __atomic_store_n(&j->dirty, 1, __ATOMIC_RELEASE);
    return s;
}

void kg_journal_free(kg_journal *j, kg_jent *e)
{
    if (e->seq == 0)
        return;
    __atomic_store_n(&e->seq, 0, __ATOMIC_RELEASE);
    j->count--;
    __atomic_store_n(&j->dirty, 1, __ATOMIC_RELEASE);
    while (j->count > 0 && j->slots[j->head].seq == 0)
        j->head = (j->head + 1) % KG_JRNL_SLOTS;
    if (j->count == 0)
        j->head = j->tail;
}

kg_jent *kg_journal_next(kg_journal *j, size_t *it)
{
    while (*it < KG_JRNL_SLOTS) {
        size_t i = (j->head + *it) % KG_JRNL_SLOTS;
        if (j->count == 0 || (*it > 0 && i == j->tail))
            return NULL;
        (*it)++;
        if (j->slots[i].seq != 0)
            return &j->slots[i];
    }
    return NULL;
}

size_t kg_journal_count(const kg_journal *j)
{
    return j->count;
}
