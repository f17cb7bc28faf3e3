/*
 * test_loop.c - the non-blocking API driven by a tiny poll() loop acting as
 * the host: several requests in flight at once, answers known at once,
 * cancel (also from inside another request's done), the timer path with a
 * stalled Redis, kg_close with requests pending, invalidations delivered
 * through the host's loop.
 */
#include "kgt.h"

#include <poll.h>
#include <string.h>

static kgt_env env;

/* ---- the host ---- */
#define MAXFD 8
static struct { int fd, events; } watched[MAXFD];
static int nwatched, in_kg, watch_calls;

static void host_watch(void *host, int fd, int events)
{
    (void)host;
    watch_calls++;
    for (int i = 0; i < nwatched; i++)
        if (watched[i].fd == fd) {
            if (events == 0)
                watched[i] = watched[--nwatched];
            else
                watched[i].events = events;
            return;
        }
    if (events != 0) {
        KGT_CHECK(nwatched < MAXFD, "too many fds");
        watched[nwatched].fd = fd;
        watched[nwatched].events = events;
        nwatched++;
    }
}

static const kg_loop_hooks hooks = {KG_ABI_VERSION, host_watch};

/* One turn of the host loop: waits at most max_ms. */
static void turn(kg_ctx *ctx, int max_ms)
{
    struct pollfd pf[MAXFD];
    int n = nwatched, t = kg_loop_next_timeout_ms(ctx), rc;

    if (t < 0 || t > max_ms)
        t = max_ms;
    for (int i = 0; i < n; i++) {
        pf[i].fd = watched[i].fd;
        pf[i].events = (short)(((watched[i].events & KG_EV_READ) ? POLLIN : 0) |
                               ((watched[i].events & KG_EV_WRITE) ? POLLOUT : 0));
        pf[i].revents = 0;
    }
    rc = poll(pf, (nfds_t)n, t);
    in_kg = 1;
    for (int i = 0; rc > 0 && i < n; i++) {
        int ev = 0;
        if (pf[i].revents & (POLLIN | POLLHUP | POLLERR))
            ev |= KG_EV_READ;
        if (pf[i].revents & (POLLOUT | POLLHUP | POLLERR))
            ev |= KG_EV_WRITE;
        if (ev)
            kg_loop_ready(ctx, pf[i].fd, ev);
    }
    if (kg_loop_next_timeout_ms(ctx) == 0)
        kg_loop_timeout(ctx);
    in_kg = 0;
}

/* ---- requests ---- */
typedef struct slot {
    kgt_req r;
    kg_result res;
    kg_pending *h;
    int done;
    int cancel_other;                  /* index of a slot to cancel from done */
} slot;

static slot slots[16];
static kg_ctx *gctx;

static void on_done(void *arg, kg_result *res)
{
    slot *s = arg;
    KGT_CHECK(in_kg, "done called outside kg_loop_ready/kg_loop_timeout/kg_close");
    KGT_CHECK(res == &s->res, "done got another result pointer");
    KGT_CHECK(!s->done, "done called twice");
    s->done = 1;
    if (s->cancel_other >= 0 && slots[s->cancel_other].h != NULL && !slots[s->cancel_other].done) {
        kg_authorize_cancel(gctx, slots[s->cancel_other].h);
        slots[s->cancel_other].h = NULL;
    }
}

static int start(kg_ctx *ctx, int i)
{
    int rc;
    memset(&slots[i].res, 0x5A, sizeof slots[i].res);
    slots[i].done = 0;
    rc = kg_authorize_start(ctx, &slots[i].r.req, &slots[i].res, on_done, &slots[i], &slots[i].h);
    if (rc != 1)
        slots[i].h = NULL;
    return rc;
}

static void run_until_done(kg_ctx *ctx, const int *idx, int n, int limit_ms)
{
    int64_t until = kgt_now_ms() + limit_ms;
    for (;;) {
        int left = 0;
        for (int i = 0; i < n; i++)
            left += !slots[idx[i]].done;
        if (left == 0)
            return;
        KGT_CHECK(kgt_now_ms() < until, "%d requests still pending after %d ms", left, limit_ms);
        turn(ctx, 50);
    }
}

static void pump(kg_ctx *ctx, int ms)
{
    int64_t until = kgt_now_ms() + ms;
    while (kgt_now_ms() < until)
        turn(ctx, 5);
}

