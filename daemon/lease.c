/*
 * lease.c - the store's background-work lease (see lease.h).
 *
 * One script, run on connect and every LEASE_RENEW_MS: take or renew the
 * lease when it is free, ours, or left by an earlier run on this host and
 * socket; otherwise answer who holds it. The background work may run while
 * the last renewal that succeeded was sent less than LEASE_TTL_MS -
 * LEASE_MARGIN_MS ago, so a daemon cut off from Redis stops before its
 * lease can pass to another. (The key keeps its old name, P writer.)
 */
#include "lease.h"
#include "xcommit.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cmd.h"
#include "kgc_keys.h"
#include "log.h"
#include "sdnotify.h"

#define LEASE_TTL_MS 10000
#define LEASE_RENEW_MS 2000
#define LEASE_MARGIN_MS 3000
#define LEASE_FIRST_WAIT_MS 2000   /* READY=1 waits this long for the first answer */

static const char LEASE_SCRIPT[] =
    "local v = redis.call('GET', KEYS[1]) "
    "if v == false or v == ARGV[1] or string.sub(v, 1, #ARGV[2]) == ARGV[2] then "
    "redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3]) return 1 end "
    "return v";

struct lease {
    app *a;
    struct event *tick, *first;
    char key[KGC_RKEY_MAX];
    char me[540];                 /* "host socket pid N" */
    char mine[512];               /* "host socket pid ": any run of ours */
    int inflight;
    long long sent_ms;
};

static long long mono_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void set_state(app *a, int st)
{
    int was = a->writer;

    a->writer = st;
    if (was == WRITER_PENDING && st != WRITER_PENDING) {
        /* Ready for systemd once we know who runs the background work (or
         * after LEASE_FIRST_WAIT_MS without a store: `unavailable` answers
         * are service too). */
        sdnotify("READY=1");
    }
}

/* arg is the app, not the lease: lease_stop may have freed the lease
 * before the store fails the renewal still in flight (store_free). */
static void on_reply(void *arg, int ok, json_t *replies)
{
    app *a = arg;
    struct lease *l = a->lease;
    json_t *r = json_array_get(replies, 0);

    if (l == NULL) {            /* stopping */
        json_decref(replies);
        return;
    }
    l->inflight = 0;
    if (!ok || r == NULL || store_is_error(r)) {
        if (ok && r != NULL)
            log_warn("lease: redis refused: %s",
                     json_string_value(json_object_get(r, "$err")));
        json_decref(replies);
        return;                 /* the timers decide when it runs out */
    }
    if (json_is_integer(r) && json_integer_value(r) == 1) {
        if (a->writer != WRITER_HELD)
            log_info("lease taken: this keygated runs the store's alerts and webhook deliveries");
        a->writer_until_ms = l->sent_ms + LEASE_TTL_MS - LEASE_MARGIN_MS;
        set_state(a, WRITER_HELD);
    } else {
        if (a->writer != WRITER_OTHER)
            log_info("another keygated runs this store's alerts and webhook deliveries (%s, "
                     "lease %s); this one serves commands and takes over if that one stops",
                     json_is_string(r) ? json_string_value(r) : "?", l->key);
        set_state(a, WRITER_OTHER);
    }
    json_decref(replies);
}

void lease_renew(app *a)
{
    struct lease *l = a->lease;
    char ttl[16];
    json_t *cmds;

    if (l == NULL || l->inflight)
        return;
    if (a->writer == WRITER_HELD && mono_now() >= a->writer_until_ms) {
        log_warn("lease not renewed in time: alerts and webhook deliveries pause until it is");
        a->writer = WRITER_UNKNOWN;
    }
    snprintf(ttl, sizeof ttl, "%d", LEASE_TTL_MS);
    cmds = json_pack("[[s,s,s,s,s,s,s]]", "EVAL", LEASE_SCRIPT, "1", l->key, l->me, l->mine, ttl);
    l->sent_ms = mono_now();
    if (store_exec(a->st, cmds, 0, on_reply, a) == 0)
        l->inflight = 1;
    json_decref(cmds);
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    lease_renew(arg);
    xc_sweep(arg);              /* cross-slot commits a killed daemon left open */
}

static void first_cb(evutil_socket_t fd, short what, void *arg)
{
    app *a = arg;

    (void)fd;
    (void)what;
    if (a->writer == WRITER_PENDING) {
        log_warn("lease: no answer from the store yet");
        set_state(a, WRITER_UNKNOWN);
    }
}

void lease_start(app *a)
{
    struct lease *l = xcalloc(1, sizeof *l);
    struct timeval every = {LEASE_RENEW_MS / 1000, (LEASE_RENEW_MS % 1000) * 1000};
    struct timeval first = {LEASE_FIRST_WAIT_MS / 1000, (LEASE_FIRST_WAIT_MS % 1000) * 1000};
    char host[256] = "?";

    l->a = a;
    gethostname(host, sizeof host - 1);
    snprintf(l->mine, sizeof l->mine, "%.200s %.250s pid ", host, a->cfg.socket_path);
    snprintf(l->me, sizeof l->me, "%s%ld", l->mine, (long)getpid());
    kgc_rkey(l->key, a->cfg.key_prefix, "writer");
    l->tick = event_new(a->base, -1, EV_PERSIST, tick_cb, a);
    l->first = evtimer_new(a->base, first_cb, a);
    if (l->tick == NULL || l->first == NULL)
        oom("lease timers");
    event_add(l->tick, &every);
    evtimer_add(l->first, &first);
    a->lease = l;
    a->writer = WRITER_PENDING;
    lease_renew(a);
}

int lease_held(const app *a)
{
    return a->writer == WRITER_UNCHECKED ||
           (a->writer == WRITER_HELD && mono_now() < a->writer_until_ms);
}

void lease_stop(app *a)
{
    struct lease *l = a->lease;

    /* Not released: a restart here takes it over at once, another daemon
     * after the TTL. */
    if (l == NULL)
        return;
    event_free(l->tick);
    event_free(l->first);
    free(l);
    a->lease = NULL;
}
