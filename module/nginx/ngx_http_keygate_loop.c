/*
 * ngx_http_keygate_loop.c - libkeygate's sockets and timer in nginx's own
 * event loop (kg_loop_hooks of include/keygate.h).
 *
 * libkeygate tells us, through the watch hook, which of its fds it wants
 * watched for what. Each such fd is wrapped in an nginx connection
 * (ngx_get_connection) whose read/write events are added to the event
 * module, level-triggered; their handlers call kg_loop_ready(). One nginx
 * timer follows kg_loop_next_timeout_ms() and calls kg_loop_timeout().
 * Nothing here blocks: libkeygate only reads and writes when nginx says
 * the socket is ready.
 */

#include "ngx_http_keygate.h"


/* One watched libkeygate socket. */
typedef struct {
    ngx_connection_t  *conn;            /* wraps the fd; NULL = free slot */
} ngx_http_keygate_watch_t;


static ngx_http_keygate_watch_t *ngx_http_keygate_find_watch(int fd);
static void ngx_http_keygate_watch(void *host, int fd, int events);
static void ngx_http_keygate_unwatch(ngx_connection_t *c);
static void ngx_http_keygate_io_read(ngx_event_t *ev);
static void ngx_http_keygate_io_write(ngx_event_t *ev);
static void ngx_http_keygate_timer_handler(ngx_event_t *ev);


kg_ctx                    *ngx_http_keygate_kg;

static ngx_event_t         ngx_http_keygate_timer;
static ngx_connection_t    ngx_http_keygate_timer_conn; /* fd -1: debug logs
                                                           read ev->data's fd */
static ngx_array_t        *ngx_http_keygate_watches;   /* of ..._watch_t */
static ngx_uint_t          ngx_http_keygate_nwaiting;  /* requests waiting */
static ngx_uint_t          ngx_http_keygate_closing;   /* in loop_close */


ngx_int_t
ngx_http_keygate_loop_open(ngx_cycle_t *cycle, ngx_str_t *config_path)
{
    char            err[256];
    kg_ctx         *kg;
    kg_loop_hooks   hooks;

    ngx_http_keygate_watches = ngx_array_create(cycle->pool, 4,
                                            sizeof(ngx_http_keygate_watch_t));
    if (ngx_http_keygate_watches == NULL) {
        return NGX_ERROR;
    }

    ngx_http_keygate_timer_conn.fd = (ngx_socket_t) -1;
    ngx_http_keygate_timer.handler = ngx_http_keygate_timer_handler;
    ngx_http_keygate_timer.data = &ngx_http_keygate_timer_conn;
    ngx_http_keygate_timer.log = cycle->log;
    ngx_http_keygate_timer.cancelable = 1;

    err[0] = '\0';
    kg = kg_open((const char *) config_path->data, err, sizeof(err));

    if (kg == NULL) {
        ngx_log_error(NGX_LOG_ALERT, cycle->log, 0,
                      "keygate_config \"%V\": %s; keygate locations of this "
                      "worker answer 503", config_path, err);
        return NGX_OK;
    }

    hooks.version = KG_ABI_VERSION;
    hooks.watch = ngx_http_keygate_watch;

    if (kg_loop_attach(kg, &hooks, cycle) != 0) {
        ngx_log_error(NGX_LOG_ALERT, cycle->log, 0,
                      "keygate: kg_loop_attach() failed; keygate locations "
                      "of this worker answer 503");
        kg_close(kg);
        return NGX_OK;
    }

    ngx_http_keygate_kg = kg;
    ngx_http_keygate_loop_sync();

    return NGX_OK;
}


void
ngx_http_keygate_loop_close(void)
{
    kg_ctx  *kg;

    kg = ngx_http_keygate_kg;

    if (kg == NULL) {
        return;
    }

    ngx_http_keygate_closing = 1;

    ngx_http_keygate_metrics_sync();
    kg_close(kg);
    ngx_http_keygate_kg = NULL;

    if (ngx_http_keygate_timer.timer_set) {
        ngx_del_timer(&ngx_http_keygate_timer);
    }

    ngx_http_keygate_closing = 0;
}


ngx_uint_t
ngx_http_keygate_loop_exiting(void)
{
    return ngx_http_keygate_closing;
}


void
ngx_http_keygate_loop_waiting(ngx_int_t delta)
{
    if (delta > 0) {
        ngx_http_keygate_nwaiting++;

    } else if (ngx_http_keygate_nwaiting > 0) {
        ngx_http_keygate_nwaiting--;
    }

    ngx_http_keygate_timer.cancelable = (ngx_http_keygate_nwaiting == 0);
}


static ngx_http_keygate_watch_t *
ngx_http_keygate_find_watch(int fd)
{
    ngx_uint_t                 i;
    ngx_http_keygate_watch_t  *w;

    w = ngx_http_keygate_watches->elts;

    for (i = 0; i < ngx_http_keygate_watches->nelts; i++) {
        if (w[i].conn != NULL && w[i].conn->fd == (ngx_socket_t) fd) {
            return &w[i];
        }
    }

    return NULL;
}


/*
 * kg_loop_hooks.watch: makes nginx watch fd for exactly `events`. Events
 * are level-triggered, because libkeygate (like hiredis) may leave data
 * in the socket between two calls. 0 means libkeygate is about to close
 * fd: the events are removed and the nginx connection released without
 * closing the fd, which stays libkeygate's.
 */