int main(void)
{
    kgt_world w[4];
    kg_ctx *ctx;
    char err[256], bad[KGC_TOKEN_LEN + 1];
    kg_result untouched;

    kgt_setup(&env, "timeout_ms 150\n");
    kgt_catalog(&env, NULL);
    /* On a cluster the four teams share a node (one connection), so that
     * answers come in the order of the replies (part 3). */
    for (int i = 0; i < 4; i++)
        do
            kgt_world_make(&env, &w[i], 100000);
        while (kgt_team_node(&env, w[i].team) != kgt_team_node(&env, w[0].team));
    ctx = gctx = kg_open(env.conf, err, sizeof err);
    KGT_CHECK(ctx != NULL, "%s", err);
    KGT_CHECK(kg_loop_attach(ctx, NULL, NULL) == 0, "detach when not attached");
    kg_loop_hooks badv = {KG_ABI_VERSION + 1, host_watch};
    KGT_CHECK(kg_loop_attach(ctx, &badv, NULL) == -1, "wrong hooks version accepted");
    KGT_CHECK(kg_loop_attach(ctx, &hooks, NULL) == 0, "attach");
    KGT_CHECK(kg_loop_next_timeout_ms(ctx) == -1, "a timer with nothing pending");
    for (int i = 0; i < 16; i++)
        slots[i].cancel_other = -1;

    /* 1. Eight requests in flight at once: payg and free over four keys. */
    int idx[8];
    for (int i = 0; i < 8; i++) {
        idx[i] = i;
        if (i % 2 == 0)
            kgt_request(&slots[i].r, w[i / 2].tok, "text-generation", "small", NULL,
                        KGT_P("input_tokens", 1000 * (i + 1)), NULL);
        else
            kgt_request(&slots[i].r, w[i / 2].tok, "speech-to-text", NULL, NULL, NULL);
        KGT_CHECK(start(ctx, i) == 1, "request %d did not go async", i);
        KGT_CHECK(slots[i].res.cost_micros == 0x5A5A5A5A5A5A5A5ALL, "res touched before done");
    }
    KGT_CHECK(nwatched >= 1, "the library asked to watch nothing");
    KGT_CHECK(kg_loop_next_timeout_ms(ctx) >= 0, "no timer with requests in flight");
    run_until_done(ctx, idx, 8, 3000);
    for (int i = 0; i < 8; i++) {
        KGT_EQ_STATUS(slots[i].res.status, KG_OK);
        if (i % 2 == 0)
            KGT_CHECK(slots[i].res.cost_micros == 150 * (i + 1), "slot %d cost %lld", i,
                      (long long)slots[i].res.cost_micros);
        else
            KGT_CHECK(slots[i].res.balance_micros == -1, "slot %d free", i);
    }
    /* payg on w[0], w[1], ...: balances debited by exactly the costs */
    for (int k = 0; k < 4; k++)
        KGT_CHECK(kgt_balance(&env, &w[k]) == 100000 - 150 * (2 * k + 1), "wallet %d", k);

    /* 2. Answers known at once: done is never called, rc 0. */
    snprintf(bad, sizeof bad, "%s", w[0].tok);
    bad[5] ^= 1;
    kgt_request(&slots[9].r, bad, "text-generation", "small", NULL, NULL);
    KGT_CHECK(start(ctx, 9) == 0 && slots[9].res.status == KG_TOKEN_MALFORMED, "malformed not at once");
    kgt_request(&slots[9].r, w[0].tok, "text-generation", "small", "bad id", NULL);
    KGT_CHECK(start(ctx, 9) == 0 && slots[9].res.status == KG_BAD_REQUEST, "bad request id not at once");
    /* a warm cache answers a policy refusal without the store */
    pump(ctx, 20);
    kgt_request(&slots[9].r, w[0].tok, "text-generation", "large", NULL, NULL);
    int rc9 = start(ctx, 9);
    if (rc9 == 1)
        run_until_done(ctx, (int[]){9}, 1, 1000);
    KGT_EQ_STATUS(slots[9].res.status, KG_MODEL_DENIED);
    kgt_request(&slots[9].r, w[0].tok, "text-generation", "large", NULL, NULL);
    KGT_CHECK(start(ctx, 9) == 0 && slots[9].res.status == KG_MODEL_DENIED,
              "a warm-cache refusal was not answered at once");
    KGT_CHECK(slots[9].done == 0, "done called for an answer known at once");

    /* 3. Cancel: right after start, and from inside another request's done.
     * timeout_ms is 150 here (step 4 needs it short): on a loaded machine
     * a request of the round can time out, and the time-outs are answered
     * in another order than the replies. A round where 0 or 2 timed out
     * (KG_BACKEND_ERROR) tells nothing about cancel: it is played again. */
    /* The order of the answers is the order of the replies on the one
     * connection only when every request takes one round trip: a first
     * warm debit loads its script first (one more). Warm up both paths. */
    for (int i = 0; i < 4; i++) {
        kgt_request(&slots[i].r, w[i].tok, "text-generation", "small", NULL,
                    KGT_P("input_tokens", 1000), NULL);
        if (start(ctx, i) == 1)
            run_until_done(ctx, (int[]){i}, 1, 3000);
    }
    for (int round = 0;; round++) {
        for (int i = 0; i < 4; i++) {
            kgt_request(&slots[i].r, w[i].tok, "text-generation", "small", NULL,
                        KGT_P("input_tokens", 1000), NULL);
            slots[i].done = 0;
        }
        for (int i = 0; i < 4; i++)
            KGT_CHECK(start(ctx, i) == 1, "cancel batch %d", i);
        memcpy(&untouched, &slots[1].res, sizeof untouched);
        kg_authorize_cancel(ctx, slots[1].h);
        slots[1].h = NULL;
        slots[0].cancel_other = 3;          /* 0's done cancels 3, answered after it */
        run_until_done(ctx, (int[]){0, 2}, 2, 3000);
        pump(ctx, 50);
        slots[0].cancel_other = -1;
        if (round < 3 && (slots[0].res.status == KG_BACKEND_ERROR ||
                          slots[2].res.status == KG_BACKEND_ERROR)) {
            fprintf(stderr, "cancel round %d: a request timed out (loaded machine?); again\n", round);
            pump(ctx, 200);
            continue;
        }
        KGT_CHECK(!slots[1].done && memcmp(&untouched, &slots[1].res, sizeof untouched) == 0,
                  "a cancelled request was answered or its result touched");
        KGT_CHECK(!slots[3].done, "cancelled from inside done, still answered");
        KGT_EQ_STATUS(slots[0].res.status, KG_OK);
        KGT_EQ_STATUS(slots[2].res.status, KG_OK);
        break;
    }

    /* 4. The timer: a stalled Redis gives KG_BACKEND_ERROR after ~timeout_ms. */
    kgt_redis_pause(&env, 1);
    for (int i = 0; i < 3; i++)
        KGT_CHECK(start(ctx, i) == 1, "stall batch %d", i);
    int64_t t0 = kgt_now_ms();
    run_until_done(ctx, (int[]){0, 1, 2}, 3, 2000);
    int64_t took = kgt_now_ms() - t0;
    for (int i = 0; i < 3; i++)
        KGT_EQ_STATUS(slots[i].res.status, KG_BACKEND_ERROR);
    KGT_CHECK(took >= 140 && took < 600, "timeout after %lld ms (timeout_ms 150)", (long long)took);
    kgt_redis_pause(&env, 0);
    KGT_CHECK(start(ctx, 0) == 1, "after stall");
    run_until_done(ctx, (int[]){0}, 1, 2000);
    KGT_EQ_STATUS(slots[0].res.status, KG_OK);

    /* 5. Invalidation through the host's loop: a revoked key on a warm cache. */
    pump(ctx, 20);
    kgt_request(&slots[5].r, w[2].tok, "speech-to-text", NULL, NULL, NULL);
    KGT_CHECK(start(ctx, 5) == 1, "warm");
    run_until_done(ctx, (int[]){5}, 1, 1000);
    kgt_revoke(&env, w[2].team, w[2].key);
    pump(ctx, 30);
    /* The cached entry said "active": a KG_KEY_REVOKED now proves the
     * message came through the host's loop and dropped it (TTL is 1 s). */
    if (start(ctx, 5) == 1)
        run_until_done(ctx, (int[]){5}, 1, 1000);
    KGT_EQ_STATUS(slots[5].res.status, KG_KEY_REVOKED);

    /* 6. kg_close with requests pending: done with KG_BACKEND_ERROR, inside
     * kg_close; every fd forgotten. */
    kgt_request(&slots[2].r, w[3].tok, "text-generation", "small", NULL, NULL);
    for (int i = 0; i < 3; i++)
        KGT_CHECK(start(ctx, i) == 1, "close batch %d", i);
    in_kg = 1;
    kg_close(ctx);
    in_kg = 0;
    for (int i = 0; i < 3; i++) {
        KGT_CHECK(slots[i].done, "request %d not completed by kg_close", i);
        KGT_EQ_STATUS(slots[i].res.status, KG_BACKEND_ERROR);
    }
    KGT_CHECK(nwatched == 0, "%d fds still watched after kg_close", nwatched);
    kgt_teardown(&env);
    printf("ok: non-blocking API (%d watch calls)\n", watch_calls);
    return 0;
}
