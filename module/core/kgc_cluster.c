/*
 * kgc_cluster.c - slots, the slot map and error replies (kgc_cluster.h).
 */
#include "kgc_cluster.h"
#include "kgc_auth.h"

#include <stdio.h>
#include <stdlib.h>
#include <pthread.h>
#include <string.h>
#include <sys/time.h>

/* CRC16-XMODEM (polynomial 0x1021, initial value 0), bit by bit: keys are
 * short and this runs once per command in cluster mode only. */
static unsigned crc16(const char *buf, size_t len)
{
    unsigned crc = 0;

    for (size_t i = 0; i < len; i++) {
        crc ^= (unsigned)(unsigned char)buf[i] << 8;
        for (int b = 0; b < 8; b++)
            crc = (crc & 0x8000) ? ((crc << 1) ^ 0x1021) & 0xFFFF : (crc << 1) & 0xFFFF;
    }
    return crc;
}

unsigned kgc_cluster_slot(const char *key, size_t len)
{
    size_t s, e;

    for (s = 0; s < len && key[s] != '{'; s++)
        ;
    if (s < len) {
        for (e = s + 1; e < len && key[e] != '}'; e++)
            ;
        if (e < len && e > s + 1)
            return crc16(key + s + 1, e - s - 1) & (KGC_CLUSTER_SLOTS - 1);
    }
    return crc16(key, len) & (KGC_CLUSTER_SLOTS - 1);
}

int kgc_cluster_has_tag(const char *key, size_t len)
{
    const char *open = memchr(key, '{', len), *close;

    if (open == NULL)
        return 0;
    close = memchr(open + 1, '}', len - (size_t)(open + 1 - key));
    return close != NULL && close > open + 1;
}

static uint32_t tag_of_slot[KGC_CLUSTER_SLOTS];
static pthread_once_t tags_once = PTHREAD_ONCE_INIT;

/* Every slot's smallest "~n": a few hundred thousand CRCs, once per
 * process. */
static void tags_fill(void)
{
    unsigned left = KGC_CLUSTER_SLOTS;
    static uint8_t have[KGC_CLUSTER_SLOTS];

    for (unsigned n = 0; left > 0 && n < 100000000; n++) {
        char t[12];
        int len = snprintf(t, sizeof t, "~%u", n);
        unsigned s = crc16(t, (size_t)len) % KGC_CLUSTER_SLOTS;
        if (!have[s]) {
            have[s] = 1;
            tag_of_slot[s] = n;
            left--;
        }
    }
}

const char *kgc_cluster_tag(unsigned slot)
{
    static __thread char buf[12];

    pthread_once(&tags_once, tags_fill);
    snprintf(buf, sizeof buf, "~%u", (unsigned)tag_of_slot[slot % KGC_CLUSTER_SLOTS]);
    return buf;
}

void kgc_cluster_map_init(kgc_cluster_map *m)
{
    memset(m, 0, sizeof *m);
    memset(m->slot_node, KGC_CLUSTER_NONE, sizeof m->slot_node);
}

int kgc_cluster_node(kgc_cluster_map *m, const char *host, int port)
{
    for (int i = 0; i < m->nnodes; i++)
        if (m->nodes[i].port == port && strcmp(m->nodes[i].host, host) == 0)
            return i;
    if (m->nnodes >= KGC_CLUSTER_NODES_MAX || strlen(host) >= sizeof m->nodes[0].host)
        return -1;
    snprintf(m->nodes[m->nnodes].host, sizeof m->nodes[0].host, "%s", host);
    m->nodes[m->nnodes].port = port;
    return m->nnodes++;
}

static int int_of(const redisReply *r, long long *out)
{
    if (r == NULL || r->type != REDIS_REPLY_INTEGER)
        return -1;
    *out = r->integer;
    return 0;
}

int kgc_cluster_map_apply(kgc_cluster_map *m, const redisReply *r, const char *asked_host,
                          char *err, size_t errlen)
{
    kgc_cluster_map next = *m;   /* addresses kept: indices stay valid */
    size_t assigned = 0;

    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements == 0) {
        snprintf(err, errlen, "CLUSTER SLOTS: %s",
                 r != NULL && r->type == REDIS_REPLY_ERROR ? r->str : "no slot ranges");
        return -1;
    }
    memset(next.slot_node, KGC_CLUSTER_NONE, sizeof next.slot_node);
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i], *n;
        long long lo, hi, port;
        char host[256];
        int idx;

        if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 || int_of(e->element[0], &lo) != 0 ||
            int_of(e->element[1], &hi) != 0 || lo < 0 || hi < lo || hi >= KGC_CLUSTER_SLOTS) {
            snprintf(err, errlen, "CLUSTER SLOTS: range %zu is not valid", i);
            return -1;
        }
        n = e->element[2];      /* the master: [host, port, id, ...] */
        if (n->type != REDIS_REPLY_ARRAY || n->elements < 2 ||
            n->element[0]->type != REDIS_REPLY_STRING || int_of(n->element[1], &port) != 0 ||
            port <= 0 || port > 65535 || n->element[0]->len >= sizeof host) {
            snprintf(err, errlen, "CLUSTER SLOTS: the master of range %zu is not valid", i);
            return -1;
        }
        /* "" or "?" (Redis 7: endpoint unknown): the node we asked. */
        if (n->element[0]->len == 0 || strcmp(n->element[0]->str, "?") == 0)
            snprintf(host, sizeof host, "%s", asked_host);
        else
            memcpy(host, n->element[0]->str, n->element[0]->len + 1);
        if ((idx = kgc_cluster_node(&next, host, (int)port)) < 0) {
            snprintf(err, errlen, "CLUSTER SLOTS: more than %d masters", KGC_CLUSTER_NODES_MAX);
            return -1;
        }
        for (long long s = lo; s <= hi; s++) {
            if (next.slot_node[s] == KGC_CLUSTER_NONE)
                assigned++;
            next.slot_node[s] = (uint8_t)idx;
        }
    }
    next.complete = assigned == KGC_CLUSTER_SLOTS;
    *m = next;
    return 0;
}

