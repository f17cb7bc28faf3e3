/*
 * app.h - what the daemon's parts share: config, store, catalog, pepper.
 */
#ifndef KG_APP_H
#define KG_APP_H

#include <event2/event.h>

#include "kgc_config.h"
#include "kgc_price.h"
#include "store.h"
#include "worker.h"

typedef struct job job;

typedef struct app {
    struct event_base *base;
    kgc_config cfg;
    char config_path[KGC_PATH_MAX];
    store *st;
    worker *wk;                   /* background thread for CPU-heavy steps */
    kgc_catalog *cat;             /* current catalog (owned) */
    unsigned char *pepper;        /* sodium_malloc'ed, KGC_PEPPER_LEN */
    job *queue_head, *queue_tail; /* mutating commands waiting to start */
    int mut_active;               /* mutating commands started, not yet decided */
    job *active, *active_tail;    /* those commands, oldest first */
    job *limbo;                   /* commands whose commit reply was lost */
    long long wseq;               /* transactions sent so far */
    json_t *written;              /* Redis key -> wseq of its last write, while any
                                     mutating command is active (job.c) */
    long long audit_seq;          /* audit entries written by this run (job.c) */
    int writer;                   /* WRITER_* (lease.h) */
    long long writer_until_ms;    /* monotonic: the lease is ours until then */
    struct lease *lease;          /* lease.c's state */
    struct alerts *alerts;        /* alert.c's state (webhook.h) */
    struct webhook *wh;           /* webhook.c's state */
    struct expiry *expiry;        /* expiry.c's state */
    struct sweep *holds;          /* holds.c's sweep (sweep.h) */
    struct archive *arch;         /* archive.c's state, NULL without an archive */
    struct sweep *reclaim;        /* reclaim.c's sweep (sweep.h) */
    struct xrun *xc_runs;         /* cross-slot commits in progress here (xcommit.c) */
} app;

/* Loads the catalog from cfg.catalog_path; on success replaces the current
 * one and publishes it to Redis. Returns 0, or -1 (old one kept) with the
 * reason in err. */
int catalog_reload(app *a, char *err, size_t errlen);

/* Writes the current catalog to Redis and publishes "catalog". */
void catalog_publish(app *a);

#endif
