/*
 * kg_route.c - how a request's commands reach Redis (kg_flow.c decides
 * which commands; this file puts them on a connection).
 *
 * One node or a Sentinel primary: every command on ctx->main, in order.
 * In host mode behind Sentinel a command made while the primary is being
 * looked up waits, formatted, for the answer (kg_route_unpark) or its
 * deadline, instead of failing at once.
 *
 * Redis Cluster (ctx->cmap): each command goes to the master of its first
 * key's slot (every key of a request is in the team's slot; the catalog in
 * its own), formatted once and kept so that MOVED (patch the slot, refresh
 * the map, resend), ASK (ASKING + resend on the target), TRYAGAIN,
 * CLUSTERDOWN, LOADING and READONLY (resend after KG_CL_RETRY_MS) are
 * followed up to KG_CL_REDIRECTS times, never past the deadline the first
 * send set. A command whose connection drops is not resent: whether it ran
 * is unknown (the caller's retry with its request id is what is safe).
 */
#include "kg_internal.h"

#include <stdlib.h>
#include <string.h>

/* Cluster mode: a script just loaded on one node is sent to every other
 * node of the map as well, answers unawaited, so that the first request
 * each of them serves does not meet NOSCRIPT (two more round trips). A
 * node that comes later, or restarts, still answers NOSCRIPT once, which
 * loads it there (on_eval). */
void kg_route_load_everywhere(kg_ctx *ctx, int script, int loaded_on)
{
    const char *argv[3] = {"SCRIPT", "LOAD", kg_script_text[script]};
    char *cmd = NULL;
    int len;

    if (ctx->cmap == NULL || (len = redisFormatCommandArgv(&cmd, 3, argv, NULL)) < 0)
        return;
    for (int i = 0; i < ctx->cmap->nnodes; i++) {
        kg_link *l;
        if (i != loaded_on && (l = kg_link_node(ctx, i)) != NULL)   /* best effort: */
            (void)kg_link_put(l->ac, NULL, NULL, cmd, (size_t)len);  /* NOSCRIPT still loads */
    }
    redisFreeCommand(cmd);
}

/* Cluster mode: puts p's formatted command on node's link (node < 0: the
 * master of p->slot by the map), after ASKING when p->asking. 0 or -1. */
static int cluster_send(kg_pending *p, int node)
{
    static const char asking[] = "*1\r\n$6\r\nASKING\r\n";
    kg_ctx *ctx = p->ctx;
    kg_link *l;

    if (node < 0 && (node = ctx->cmap->slot_node[p->slot]) == KGC_CLUSTER_NONE) {
        ctx->cl_stale = 1;
        return -1;
    }
    if ((l = kg_link_node(ctx, node)) == NULL)
        return -1;
    /* An ASKING left queued when the command after it fails goes out with
     * its own (empty) reply slot: replies stay in step with commands. */
    if ((p->asking && kg_link_put(l->ac, NULL, NULL, asking, sizeof asking - 1) != 0) ||
        kg_link_put(l->ac, kg_flow_on_reply, p, p->cmd, p->cmdlen) != 0)
        return -1;
    p->node = node;
    p->outstanding = 1;
    p->retry_at = 0;
    kg_flow_inflight(p);
    return 0;
}

/* Cluster mode: the slot of the team's keys (all of them share its tag). */
void kg_route_team_slot(kg_pending *p, const char *team)
{
    char tag[KGC_ID_MAX + 8];
    int n;

    /* every key of the team carries the tag {t:<team>}: its slot is the tag's */
    if (p->ctx->cmap != NULL && (n = snprintf(tag, sizeof tag, "{t:%s}", team)) > 0 &&
        (size_t)n < sizeof tag)
        p->slot = kgc_cluster_slot(tag, (size_t)n);
}

/* Cluster mode: kg_route_issue()'s second half. The command's slot is its first
 * key's (EVALSHA with keys, GET); a command without a key (SCRIPT LOAD,
 * WAIT, PUBLISH) goes where p's last one went. */
