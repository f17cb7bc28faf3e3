/*
 * sweep.c - one SCAN-driven sweep of wallets (map in sweep.h).
 */
#include "sweep.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kgc_keys.h"
#include "log.h"

struct sweep {
    app *a;
    const sweep_kind *k;
    char sha[48];                     /* the script loaded, "" until then */
    char cursor[32];                  /* SCAN cursor, "0" between cycles */
    int busy;
    long long last_ms;                /* when the last step started (monotonic) */
    json_t *keys;                     /* [[team, wallet], ...] of the step */
};

static long long mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

sweep *sweep_new(app *a, const sweep_kind *k)
{
    sweep *s = xcalloc(1, sizeof *s);

    s->a = a;
    s->k = k;
    snprintf(s->cursor, sizeof s->cursor, "0");
    return s;
}

static void step_done(sweep *s)
{
    json_decref(s->keys);
    s->keys = NULL;
    s->busy = 0;
}

static void run(sweep *s);

static void on_ran(void *arg, int ok, json_t *replies)
{
    sweep *s = arg;
    json_t *r, *again;
    size_t i;

    if (!ok) {
        step_done(s);
        return;
    }
    again = json_array();
    json_array_foreach(replies, i, r) {
        json_t *k = json_array_get(s->keys, i);
        const char *wid = json_string_value(json_array_get(k, 1));
        if (store_is_error(r)) {
            const char *m = json_string_value(json_object_get(r, "$err"));
            if (m != NULL && strncmp(m, "NOSCRIPT", 8) == 0)
                s->sha[0] = '\0';
            else
                log_err("%s on wallet %s refused: %.200s", s->k->name, wid ? wid : "?",
                        m ? m : "?");
            continue;
        }
        if (json_integer_value(r) > 0)
            log_info("wallet %s: %lld %s", wid ? wid : "?", (long long)json_integer_value(r),
                     s->k->done);
        if (json_integer_value(r) >= SWEEP_FULL)
            json_array_append(again, k);
    }
    json_decref(replies);
    json_decref(s->keys);
    s->keys = again;
    if (json_array_size(again) > 0 && s->sha[0] != '\0') {
        run(s);
        return;
    }
    step_done(s);
}

static void run(sweep *s)
{
    json_t *cmds = json_array(), *k;
    size_t i;

    json_array_foreach(s->keys, i, k)
        json_array_append_new(cmds, s->k->cmd(s->a, s->sha, json_string_value(json_array_get(k, 0)),
                                              json_string_value(json_array_get(k, 1))));
    if (store_exec(s->a->st, cmds, 0, on_ran, s) != 0)
        step_done(s);
    json_decref(cmds);
}

/* "<P>{t:<team>}:<suffix>:<wallet>" -> team, wallet; 0, or -1 if another shape. */
static int parse_key(const char *P, const char *suffix, const char *key, char *team, char *wid)
{
    size_t pl = strlen(P), sl = strlen(suffix);
    const char *t, *e, *w;

    if (strncmp(key, P, pl) != 0 || strncmp(key + pl, "{t:", 3) != 0)
        return -1;
    t = key + pl + 3;
    if ((e = strchr(t, '}')) == NULL || (size_t)(e - t) >= KGC_ID_MAX || strncmp(e, "}:", 2) != 0 ||
        strncmp(e + 2, suffix, sl) != 0 || e[2 + sl] != ':')
        return -1;
    w = e + 3 + sl;
    if (strlen(w) == 0 || strlen(w) >= KGC_ID_MAX)
        return -1;
    memcpy(team, t, (size_t)(e - t));
    team[e - t] = '\0';
    strcpy(wid, w);
    return 0;
}

static void on_scan(void *arg, int ok, json_t *replies)
{
    sweep *s = arg;
    json_t *r = json_array_get(replies, 0), *k;
    size_t i;

    if (!ok) {
        s->busy = 0;
        return;
    }
    if (!json_is_array(r) || !json_is_string(json_array_get(r, 0))) {
        log_err("%s sweep: scan refused by redis: %.200s", s->k->name,
                json_string_value(json_object_get(r, "$err")) ?: "?");
        snprintf(s->cursor, sizeof s->cursor, "0");
        json_decref(replies);
        s->busy = 0;
        return;
    }
    snprintf(s->cursor, sizeof s->cursor, "%s", json_string_value(json_array_get(r, 0)));
    s->keys = json_array();
    json_array_foreach(json_array_get(r, 1), i, k) {
        char team[KGC_ID_MAX], wid[KGC_ID_MAX];
        if (json_is_string(k) &&
            parse_key(s->a->cfg.key_prefix, s->k->suffix, json_string_value(k), team, wid) == 0)
            json_array_append_new(s->keys, json_pack("[s,s]", team, wid));
    }
    json_decref(replies);
    if (json_array_size(s->keys) == 0) {
        step_done(s);
        return;
    }
    run(s);
}

static void on_load(void *arg, int ok, json_t *replies)
{
    sweep *s = arg;

    s->busy = 0;
    store_script_sha(ok, replies, s->sha, sizeof s->sha, s->k->name);
}

void sweep_tick(sweep *s)
{
    char match[KGC_RKEY_MAX + 64];
    json_t *cmds;
    long long now = mono_ms();

    if (s == NULL || s->busy || s->a->st == NULL || !store_connected(s->a->st))
        return;
    if (s->sha[0] == '\0') {
        cmds = json_pack("[[s,s,s]]", "SCRIPT", "LOAD", s->k->script);
        s->busy = store_exec(s->a->st, cmds, 0, on_load, s) == 0;
        json_decref(cmds);
        return;
    }
    if (now - s->last_ms < SWEEP_TICK_MS)
        return;
    s->last_ms = now;
    snprintf(match, sizeof match, "%s{t:*}:%s:*", s->a->cfg.key_prefix, s->k->suffix);
    cmds = json_pack("[[s,s,s,s,s,s,s,s]]", "SCAN", s->cursor, "MATCH", match, "COUNT",
                     SWEEP_SCAN_COUNT, "TYPE", "zset");
    s->busy = store_exec(s->a->st, cmds, 0, on_scan, s) == 0;
    json_decref(cmds);
}

void sweep_free(sweep *s)
{
    if (s == NULL)
        return;
    json_decref(s->keys);
    free(s);
}
