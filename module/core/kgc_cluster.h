/*
 * kgc_cluster.h - Redis Cluster routing, the part without I/O (issue 11).
 *
 * Debian's hiredis 0.14.1 has no cluster client, so this is the small one
 * libkeygate routes with (and the CLI and the daemon may later):
 *
 *   kgc_cluster_slot      CRC16-XMODEM of a key, or of its {hash tag}, mod 16384
 *   kgc_cluster_map       which master serves each slot, built from
 *                         CLUSTER SLOTS whole, checked, then swapped in
 *   kgc_cluster_classify  what an error reply asks of the caller: MOVED
 *                         (patch one slot, refresh the map, resend), ASK
 *                         (ASKING then resend once on the target, map left
 *                         alone), TRYAGAIN / CLUSTERDOWN / LOADING (resend
 *                         later, bounded by the request's timeout), READONLY
 *                         (a replica answered: refresh the map)
 *
 * A node keeps its index in nodes[] for the life of the map (a refresh
 * only adds addresses), so a caller may index its connections by it.
 * Everything here is plain data: no allocation, no I/O, no locking.
 */
#ifndef KGC_CLUSTER_H
#define KGC_CLUSTER_H

#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

#include "kgc_config.h"

#define KGC_CLUSTER_SLOTS 16384
#define KGC_CLUSTER_NODES_MAX 64     /* addresses a map remembers */
#define KGC_CLUSTER_NONE 0xFF        /* slot_node[]: no master known */

typedef struct kgc_cluster_map {
    kgc_hostport nodes[KGC_CLUSTER_NODES_MAX];
    int nnodes;
    uint8_t slot_node[KGC_CLUSTER_SLOTS]; /* index into nodes, or KGC_CLUSTER_NONE */
    int complete;                 /* every slot has a master */
} kgc_cluster_map;

/* The slot of a key: CRC16-XMODEM of the part between the first '{' and
 * the next '}' when that part is not empty, else of the whole key. */
unsigned kgc_cluster_slot(const char *key, size_t len);

/* A short hash tag ("~" + decimal, no braces) whose slot is slot: what
 * puts a key of our own next to a key that has no tag of its own (the
 * daemon's version of P user:<id>, a cross-slot commit's marker). The
 * same for every process: the smallest such number. */
const char *kgc_cluster_tag(unsigned slot);

/* 1 if key has a hash tag of its own (a non-empty {...}). */
int kgc_cluster_has_tag(const char *key, size_t len);

void kgc_cluster_map_init(kgc_cluster_map *m);

/* The index of host:port in m->nodes, added if new; -1 when full. */
int kgc_cluster_node(kgc_cluster_map *m, const char *host, int port);

/* Rebuilds the slot table from a CLUSTER SLOTS reply, taken from a node
 * at asked_host (the host to use when a node's endpoint is empty). The
 * table is built aside and checked (well-formed ranges, ports, hosts)
 * before it replaces m's; a bad reply leaves m as it was. 0 or -1 + err. */
int kgc_cluster_map_apply(kgc_cluster_map *m, const redisReply *r, const char *asked_host,
                          char *err, size_t errlen);

/* Points one slot at host:port (a MOVED answer): 0, or -1 when full. */
int kgc_cluster_map_move(kgc_cluster_map *m, unsigned slot, const char *host, int port);

enum kgc_cluster_err {
    KGC_CE_OTHER = 0,             /* not a routing error: the command's own answer */
    KGC_CE_MOVED,                 /* *slot and *to set */
    KGC_CE_ASK,                   /* *slot and *to set */
    KGC_CE_RETRY,                 /* TRYAGAIN, CLUSTERDOWN, LOADING, MASTERDOWN: resend later */
    KGC_CE_READONLY               /* a replica answered a write: refresh the map */
};

/* Classifies an error reply's text. slot and to may be NULL. A MOVED or
 * ASK whose address does not parse is KGC_CE_OTHER. */
int kgc_cluster_classify(const char *errstr, size_t len, unsigned *slot, kgc_hostport *to);

/* Blocking, bounded: asks each seed of cfg->cluster in turn (connect, AUTH
 * with cfg's credentials (kgc_auth.h), and each reply bounded by timeout_ms)
 * for CLUSTER SLOTS and applies the first good answer. For start-up and the
 * blocking form only. 0 or -1 + err (the last seed's failure, an AUTH
 * refusal included). */
int kgc_cluster_load(kgc_cluster_map *m, const kgc_config *cfg, int timeout_ms, char *err,
                     size_t errlen);

#endif