static void cluster_issue(kg_pending *p, int step, int argc, const char **argv)
{
    int len, node;
    char *cmd = NULL;

    if ((len = redisFormatCommandArgv(&cmd, argc, argv, NULL)) < 0) {
        kg_flow_finish(p, KG_BACKEND_ERROR);
        return;
    }
    free(p->cmd);
    p->cmd = cmd;
    p->cmdlen = (size_t)len;
    if (strcmp(argv[0], "EVALSHA") == 0 && argc > 3 && strcmp(argv[2], "0") != 0)
        p->slot = kgc_cluster_slot(argv[3], strlen(argv[3]));
    else if (strcmp(argv[0], "GET") == 0 && argc == 2)
        p->slot = kgc_cluster_slot(argv[1], strlen(argv[1]));
    p->asking = 0;
    p->redirects = 0;
    p->step = step;
    p->deadline = kg_mono_ms() + p->ctx->cfg.timeout_ms;
    /* WAIT counts the replicas that have this connection's writes: the
     * node the write went to, whatever the map says since. A SCRIPT LOAD
     * after NOSCRIPT goes to the node that lacked the script: during a
     * slot move that is the importing node an ASK led to, not the one the
     * map names (which has the script: the load there would change nothing
     * and the resend meet NOSCRIPT again). */
    node = step == KG_ST_WAIT || step == KG_ST_SYNC || (step == KG_ST_LOAD && p->load_here)
               ? p->node : -1;
    p->load_here = 0;
    if (cluster_send(p, node) != 0)
        kg_flow_finish(p, KG_BACKEND_ERROR);
}

/* Puts p's formatted command on the main connection: 0, or -1 with
 * nothing queued. */
static int main_send(kg_pending *p, const char *cmd, size_t len)
{
    if (kg_link_put(p->ctx->main->ac, kg_flow_on_reply, p, cmd, len) != 0)
        return -1;
    p->outstanding = 1;
    kg_flow_inflight(p);
    return 0;
}

/* Puts one command on the wire for p (connecting first if needed) and
 * starts its round-trip deadline; fails p if it cannot. */
void kg_route_issue(kg_pending *p, int step, int argc, const char **argv)
{
    kg_ctx *ctx = p->ctx;
    char *cmd = NULL;
    int len, rc;

    if (ctx->cmap != NULL) {
        cluster_issue(p, step, argc, argv);
        return;
    }
    if ((len = redisFormatCommandArgv(&cmd, argc, argv, NULL)) < 0) {
        kg_flow_finish(p, KG_BACKEND_ERROR);
        return;
    }
    p->step = step;
    p->deadline = kg_mono_ms() + ctx->cfg.timeout_ms;
    if (kg_link_main(ctx) != 0) {
        /* Host mode behind Sentinel, the primary being looked up on the
         * host's loop (kg_link.c "probe"): the command waits, formatted,
         * for the answer or its deadline (kg_route_unpark) rather than
         * failing at once, so the first requests after kg_open or a
         * failover are served. */
        if (kg_link_resolving(ctx)) {
            free(p->cmd);
            p->cmd = cmd;
            p->cmdlen = (size_t)len;
            p->outstanding = 0;
            kg_flow_inflight(p);
            ctx->parked = 1;
            return;
        }
        redisFreeCommand(cmd);
        kg_flow_finish(p, KG_BACKEND_ERROR);
        return;
    }
    rc = main_send(p, cmd, (size_t)len);
    redisFreeCommand(cmd);
    if (rc != 0)
        kg_flow_finish(p, KG_BACKEND_ERROR);
}

/* Cluster mode: an error reply that is about routing. Returns 1 when it
 * was (p resent, waiting to be, or finished), 0 to let the step see it. */
