/*
 * kg_hammer.c - a gateway in a test: sends many requests through
 * libkeygate's public ABI (include/keygate.h, blocking kg_authorize) and
 * writes one line per request, for the fault and load tests to check
 * against Redis afterwards.
 *
 *   kg_hammer --config FILE --token-file FILE --service S [--model M]
 *             [--param NAME=VALUE]... --count N [--rid PREFIX]
 *             [--retry-for SECONDS] [--out FILE] [--pause-us N] [--us]
 *
 * Request i carries request id PREFIX-i (no id without --rid). A request
 * answered KG_BACKEND_ERROR is sent again with the same id, as a client
 * retrying through its gateway would, until it gets another answer or
 * --retry-for seconds (default 0: no retry) have passed since its first
 * try. Each line of --out (default stdout):
 *
 *   <request id or -> <status code> <replayed 0|1> <cost> <balance> <tries> <ms>
 *
 * (with --us the last column is microseconds: bench/archive's p50).
 *
 * The last line on stderr sums them up. Exit status: 0 when every request
 * was answered (whatever the answer), 1 when a KG_OK showed a negative
 * balance or a cost other than the one the first KG_OK of the run had
 * (every request here costs the same), 2 on bad usage or kg_open failure.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "keygate.h"

#define MAX_PARAMS 16

static long long mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static long long mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int usage(const char *why)
{
    fprintf(stderr, "kg_hammer: %s\n", why);
    return 2;
}

static int read_token(const char *path, char *out, size_t cap, size_t *len)
{
    FILE *f = fopen(path, "r");
    size_t n;

    if (f == NULL)
        return -1;
    n = fread(out, 1, cap - 1, f);
    fclose(f);
    while (n > 0 && (out[n - 1] == '\n' || out[n - 1] == '\r'))
        n--;
    out[n] = '\0';
    *len = n;
    return 0;
}

int main(int argc, char **argv)
{
    const char *config = NULL, *token_file = NULL, *service = NULL, *model = NULL;
    const char *rid_prefix = NULL, *out_path = NULL;
    kg_param params[MAX_PARAMS];
    char names[MAX_PARAMS][64], token[256], rid[160], err[512];
    size_t nparams = 0, toklen = 0;
    long count = 0, pause_us = 0;
    double retry_for = 0;
    long by_status[KG_BACKEND_ERROR + 1] = {0}, replays = 0, tries_total = 0, gave_up = 0;
    int64_t first_cost = -1;
    int bad = 0, in_us = 0;
    kg_ctx *ctx;
    FILE *out = stdout;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--us") == 0) {     /* the one flag without a value */
            in_us = 1;
            continue;
        }
        if (v == NULL)
            return usage("an option without its value");
        i++;
        if (strcmp(a, "--config") == 0)
            config = v;
        else if (strcmp(a, "--token-file") == 0)
            token_file = v;
        else if (strcmp(a, "--service") == 0)
            service = v;
        else if (strcmp(a, "--model") == 0)
            model = v;
        else if (strcmp(a, "--rid") == 0)
            rid_prefix = v;
        else if (strcmp(a, "--out") == 0)
            out_path = v;
        else if (strcmp(a, "--count") == 0)
            count = strtol(v, NULL, 10);
        else if (strcmp(a, "--pause-us") == 0)
            pause_us = strtol(v, NULL, 10);
        else if (strcmp(a, "--retry-for") == 0)
            retry_for = strtod(v, NULL);
        else if (strcmp(a, "--param") == 0) {
            const char *eq = strchr(v, '=');
            if (eq == NULL || nparams == MAX_PARAMS || (size_t)(eq - v) >= sizeof names[0])
                return usage("--param NAME=VALUE");
            memcpy(names[nparams], v, (size_t)(eq - v));
            names[nparams][eq - v] = '\0';
            params[nparams].name = names[nparams];
            params[nparams].value = strtoll(eq + 1, NULL, 10);
            nparams++;
        } else
            return usage("unknown option");
    }
    if (config == NULL || token_file == NULL || service == NULL || count <= 0)
        return usage("need --config, --token-file, --service and --count");
    if (read_token(token_file, token, sizeof token, &toklen) != 0)
        return usage("cannot read the token file");
    if (out_path != NULL && (out = fopen(out_path, "w")) == NULL)
        return usage("cannot write --out");
    ctx = kg_open(config, err, sizeof err);
    if (ctx == NULL) {
        fprintf(stderr, "kg_hammer: kg_open: %s\n", err);
        return 2;
    }
    for (long i = 0; i < count; i++) {
        kg_request req = {token, toklen, service, model, params, nparams, NULL};
        kg_result res;
        kg_status st;
        long long t0 = mono_ms(), u0 = mono_us();
        int tries = 0;

        if (rid_prefix != NULL) {
            snprintf(rid, sizeof rid, "%s-%ld", rid_prefix, i);
            req.request_id = rid;
        }
        for (;;) {
            memset(&res, 0, sizeof res);
            st = kg_authorize(ctx, &req, &res);
            tries++;
            if (st != KG_BACKEND_ERROR || mono_ms() - t0 >= (long long)(retry_for * 1000))
                break;
            usleep(20000);
        }
        if (st == KG_BACKEND_ERROR && retry_for > 0)
            gave_up++;
        if (st >= KG_OK && st <= KG_BACKEND_ERROR)
            by_status[st]++;
        tries_total += tries;
        if (st == KG_OK) {
            if (res.replayed)
                replays++;
            if (res.balance_micros < -1)
                bad = 1;
            if (!res.replayed && res.cost_micros > 0) {
                if (first_cost < 0)
                    first_cost = res.cost_micros;
                else if (res.cost_micros != first_cost)
                    bad = 1;
            }
        }
        fprintf(out, "%s %s %d %lld %lld %d %lld\n", req.request_id ? req.request_id : "-",
                kg_status_code(st), res.replayed, (long long)res.cost_micros,
                (long long)res.balance_micros, tries, in_us ? mono_us() - u0 : mono_ms() - t0);
        if (pause_us > 0)
            usleep((useconds_t)pause_us);
    }
    kg_close(ctx);
    if (out != stdout && fclose(out) != 0)
        return usage("writing --out failed");
    fprintf(stderr, "kg_hammer: %ld requests: %ld ok (%ld replayed), %ld insufficient_funds, "
            "%ld backend_error (%ld after retrying), %ld other; %ld tries\n", count,
            by_status[KG_OK], replays, by_status[KG_INSUFFICIENT_FUNDS],
            by_status[KG_BACKEND_ERROR], gave_up,
            count - by_status[KG_OK] - by_status[KG_INSUFFICIENT_FUNDS] - by_status[KG_BACKEND_ERROR],
            tries_total);
    return bad;
}
