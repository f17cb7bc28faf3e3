/*
 * worker.c - the background thread: a queue in, a queue out, and a pipe
 * that wakes the event loop when something finished.
 */
#include "worker.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

typedef struct item {
    void (*work)(void *);
    void (*done)(void *);
    void *arg;
    struct item *next;
} item;

struct worker {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    item *waiting, *waiting_tail;       /* under mu */
    item *done, *done_tail;       /* under mu */
    int nwaiting;                 /* under mu: items in waiting */
    int stop;                     /* under mu */
    int pipe_rd, pipe_wr;
    struct event *wake;
};

static void push(item **head, item **tail, item *it)
{
    it->next = NULL;
    if (*tail)
        (*tail)->next = it;
    else
        *head = it;
    *tail = it;
}

static void *run(void *arg)
{
    worker *w = arg;

    pthread_mutex_lock(&w->mu);
    for (;;) {
        item *it;
        while (w->waiting == NULL && !w->stop)
            pthread_cond_wait(&w->cv, &w->mu);
        if (w->waiting == NULL)
            break;
        it = w->waiting;
        w->waiting = it->next;
        w->nwaiting--;
        if (w->waiting == NULL)
            w->waiting_tail = NULL;
        pthread_mutex_unlock(&w->mu);
        it->work(it->arg);
        pthread_mutex_lock(&w->mu);
        push(&w->done, &w->done_tail, it);
        while (write(w->pipe_wr, "", 1) < 0 && errno == EINTR)
            ;
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

/* Delivers finished items on the loop's thread. */
static void deliver(worker *w)
{
    item *list;

    pthread_mutex_lock(&w->mu);
    list = w->done;
    w->done = w->done_tail = NULL;
    pthread_mutex_unlock(&w->mu);
    while (list != NULL) {
        item *it = list;
        list = it->next;
        it->done(it->arg);
        free(it);
    }
}

static void on_wake(evutil_socket_t fd, short what, void *arg)
{
    char buf[64];

    (void)what;
    while (read(fd, buf, sizeof buf) > 0)
        ;
    deliver(arg);
}

worker *worker_new(struct event_base *base)
{
    worker *w = xcalloc(1, sizeof *w);
    int fds[2];

    if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0)
        oom("pipe2");
    w->pipe_rd = fds[0];
    w->pipe_wr = fds[1];
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    w->wake = event_new(base, w->pipe_rd, EV_READ | EV_PERSIST, on_wake, w);
    if (w->wake == NULL || event_add(w->wake, NULL) != 0 ||
        pthread_create(&w->thread, NULL, run, w) != 0)
        oom("worker thread");
    return w;
}

int worker_submit(worker *w, void (*work)(void *), void (*done)(void *), void *arg)
{
    item *it = xmalloc(sizeof *it);

    it->work = work;
    it->done = done;
    it->arg = arg;
    pthread_mutex_lock(&w->mu);
    if (w->nwaiting >= WORKER_QUEUE_MAX) {
        pthread_mutex_unlock(&w->mu);
        free(it);
        return -1;
    }
    w->nwaiting++;
    push(&w->waiting, &w->waiting_tail, it);
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    return 0;
}

void worker_free(worker *w)
{
    if (w == NULL)
        return;
    pthread_mutex_lock(&w->mu);
    w->stop = 1;                  /* the thread finishes the queue, then exits */
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);
    deliver(w);
    event_free(w->wake);
    close(w->pipe_rd);
    close(w->pipe_wr);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w);
}
