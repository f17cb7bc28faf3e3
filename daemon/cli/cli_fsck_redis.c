/*
 * cli_fsck_redis.c - how `keygate fsck` reads Redis: blocking hiredis
 * calls (one at a time, or pipelined), watched reads of an object's keys,
 * and the re-run of an object's check until nothing it read changed
 * meanwhile (WATCH, then an empty MULTI/EXEC: see cli_cmd_fsck.c).
 *
 * The first failure of the connection is kept in f->broken_why; from then
 * on every call returns at once.
 */
#include "cli_fsck.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "kgc_auth.h"
#include "kgc_cluster.h"
#include "kgc_keys.h"

#define FSCK_RETRIES        20       /* re-runs of an object's check on concurrent change */

static void fsck_broken_ctx(fsck *f, const redisContext *c)
{
    if (!f->broken)
        snprintf(f->broken_why, sizeof f->broken_why, "%s",
                 c != NULL && c->errstr[0] ? c->errstr : "connection lost");
    f->broken = 1;
}

static void fsck_broken(fsck *f)
{
    fsck_broken_ctx(f, f->rc);
}

static void fsck_broken_why(fsck *f, const char *why)
{
    if (!f->broken)
        snprintf(f->broken_why, sizeof f->broken_why, "%s", why);
    f->broken = 1;
}

/* --- Redis Cluster ------------------------------------------------------------
 * Each command goes to the master of its key's slot (argv[1]), a SCAN to the
 * master being scanned; the node of every reply still to read waits in a
 * FIFO, so pipelined reads stay in order across connections. A MULTI is
 * sent just before the first keyed command after it (to that command's
 * node: fsck's transactions are one slot each), its EXEC to the same node.
 * WATCHes open on several nodes are confirmed by an empty MULTI/EXEC on
 * each (fsck_watch_commit): if no watched key changed on any node, what
 * was read is what every node held at the instant of the first EXEC.
 * The slot map is not followed during a pass: a MOVED, ASK, TRYAGAIN or
 * CLUSTERDOWN (a reshard or a failover under way), or a master lost, stops
 * the pass rather than reading a half-moved team; cli_cmd_fsck.c then
 * starts again on a fresh map, a bounded number of times. */