static void
ngx_http_keygate_watch(void *host, int fd, int events)
{
    ngx_uint_t                 i;
    ngx_connection_t          *c;
    ngx_http_keygate_watch_t  *w;

    (void) host;

    w = ngx_http_keygate_find_watch(fd);

    if (events == 0) {
        if (w != NULL) {
            ngx_http_keygate_unwatch(w->conn);
            w->conn = NULL;
        }

        return;
    }

    if (w == NULL) {
        c = ngx_get_connection(fd, ngx_cycle->log);
        if (c == NULL) {
            /* libkeygate's own timeout will answer the requests: 503 */
            ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, 0,
                          "keygate: no free connection for a store socket");
            return;
        }

        c->data = NULL;
        c->read->handler = ngx_http_keygate_io_read;
        c->write->handler = ngx_http_keygate_io_write;
        c->read->log = c->log;
        c->write->log = c->log;

        w = ngx_http_keygate_watches->elts;

        for (i = 0; i < ngx_http_keygate_watches->nelts; i++) {
            if (w[i].conn == NULL) {
                break;
            }
        }

        if (i == ngx_http_keygate_watches->nelts) {
            w = ngx_array_push(ngx_http_keygate_watches);
            if (w == NULL) {
                ngx_free_connection(c);
                return;
            }

        } else {
            w = &w[i];
        }

        w->conn = c;
    }

    c = w->conn;

    if ((events & KG_EV_READ) && !c->read->active) {
        if (ngx_add_event(c->read, NGX_READ_EVENT, NGX_LEVEL_EVENT)
            != NGX_OK)
        {
            ngx_log_error(NGX_LOG_ALERT, c->log, 0,
                          "keygate: cannot watch a store socket for reading");
        }

    } else if (!(events & KG_EV_READ) && c->read->active) {
        ngx_del_event(c->read, NGX_READ_EVENT, 0);
    }

    if ((events & KG_EV_WRITE) && !c->write->active) {
        if (ngx_add_event(c->write, NGX_WRITE_EVENT, NGX_LEVEL_EVENT)
            != NGX_OK)
        {
            ngx_log_error(NGX_LOG_ALERT, c->log, 0,
                          "keygate: cannot watch a store socket for writing");
        }

    } else if (!(events & KG_EV_WRITE) && c->write->active) {
        ngx_del_event(c->write, NGX_WRITE_EVENT, 0);
    }
}


/*
 * Stops watching and frees the nginx connection, leaving the fd open.
 * Freeing through ngx_free_connection flips the events' instance bit on
 * the next reuse, so a stale epoll event of this fd from the same batch
 * is ignored by nginx.
 */
static void
ngx_http_keygate_unwatch(ngx_connection_t *c)
{
    if (c->read->active) {
        ngx_del_event(c->read, NGX_READ_EVENT, 0);
    }

    if (c->write->active) {
        ngx_del_event(c->write, NGX_WRITE_EVENT, 0);
    }

    if (c->read->posted) {
        ngx_delete_posted_event(c->read);
    }

    if (c->write->posted) {
        ngx_delete_posted_event(c->write);
    }

    if (c->read->timer_set) {
        ngx_del_timer(c->read);
    }

    if (c->write->timer_set) {
        ngx_del_timer(c->write);
    }

    c->read->closed = 1;
    c->write->closed = 1;

    ngx_free_connection(c);

    c->fd = (ngx_socket_t) -1;
}


static void
ngx_http_keygate_io_read(ngx_event_t *ev)
{
    ngx_connection_t  *c = ev->data;

    if (ngx_http_keygate_kg == NULL) {
        return;
    }

    /* c may be freed inside: libkeygate may close the socket */
    kg_loop_ready(ngx_http_keygate_kg, (int) c->fd, KG_EV_READ);
    ngx_http_keygate_loop_sync();
}


static void
ngx_http_keygate_io_write(ngx_event_t *ev)
{
    ngx_connection_t  *c = ev->data;

    if (ngx_http_keygate_kg == NULL) {
        return;
    }

    kg_loop_ready(ngx_http_keygate_kg, (int) c->fd, KG_EV_WRITE);
    ngx_http_keygate_loop_sync();
}


static void
ngx_http_keygate_timer_handler(ngx_event_t *ev)
{
    (void) ev;

    if (ngx_http_keygate_kg == NULL) {
        return;
    }

    kg_loop_timeout(ngx_http_keygate_kg);
    ngx_http_keygate_loop_sync();
}


/*
 * Sets the one nginx timer to kg_loop_next_timeout_ms(), after every call
 * into libkeygate. The timer is exact (ngx_add_timer alone would keep an
 * old deadline up to 300 ms off).
 */
void
ngx_http_keygate_loop_sync(void)
{
    int          ms;
    ngx_msec_t   key;
    ngx_event_t *ev = &ngx_http_keygate_timer;

    if (ngx_http_keygate_kg == NULL) {
        return;
    }

    ngx_http_keygate_metrics_sync();

    ms = kg_loop_next_timeout_ms(ngx_http_keygate_kg);

    if (ms < 0) {
        if (ev->timer_set) {
            ngx_del_timer(ev);
        }

        return;
    }

    key = ngx_current_msec + (ngx_msec_t) ms;

    if (ev->timer_set) {
        if (ev->timer.key == key) {
            return;
        }

        ngx_del_timer(ev);
    }

    ngx_add_timer(ev, (ngx_msec_t) ms);
}
