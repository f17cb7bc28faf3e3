/*
 * store_int.h - what store.c shares with store_cluster.c. Not for other
 * files: they see store.h only.
 */
#ifndef KG_STORE_INT_H
#define KG_STORE_INT_H

#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <jansson.h>

#include "kgc_config.h"
#include "store.h"

/* A Redis reply as JSON: string, integer, null, array; an error becomes
 * {"$err": "<message>"} (counted in the metrics). */
json_t *store_reply_json(const redisReply *r);

/* 1 if every command is a non-empty array of strings and integers. */
int store_cmds_ok(json_t *cmds);

long long store_mono_ms(void);

/* Runs the owner's connect hook (store_on_connect). */
void store_fire_connect(store *s);

/* --- Redis Cluster (store_cluster.c), when cfg->ncluster > 0 ---------- */
typedef struct cstore cstore;

cstore *cstore_new(struct event_base *base, const kgc_config *cfg, store *owner);
void cstore_free(cstore *cs);              /* fails the batches in flight */
int cstore_connected(const cstore *cs);
int cstore_exec(cstore *cs, json_t *cmds, int transaction, int acks, store_done_fn done,
                void *arg);

#endif
