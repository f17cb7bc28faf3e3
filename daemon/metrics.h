/*
 * metrics.h - keygated's counters, served in Prometheus' text exposition
 * format (GET /metrics on the console listener, or alone on `metrics
 * HOST:PORT`). The names and help texts are in docs/operations.md.
 *
 * One table of rows, process-wide. Every counter is bumped on the loop's
 * thread only (the worker thread touches none), so plain integers do.
 * Labels are bounded: the command table's names (plus "unknown"), the
 * protocol's error codes (plus "other"), never an id.
 */
#ifndef KG_METRICS_H
#define KG_METRICS_H

#include <event2/buffer.h>

typedef enum mx_counter {
    MX_REDIS_BATCHES,             /* batches sent (one round trip each) */
    MX_REDIS_ERROR_REPLIES,       /* error replies inside them */
    MX_REDIS_DISCONNECTS,         /* connections lost */
    MX_REDIS_CONNECT_FAILURES,    /* connection attempts that failed */
    MX_CATALOG_RELOADS,           /* SIGHUP reloads that took */
    MX_CATALOG_RELOAD_FAILURES,   /* ... and those refused */
    MX_HTTP_REQUESTS,             /* console requests read whole */
    MX_COMMIT_MOVED,              /* commits refused: another keygated wrote a key read */
    MX_NCOUNTERS
} mx_counter;

void metrics_count(mx_counter c);

/* One answered command: cmd the table's name (NULL: not a known command),
 * code its error code (NULL: ok), seconds from arrival to answer. */
void metrics_command(const char *cmd, const char *code, double seconds);

/* Admin socket clients connected: +1 on accept, -1 on close. */
void metrics_clients(int delta);

/* Appends every metric in the text format (version 0.0.4) to out. */
void metrics_render(struct evbuffer *out);

/* Monotonic seconds, for latencies. */
double metrics_now(void);

#endif
