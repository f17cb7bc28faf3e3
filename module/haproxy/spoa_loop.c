/*
 * spoa_loop.c - libkeygate's sockets and timer in the agent's libevent
 * loop (kg_loop_hooks of include/keygate.h).
 *
 * libkeygate names, through the watch hook, each fd it wants watched and
 * for what. Each gets one persistent libevent event (level-triggered, as
 * hiredis may leave data in the socket between two calls) whose callback
 * calls kg_loop_ready(). One timer follows kg_loop_next_timeout_ms() and
 * calls kg_loop_timeout(). Nothing here blocks.
 *
 * watch(fd, 0) may come from inside kg_loop_ready() for the very fd whose
 * callback is running: the event is only deleted then, never freed, and
 * its slot is reused for the next fd; the slots are freed at exit.
 */
#include "spoa.h"

#include <stdlib.h>

typedef struct spoa_watch {
    int fd;                             /* -1: free slot */
    int events;                         /* KG_EV_* watched now */
    struct event *ev;                   /* NULL until first used */
} spoa_watch;

static spoa_watch *watches;
static size_t nwatches;
static struct event *timer;

static void on_io(evutil_socket_t fd, short what, void *arg);
static void on_timer(evutil_socket_t fd, short what, void *arg);

static spoa_watch *find(int fd)
{
    for (size_t i = 0; i < nwatches; i++)
        if (watches[i].fd == fd)
            return &watches[i];
    return NULL;
}

static spoa_watch *slot(int fd)
{
    spoa_watch *w = find(-1), *grown;

    if (w == NULL) {
        grown = realloc(watches, (nwatches + 1) * sizeof *watches);
        if (grown == NULL)
            return NULL;
        watches = grown;
        w = &watches[nwatches++];
        w->ev = NULL;
    }
    w->fd = fd;
    w->events = 0;
    return w;
}

/* kg_loop_hooks.watch */
static void watch(void *host, int fd, int events)
{
    spoa_watch *w = find(fd);
    short what = EV_PERSIST;

    (void)host;
    if (w != NULL && w->events == events)
        return;
    if (w != NULL && w->ev != NULL)
        event_del(w->ev);
    if (events == 0) {
        if (w != NULL)
            w->fd = -1;
        return;
    }
    if (w == NULL && (w = slot(fd)) == NULL) {
        /* libkeygate's own timeout answers the waiting requests: 503 */
        spoa_log("error", "out of memory watching a store socket");
        return;
    }
    if (events & KG_EV_READ)
        what |= EV_READ;
    if (events & KG_EV_WRITE)
        what |= EV_WRITE;
    if (w->ev == NULL)
        w->ev = event_new(spoa.base, fd, what, on_io, NULL);
    else
        event_assign(w->ev, spoa.base, fd, what, on_io, NULL);
    if (w->ev == NULL || event_add(w->ev, NULL) != 0) {
        spoa_log("error", "cannot watch a store socket");
        w->fd = -1;
        return;
    }
    w->events = events;
}

static void on_io(evutil_socket_t fd, short what, void *arg)
{
    int events = 0;

    (void)arg;
    if (what & EV_READ)
        events |= KG_EV_READ;
    if (what & EV_WRITE)
        events |= KG_EV_WRITE;
    kg_loop_ready(spoa.kg, fd, events);
    spoa_loop_sync();
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    kg_loop_timeout(spoa.kg);
    spoa_loop_sync();
}

int spoa_loop_attach(void)
{
    static const kg_loop_hooks hooks = {KG_ABI_VERSION, watch};

    timer = evtimer_new(spoa.base, on_timer, NULL);
    if (timer == NULL)
        return -1;
    if (kg_loop_attach(spoa.kg, &hooks, NULL) != 0)
        return -1;
    spoa_loop_sync();
    return 0;
}

void spoa_loop_sync(void)
{
    int ms;
    struct timeval tv;

    if (spoa.kg == NULL || timer == NULL)
        return;
    ms = kg_loop_next_timeout_ms(spoa.kg);
    if (ms < 0) {
        evtimer_del(timer);
        return;
    }
    tv.tv_sec = ms / 1000;
    tv.tv_usec = (ms % 1000) * 1000;
    evtimer_add(timer, &tv);
}

void spoa_loop_free(void)
{
    for (size_t i = 0; i < nwatches; i++)
        if (watches[i].ev != NULL)
            event_free(watches[i].ev);
    free(watches);
    watches = NULL;
    nwatches = 0;
    if (timer != NULL)
        event_free(timer);
    timer = NULL;
}