int kg_route_reply(kg_pending *p, int step, const redisReply *r)
{
    kg_ctx *ctx = p->ctx;
    kgc_hostport to;
    unsigned slot;
    int kind = kgc_cluster_classify(r->str, r->len, &slot, &to), node = -1;

    if (kind == KGC_CE_OTHER)
        return 0;
    p->step = step;
    /* Redirects are capped (a loop between two confused nodes); waits for
     * TRYAGAIN & co only by the deadline: a migration takes what it takes. */
    if (((kind == KGC_CE_MOVED || kind == KGC_CE_ASK) && ++p->redirects > KG_CL_REDIRECTS) ||
        kg_mono_ms() >= p->deadline) {
        kg_flow_finish(p, KG_BACKEND_ERROR);
        return 1;
    }
    switch (kind) {
    case KGC_CE_MOVED:
        /* The slot lives elsewhere for good: point it there, refresh the
         * rest of the map (more slots probably moved), resend. */
        ctx->cl_stale = 1;
        if (kgc_cluster_map_move(ctx->cmap, slot, to.host, to.port) != 0) {
            kg_flow_finish(p, KG_BACKEND_ERROR);
            return 1;
        }
        break;
    case KGC_CE_ASK:
        /* This key only, this once: the map stays. */
        if ((node = kgc_cluster_node(ctx->cmap, to.host, to.port)) < 0) {
            kg_flow_finish(p, KG_BACKEND_ERROR);
            return 1;
        }
        p->asking = 1;
        break;
    default:                            /* TRYAGAIN, CLUSTERDOWN, LOADING, READONLY */
        ctx->cl_stale = 1;
        p->retry_at = kg_mono_ms() + KG_CL_RETRY_MS;
        kg_flow_inflight(p);               /* kg_route_timeouts resends it */
        return 1;
    }
    if (cluster_send(p, node) != 0)
        kg_flow_finish(p, KG_BACKEND_ERROR);
    p->asking = 0;
    return 1;
}

/* Cluster mode: resends what waited (TRYAGAIN & co), fails what waited
 * too long, drops the link of a command that overran its deadline. Each
 * action may change the list: start again (each takes p off it or sets
 * it back on the wire with a later due time). */
static void cluster_timeouts(kg_ctx *ctx, int64_t now)
{
    for (int guard = 0; guard < 1000; guard++) {
        kg_pending *p;
        for (p = ctx->inflight; p != NULL; p = p->next)
            if (kg_flow_due(p) <= now)
                break;
        if (p == NULL)
            return;
        if (!p->outstanding && now >= p->deadline) {
            kg_flow_finish(p, KG_BACKEND_ERROR);
        } else if (!p->outstanding) {
            if (cluster_send(p, -1) != 0)
                kg_flow_finish(p, KG_BACKEND_ERROR);
        } else if (p->node >= 0 && ctx->nodes[p->node] != NULL) {
            kg_link_drop(ctx, ctx->nodes[p->node]);   /* fails everything on it */
        } else {
            return;                     /* cannot happen: on the wire, no link */
        }
    }
}

void kg_route_unpark(kg_ctx *ctx, int64_t now)
{
    int sent = 0;

    if (!ctx->parked)
        return;                         /* nothing waits: the usual case, O(1) */
    /* Each pass sends or fails one waiting command, or stops. */
    for (int guard = 0; guard < 100000; guard++) {
        kg_pending *p = ctx->inflight;

        while (p != NULL && p->outstanding)
            p = p->next;
        if (p == NULL) {
            ctx->parked = 0;
            break;
        }
        if (!ctx->closing && kg_link_main(ctx) == 0) {
            if (main_send(p, p->cmd, p->cmdlen) == 0) {
                sent++;
                continue;
            }
        } else if (!ctx->closing && kg_link_resolving(ctx)) {
            while (p != NULL && (p->outstanding || p->deadline > now))
                p = p->next;
            if (p == NULL)
                break;                  /* still looking, none overdue */
        }
        kg_flow_finish(p, KG_BACKEND_ERROR);
    }
    /* The primary is known now: subscribe to invalidations at once (the
     * warm cache serves only while subscribed), not at the next request. */
    if (sent > 0 && !ctx->closing)
        kg_link_sub_maintain(ctx, now);
}

void kg_route_timeouts(kg_ctx *ctx, int64_t now)
{
    if (ctx->cmap != NULL) {
        cluster_timeouts(ctx, now);
        return;
    }
    for (kg_pending *p = ctx->inflight; p != NULL; p = p->next)
        if (p->outstanding && p->deadline <= now) {   /* (waiting ones: kg_route_unpark) */
            /* Replies come in order: one late reply stalls the connection
             * for everyone. Drop it; every request on it fails now. */
            kg_link_drop(ctx, ctx->main);
            return;
        }
}

