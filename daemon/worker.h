/*
 * worker.h - one background thread for the CPU-heavy steps of commands
 * (Argon2id password hashing and checking take 50-200 ms): the event loop
 * hands them over and goes on serving everyone else.
 */
#ifndef KG_WORKER_H
#define KG_WORKER_H

#include <event2/event.h>

typedef struct worker worker;

worker *worker_new(struct event_base *base);

/* Items waiting at most: beyond it worker_submit refuses (a flood of
 * password hashing must not grow the queue, and so every sign-in's wait,
 * without end). */
#define WORKER_QUEUE_MAX 32

/* Runs work(arg) on the worker thread, then done(arg) on the loop's thread.
 * work must touch nothing but arg. Returns 0, or -1 when WORKER_QUEUE_MAX
 * items are waiting already (then neither function is ever called). */
int worker_submit(worker *w, void (*work)(void *arg), void (*done)(void *arg), void *arg);

/* Finishes every submitted item (work, then done, on the calling thread
 * for those not started), stops the thread. Accepts NULL. */
void worker_free(worker *w);

#endif