int kgc_cluster_map_move(kgc_cluster_map *m, unsigned slot, const char *host, int port)
{
    int idx;

    if (slot >= KGC_CLUSTER_SLOTS || (idx = kgc_cluster_node(m, host, port)) < 0)
        return -1;
    m->slot_node[slot] = (uint8_t)idx;
    return 0;
}

/* "<slot> <host>:<port>" (the host may be an IPv6 address: the last ':'). */
static int parse_redirect(const char *s, size_t len, unsigned *slot, kgc_hostport *to)
{
    char buf[300], *sp, *colon, *end;
    long sl, port;

    if (len >= sizeof buf)
        return -1;
    memcpy(buf, s, len);
    buf[len] = '\0';
    sl = strtol(buf, &sp, 10);
    if (sp == buf || *sp != ' ' || sl < 0 || sl >= KGC_CLUSTER_SLOTS)
        return -1;
    sp++;
    if ((colon = strrchr(sp, ':')) == NULL || colon == sp ||
        (size_t)(colon - sp) >= sizeof to->host)
        return -1;
    port = strtol(colon + 1, &end, 10);
    if (end == colon + 1 || (*end != '\0' && *end != '\r' && *end != '\n') || port <= 0 ||
        port > 65535)
        return -1;
    if (slot != NULL)
        *slot = (unsigned)sl;
    if (to != NULL) {
        memcpy(to->host, sp, (size_t)(colon - sp));
        to->host[colon - sp] = '\0';
        to->port = (int)port;
    }
    return 0;
}

static int starts(const char *s, size_t len, const char *word)
{
    size_t n = strlen(word);
    return len >= n && memcmp(s, word, n) == 0 && (len == n || s[n] == ' ');
}

int kgc_cluster_classify(const char *s, size_t len, unsigned *slot, kgc_hostport *to)
{
    if (s == NULL)
        return KGC_CE_OTHER;
    if (starts(s, len, "MOVED"))
        return parse_redirect(s + 6, len - 6, slot, to) == 0 ? KGC_CE_MOVED : KGC_CE_OTHER;
    if (starts(s, len, "ASK"))
        return parse_redirect(s + 4, len - 4, slot, to) == 0 ? KGC_CE_ASK : KGC_CE_OTHER;
    if (starts(s, len, "TRYAGAIN") || starts(s, len, "CLUSTERDOWN") || starts(s, len, "LOADING") ||
        starts(s, len, "MASTERDOWN"))
        return KGC_CE_RETRY;
    if (starts(s, len, "READONLY"))
        return KGC_CE_READONLY;
    return KGC_CE_OTHER;
}

int kgc_cluster_load(kgc_cluster_map *m, const kgc_config *cfg, int timeout_ms, char *err,
                     size_t errlen)
{
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    const kgc_hostport *seeds = cfg->cluster;
    char why[400];

    snprintf(err, errlen, "no cluster node given");
    for (int i = 0; i < cfg->ncluster; i++) {
        redisContext *c = redisConnectWithTimeout(seeds[i].host, seeds[i].port, tv);
        redisReply *r = NULL;
        int rc = -1;

        if (c == NULL || c->err) {
            snprintf(err, errlen, "%s:%d: %s", seeds[i].host, seeds[i].port,
                     c != NULL ? c->errstr : "out of memory");
        } else if (redisSetTimeout(c, tv) != REDIS_OK) {
            snprintf(err, errlen, "%s:%d: %s", seeds[i].host, seeds[i].port, c->errstr);
        } else if (kgc_auth_sync(c, cfg, why, sizeof why) != 0) {
            snprintf(err, errlen, "%s:%d: %s", seeds[i].host, seeds[i].port, why);
        } else if ((r = redisCommand(c, "CLUSTER SLOTS")) == NULL) {
            snprintf(err, errlen, "%s:%d: %s", seeds[i].host, seeds[i].port, c->errstr);
        } else {
            rc = kgc_cluster_map_apply(m, r, seeds[i].host, err, errlen);
        }
        freeReplyObject(r);
        redisFree(c);
        if (rc == 0)
            return 0;
    }
    return -1;
}