int fsck_cluster_open(fsck *f, const kgc_config *cfg, int timeout_ms, char *err, size_t errlen)
{
    fsck_cluster *cl = calloc(1, sizeof *cl);

    if (cl == NULL || (cl->map = malloc(sizeof *cl->map)) == NULL) {
        free(cl);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    f->cl = cl;
    cl->tx_node = -1;
    cl->timeout_ms = timeout_ms;
    cl->cfg = cfg;
    kgc_cluster_map_init(cl->map);
    if (kgc_cluster_load(cl->map, cfg, timeout_ms, err, errlen) != 0)
        return -1;
    if (!cl->map->complete) {
        snprintf(err, errlen, "the cluster does not serve every slot (CLUSTER SLOTS)");
        return -1;
    }
    {
        unsigned char serves[KGC_CLUSTER_NODES_MAX] = {0};
        for (unsigned s = 0; s < KGC_CLUSTER_SLOTS; s++)
            if (cl->map->slot_node[s] < KGC_CLUSTER_NODES_MAX)
                serves[cl->map->slot_node[s]] = 1;
        for (int i = 0; i < cl->map->nnodes; i++)
            if (serves[i])
                cl->masters[cl->nmasters++] = i;
    }
    return 0;
}

void fsck_cluster_close(fsck *f)
{
    if (f->cl == NULL)
        return;
    for (int i = 0; i < KGC_CLUSTER_NODES_MAX; i++)
        if (f->cl->node[i] != NULL)
            redisFree(f->cl->node[i]);
    free(f->cl->fifo);
    free(f->cl->map);
    free(f->cl);
    f->cl = NULL;
}

/* The connection to node i, opened on first use; NULL with f->broken. */
static redisContext *cl_conn(fsck *f, int i)
{
    fsck_cluster *cl = f->cl;
    struct timeval tv = {cl->timeout_ms / 1000, (cl->timeout_ms % 1000) * 1000};

    if (cl->node[i] != NULL)
        return cl->node[i];
    cl->node[i] = redisConnectWithTimeout(cl->map->nodes[i].host, cl->map->nodes[i].port, tv);
    if (cl->node[i] == NULL || cl->node[i]->err) {
        char why[256];
        snprintf(why, sizeof why, "cluster node %.100s:%d: %.120s", cl->map->nodes[i].host,
                 cl->map->nodes[i].port, cl->node[i] ? cl->node[i]->errstr : "out of memory");
        fsck_broken_why(f, why);
        cl->changed = 1;                       /* a failed master? */
        return NULL;
    }
    redisSetTimeout(cl->node[i], tv);
    {
        char aerr[200], why[256];
        if (kgc_auth_sync(cl->node[i], cl->cfg, aerr, sizeof aerr) != 0) {
            /* Not a cluster change: no new start would mend it. */
            snprintf(why, sizeof why, "cluster node %.100s:%d: %.120s", cl->map->nodes[i].host,
                     cl->map->nodes[i].port, aerr);
            fsck_broken_why(f, why);
            redisFree(cl->node[i]);
            cl->node[i] = NULL;
            return NULL;
        }
    }
    return cl->node[i];
}

static void cl_fifo_add(fsck *f, int node)
{
    fsck_cluster *cl = f->cl;

    if (cl->fifo_len == cl->fifo_cap) {
        size_t cap = cl->fifo_cap ? cl->fifo_cap * 2 : 64;
        int *q = malloc(cap * sizeof *q);
        if (q == NULL) {
            fputs("error: internal: out of memory\n", stderr);
            abort();
        }
        for (size_t i = 0; i < cl->fifo_len; i++)
            q[i] = cl->fifo[(cl->fifo_head + i) % cl->fifo_cap];
        free(cl->fifo);
        cl->fifo = q;
        cl->fifo_cap = cap;
        cl->fifo_head = 0;
    }
    cl->fifo[(cl->fifo_head + cl->fifo_len++) % cl->fifo_cap] = node;
}

static void cl_send(fsck *f, int node, int argc, const char **argv, const size_t *lens)
{
    redisContext *c = cl_conn(f, node);

    if (c == NULL)
        return;
    if (redisAppendCommandArgv(c, argc, argv, lens) != REDIS_OK) {
        fsck_broken_ctx(f, c);
        return;
    }
    cl_fifo_add(f, node);
}

static void cl_push(fsck *f, int argc, const char **argv, const size_t *lens)
{
    fsck_cluster *cl = f->cl;
    int node;

    if (strcmp(argv[0], "MULTI") == 0) {
        cl->tx_pending = 1;                    /* sent with the next keyed command */
        return;
    }
    if (strcmp(argv[0], "EXEC") == 0) {
        if (cl->tx_node < 0) {
            fsck_broken_why(f, "internal: EXEC without a keyed command in its MULTI");
            return;
        }
        node = cl->tx_node;
        cl->tx_node = -1;
        cl->watched[node] = 0;                 /* EXEC ends the node's WATCHes */
    } else if (strcmp(argv[0], "SCAN") == 0) {
        node = cl->scan_node;
    } else if (argc < 2) {
        fsck_broken_why(f, "internal: a keyless command on a cluster");
        return;
    } else {
        unsigned slot = kgc_cluster_slot(argv[1], lens ? lens[1] : strlen(argv[1]));
        node = cl->map->slot_node[slot];
        if (node == KGC_CLUSTER_NONE) {
            fsck_broken_why(f, "the cluster lost a slot's master during the check");
            return;
        }
        if (cl->tx_pending) {
            const char *m[1] = {"MULTI"};
            cl_send(f, node, 1, m, NULL);
            cl->tx_pending = 0;
            cl->tx_node = node;
        } else if (cl->tx_node >= 0 && cl->tx_node != node) {
            fsck_broken_why(f, "internal: a transaction across slots");
            return;
        }
        if (strcmp(argv[0], "WATCH") == 0)
            cl->watched[node] = 1;
    }
    cl_send(f, node, argc, argv, lens);
}

static redisReply *cl_get(fsck *f)
{
    fsck_cluster *cl = f->cl;
    void *r = NULL;
    int node;

    if (cl->fifo_len == 0) {
        fsck_broken_why(f, "internal: a reply read that was never asked for");
        return NULL;
    }
    node = cl->fifo[cl->fifo_head];
    cl->fifo_head = (cl->fifo_head + 1) % cl->fifo_cap;
    cl->fifo_len--;
    if (redisGetReply(cl->node[node], &r) != REDIS_OK || r == NULL) {
        fsck_broken_ctx(f, cl->node[node]);
        cl->changed = 1;
        return NULL;
    }
    if (((redisReply *)r)->type == REDIS_REPLY_ERROR) {
        const redisReply *e = r;
        if (kgc_cluster_classify(e->str, e->len, NULL, NULL) != KGC_CE_OTHER) {
            char why[256];
            snprintf(why, sizeof why, "the cluster changed during the check (%.*s): run it again",
                     (int)(e->len > 120 ? 120 : e->len), e->str);
            fsck_broken_why(f, why);
            cl->changed = 1;
            freeReplyObject(r);
            return NULL;
        }
    }
    return r;
}

int fsck_scan_targets(fsck *f)
{
    return f->cl == NULL ? 1 : f->cl->nmasters;
}

void fsck_scan_target(fsck *f, int k)
{
    if (f->cl != NULL)
        f->cl->scan_node = f->cl->masters[k];
}

/* --- commands ---------------------------------------------------------------- */

/* One command; NULL (and f->broken set) when the connection failed. */
redisReply *fsck_rcmd(fsck *f, int argc, const char **argv, const size_t *lens)
{
    redisReply *r;

    if (f->broken)
        return NULL;
    if (f->cl != NULL) {
        cl_push(f, argc, argv, lens);
        return f->broken ? NULL : cl_get(f);
    }
    r = redisCommandArgv(f->rc, argc, argv, lens);
    if (r == NULL)
        fsck_broken(f);
    return r;
}

redisReply *fsck_rcmd2(fsck *f, const char *verb, const char *key)
{
    const char *argv[2] = {verb, key};
    return fsck_rcmd(f, 2, argv, NULL);
}

redisReply *fsck_rcmd_at(fsck *f, const char *route, int argc, const char **argv,
                         const size_t *lens)
{
    int node;

    if (f->broken)
        return NULL;
    if (f->cl == NULL)
        return fsck_rcmd(f, argc, argv, lens);
    if (f->cl->tx_pending || f->cl->tx_node >= 0) {
        fsck_broken_why(f, "internal: a routed command inside a MULTI");
        return NULL;
    }
    node = f->cl->map->slot_node[kgc_cluster_slot(route, strlen(route))];
    if (node == KGC_CLUSTER_NONE) {
        fsck_broken_why(f, "the cluster lost a slot's master during the check");
        return NULL;
    }
    cl_send(f, node, argc, argv, lens);
    return f->broken ? NULL : cl_get(f);
}

/* Queues argc/argv (pipelined); the reply is read by rget. */
void fsck_rpush(fsck *f, int argc, const char **argv, const size_t *lens)
{
    if (f->broken)
        return;
    if (f->cl != NULL)
        cl_push(f, argc, argv, lens);
    else if (redisAppendCommandArgv(f->rc, argc, argv, lens) != REDIS_OK)
        fsck_broken(f);
}

redisReply *fsck_rget(fsck *f)
{
    void *r = NULL;

    if (f->broken)
        return NULL;
    if (f->cl != NULL)
        return cl_get(f);
    if (redisGetReply(f->rc, &r) != REDIS_OK || r == NULL) {
        fsck_broken(f);
        return NULL;
    }
    return r;
}

/* For each of keys[0..n): WATCH it, then `verb key [extra]`; returns the
 * n replies of the verbs (malloc'ed array, free with free_replies), or
 * NULL when the connection broke. */
redisReply **fsck_wread(fsck *f, size_t n, char **keys, const char *verb, const char *extra)
{
    redisReply **out;

    if (f->broken)
        return NULL;
    out = calloc(n ? n : 1, sizeof *out);
    if (out == NULL) {
        fputs("error: internal: out of memory\n", stderr);
        abort();
    }
    for (size_t i = 0; i < n; i++) {
        const char *w[2] = {"WATCH", keys[i]};
        const char *c[3] = {verb, keys[i], extra};
        fsck_rpush(f, 2, w, NULL);
        fsck_rpush(f, extra ? 3 : 2, c, NULL);
    }
    for (size_t i = 0; i < n; i++) {
        redisReply *w = fsck_rget(f);
        if (w)
            freeReplyObject(w);
        out[i] = fsck_rget(f);
    }
    if (f->broken) {
        for (size_t i = 0; i < n; i++)
            if (out[i])
                freeReplyObject(out[i]);
        free(out);
        return NULL;
    }
    return out;
}

void fsck_free_replies(redisReply **r, size_t n)
{
    if (r == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        if (r[i] != NULL)
            freeReplyObject(r[i]);
    free(r);
}

redisReply *fsck_wread1(fsck *f, const char *key, const char *verb, const char *extra)
{
    char *k = (char *)key;        /* wread only reads it */
    redisReply **r = fsck_wread(f, 1, &k, verb, extra), *one;

    if (r == NULL)
        return NULL;
    one = r[0];
    free(r);
    return one;
}

/* After the reads of one object: 1 if no watched key changed since it was
 * watched (the view was consistent), 0 if one did (check again), -1 if the
 * connection broke. Writes nothing: the transaction holds only a PING. */
int fsck_watch_commit(fsck *f)
{
    const char *m[1] = {"MULTI"}, *p[1] = {"PING"}, *e[1] = {"EXEC"};
    redisReply *r;
    int ok = 1, n = 0;

    if (f->cl == NULL) {
        fsck_rpush(f, 1, m, NULL);
        fsck_rpush(f, 1, p, NULL);
        fsck_rpush(f, 1, e, NULL);
        n = 1;
    } else {
        /* an empty transaction on every node holding WATCHes */
        for (int i = 0; i < KGC_CLUSTER_NODES_MAX; i++)
            if (f->cl->watched[i]) {
                cl_send(f, i, 1, m, NULL);
                cl_send(f, i, 1, p, NULL);
                cl_send(f, i, 1, e, NULL);
                f->cl->watched[i] = 0;
                n++;
            }
    }
    for (int k = 0; k < n; k++) {
        for (int i = 0; i < 2; i++)
            if ((r = fsck_rget(f)) != NULL)
                freeReplyObject(r);
        if ((r = fsck_rget(f)) == NULL)
            return -1;
        ok &= r->type == REDIS_REPLY_ARRAY;
        freeReplyObject(r);
    }
    return f->broken ? -1 : ok;
}

static void unwatch(fsck *f)
{
    const char *u[1] = {"UNWATCH"};
    redisReply *r;

    if (f->cl != NULL) {
        for (int i = 0; i < KGC_CLUSTER_NODES_MAX; i++)
            if (f->cl->watched[i]) {
                cl_send(f, i, 1, u, NULL);
                f->cl->watched[i] = 0;
                if ((r = cl_get(f)) != NULL)
                    freeReplyObject(r);
            }
        return;
    }
    if ((r = fsck_rcmd(f, 1, u, NULL)) != NULL)
        freeReplyObject(r);
}

/* Runs check(f, a, b) until its view is consistent; then its problems are
 * published. A check returns what watch_commit returned. */
void fsck_run_check(fsck *f, fsck_check check, const char *a, const char *b)
{
    for (int i = 0; i < FSCK_RETRIES && !f->broken; i++) {
        int r;
        json_array_clear(f->pending);
        r = check(f, a, b);
        if (r != 0)
            break;
        f->n.retries++;
        unwatch(f);
    }
    if (f->broken) {
        json_array_clear(f->pending);
        return;
    }
    fsck_flush(f);
}

/* --- key names and replies --------------------------------------------------- */

const char *fsck_rk(const fsck *f, char *buf, const char *fmt, ...)
{
    va_list ap;
    int p = snprintf(buf, KGC_RKEY_MAX, "%s", f->prefix);

    va_start(ap, fmt);
    vsnprintf(buf + p, KGC_RKEY_MAX - (size_t)p, fmt, ap);
    va_end(ap);
    return buf;
}

/* A JSON document from a string reply, or NULL. */
json_t *fsck_reply_json(const redisReply *r)
{
    if (r == NULL || r->type != REDIS_REPLY_STRING)
        return NULL;
    return json_loadb(r->str, r->len, 0, NULL);
}

int fsck_is_str(const redisReply *r)
{
    return r != NULL && r->type == REDIS_REPLY_STRING;
}

/* The field of an HGETALL reply, or NULL. */
const char *fsck_hfield(const redisReply *r, const char *name)
{
    if (r == NULL || r->type != REDIS_REPLY_ARRAY)
        return NULL;
    for (size_t i = 0; i + 1 < r->elements; i += 2)
        if (r->element[i]->type == REDIS_REPLY_STRING && strcmp(r->element[i]->str, name) == 0 &&
            r->element[i + 1]->type == REDIS_REPLY_STRING)
            return r->element[i + 1]->str;
    return NULL;
}

redisContext *fsck_connect(const kgc_config *cfg, int timeout_ms, char *err, size_t errlen)
{
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    redisContext *rc;

    if (cfg->redis_unix[0])
        rc = redisConnectUnixWithTimeout(cfg->redis_unix, tv);
    else
        rc = redisConnectWithTimeout(cfg->redis_host, cfg->redis_port, tv);
    if (rc == NULL || rc->err) {
        snprintf(err, errlen, "%s", rc != NULL ? rc->errstr : "out of memory");
        redisFree(rc);
        return NULL;
    }
    redisSetTimeout(rc, tv);
    if (kgc_auth_sync(rc, cfg, err, errlen) != 0) {
        redisFree(rc);
        return NULL;
    }
    return rc;
}
