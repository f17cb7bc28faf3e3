/*
 * test_money.c - the money invariant under concurrency: 4 processes, each
 * with its own context, fire many requests at one wallet credited for
 * exactly K of them. Exactly K are charged, the balance ends at 0 and was
 * never negative, and the ledger holds exactly K debits that sum to the
 * credit. A request id shared by all processes is charged once.
 */
#include "kgt.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define PROCS 4
#define PER_PROC 1000
#define K 2000
#define COST 150                      /* input_tokens 1000 on "small" */

static kgt_env env;

/* One gateway process: returns through the pipe how many it charged. */
static void gateway(int id, const kgt_world *w, int fd)
{
    kg_ctx *ctx;
    kgt_req r;
    kg_result res;
    char err[256], rid[64];
    int charged = 0, refused = 0, replayed = 0;

    ctx = kg_open(env.conf, err, sizeof err);
    if (ctx == NULL) {
        fprintf(stderr, "gateway %d: %s\n", id, err);
        _exit(2);
    }
    for (int i = 0; i < PER_PROC + 1; i++) {
        if (i == 0)
            snprintf(rid, sizeof rid, "shared-by-all");
        else
            snprintf(rid, sizeof rid, "g%d-%d", id, i);
        kgt_request(&r, w->tok, "text-generation", "small", (i % 3) ? rid : NULL,
                    KGT_P("input_tokens", 1000), NULL);
        if (i == 0)
            r.req.request_id = rid;
        switch (kg_authorize(ctx, &r.req, &res)) {
        case KG_OK:
            if (res.replayed)
                replayed++;
            else if (res.cost_micros == COST && res.balance_micros >= 0)
                charged++;
            else
                _exit(3);
            break;
        case KG_INSUFFICIENT_FUNDS:
            if (res.balance_micros < 0 || res.balance_micros >= COST || res.cost_micros != 0)
                _exit(4);
            refused++;
            break;
        default:
            fprintf(stderr, "gateway %d: request %d: %s\n", id, i, kg_status_code(res.status));
            _exit(5);
        }
    }
    kg_close(ctx);
    if (write(fd, &charged, sizeof charged) != sizeof charged)
        _exit(6);
    fprintf(stderr, "gateway %d: %d charged, %d refused for funds, %d replayed\n", id, charged,
            refused, replayed);
    _exit(0);
}

/* The same in one process: one context per thread. */
typedef struct worker {
    const kgt_world *w;
    int id, charged, failed;
} worker;

static void *thread_main(void *arg)
{
    worker *wk = arg;
    kg_ctx *ctx = kg_open(env.conf, NULL, 0);
    kgt_req r;
    kg_result res;
    char rid[64];

    if (ctx == NULL) {
        wk->failed = 1;
        return NULL;
    }
    for (int i = 0; i < PER_PROC; i++) {
        snprintf(rid, sizeof rid, "t%d-%d", wk->id, i);
        kgt_request(&r, wk->w->tok, "text-generation", "small", (i % 2) ? rid : NULL,
                    KGT_P("input_tokens", 1000), NULL);
        kg_status st = kg_authorize(ctx, &r.req, &res);
        if (st == KG_OK && !res.replayed && res.cost_micros == COST)
            wk->charged++;
        else if (st != KG_INSUFFICIENT_FUNDS)
            wk->failed = 1;
    }
    kg_close(ctx);
    return NULL;
}

static void threads_phase(void)
{
    kgt_world w;
    pthread_t th[PROCS];
    worker wk[PROCS];
    int total = 0;

    kgt_world_make(&env, &w, (int64_t)K * COST);
    for (int i = 0; i < PROCS; i++) {
        wk[i] = (worker){&w, i, 0, 0};
        KGT_CHECK(pthread_create(&th[i], NULL, thread_main, &wk[i]) == 0, "pthread_create");
    }
    for (int i = 0; i < PROCS; i++) {
        pthread_join(th[i], NULL);
        KGT_CHECK(!wk[i].failed, "thread %d saw an unexpected answer", i);
        total += wk[i].charged;
    }
    KGT_CHECK(total == K, "threads: %d charged, expected %d", total, K);
    KGT_CHECK(kgt_balance(&env, &w) == 0, "threads: balance %lld", kgt_balance(&env, &w));
    KGT_CHECK(kgt_ledger_len(&env, &w) == K + 1, "threads: ledger %lld (K debits + 1 credit)",
              kgt_ledger_len(&env, &w));
    printf("ok: %d threads (one context each) x %d requests: exactly %d charged\n", PROCS, PER_PROC, K);
}

int main(void)
{
    kgt_world w;
    int fds[2], total = 0, debits = 0;
    pid_t pids[PROCS];
    long long sum = 0;
    redisReply *ledger;

    kgt_setup(&env, "timeout_ms 2000\n");
    kgt_catalog(&env, NULL);
    kgt_world_make(&env, &w, (int64_t)K * COST);
    KGT_CHECK(pipe(fds) == 0, "pipe");
    for (int i = 0; i < PROCS; i++) {
        pids[i] = fork();
        KGT_CHECK(pids[i] >= 0, "fork");
        if (pids[i] == 0) {
            close(fds[0]);
            gateway(i, &w, fds[1]);
        }
    }
    close(fds[1]);
    for (int i = 0; i < PROCS; i++) {
        int st, n;
        KGT_CHECK(waitpid(pids[i], &st, 0) == pids[i], "waitpid");
        KGT_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "gateway %d failed (status %d)", i, st);
        KGT_CHECK(read(fds[0], &n, sizeof n) == sizeof n, "read");
        total += n;
    }
    close(fds[0]);

    KGT_CHECK(total == K, "%d requests charged, expected exactly %d", total, K);
    KGT_CHECK(kgt_balance(&env, &w) == 0, "balance %lld, expected 0", kgt_balance(&env, &w));
    ledger = kgt_cmd(&env, "LRANGE " KGT_PREFIX "{t:%s}:ledger:%s 0 -1", w.team, w.wallet);
    for (size_t i = 0; i < ledger->elements; i++) {
        json_t *e = json_loads(ledger->element[i]->str, 0, NULL);
        KGT_CHECK(e != NULL, "ledger entry %zu is not JSON", i);
        KGT_CHECK(json_integer_value(json_object_get(e, "balance_micros")) >= 0, "negative balance in ledger");
        if (strcmp(json_string_value(json_object_get(e, "type")), "debit") == 0) {
            debits++;
            sum += json_integer_value(json_object_get(e, "amount_micros"));
        }
        json_decref(e);
    }
    freeReplyObject(ledger);
    KGT_CHECK(debits == K, "%d debits in the ledger, expected %d", debits, K);
    KGT_CHECK(sum == (long long)K * COST, "debits sum to %lld", sum);
    threads_phase();
    kgt_teardown(&env);
    printf("ok: %d processes x %d requests: exactly %d charged, balance 0, %d ledger debits\n",
           PROCS, PER_PROC + 1, K, debits);
    return 0;
}
