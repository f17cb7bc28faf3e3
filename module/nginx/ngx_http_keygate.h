/*
 * ngx_http_keygate.h - private interface between the files of
 * ngx_http_keygate_module:
 *
 *   ngx_http_keygate_module.c   directives, configuration, the module's
 *                               definition, the worker life cycle
 *   ngx_http_keygate_access.c   the access-phase handler, per-request
 *                               state, the $keygate_* variables
 *   ngx_http_keygate_loop.c     this worker's kg_ctx inside nginx's event
 *                               loop: fds as nginx connections, one timer
 *   ngx_http_keygate_refusal.c  the JSON refusal, and the price of a
 *                               request refused for funds
 *   ngx_http_keygate_status.c   counters in a shared zone across workers,
 *                               and the keygate_status; handler
 *   ngx_http_keygate_settle.c   the log-phase settle of a held request
 *                               (services the catalog marks "settle")
 *
 * A worker is one thread: the per-worker state lives in plain statics.
 */
#ifndef NGX_HTTP_KEYGATE_H_INCLUDED_
#define NGX_HTTP_KEYGATE_H_INCLUDED_

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <keygate.h>


/* ---- ngx_http_keygate_module.c ---- */

extern ngx_module_t  ngx_http_keygate_module;


typedef struct {
    ngx_str_t                   name;         /* NUL-terminated, from config */
    ngx_http_complex_value_t    value;        /* an integer after expansion */
} ngx_http_keygate_param_t;


/* A location's keygate directives, merged; all from the config pool. */
typedef struct {
    ngx_http_complex_value_t   *service;      /* NULL: keygate off here */
    ngx_http_complex_value_t   *model;        /* NULL: no model */
    ngx_http_complex_value_t   *request_id;   /* NULL: no request id */
    ngx_array_t                *params;       /* of ngx_http_keygate_param_t */
    ngx_array_t                *settle_params; /* keygate_settle_param, the same */
    ngx_flag_t                  refusal_balance; /* 402 body tells the balance */
} ngx_http_keygate_loc_conf_t;


/* ---- ngx_http_keygate_access.c ---- */

/*
 * The access-phase handler, installed by postconfiguration: NGX_DECLINED
 * where keygate is off, NGX_AGAIN while libkeygate works, NGX_OK to let
 * the request through, NGX_DONE after sending a refusal, NGX_ERROR.
 */
ngx_int_t ngx_http_keygate_handler(ngx_http_request_t *r);

/* preconfiguration: adds the $keygate_* variables. NGX_OK or NGX_ERROR. */
ngx_int_t ngx_http_keygate_add_variables(ngx_conf_t *cf);


/*
 * What the log phase needs of a request that passed keygate: NULL when it
 * did not come through a keygate location or placed no hold. The
 * strings and params live in r->pool.
 */
typedef struct {
    ngx_http_keygate_loc_conf_t  *lcf;
    const kg_request             *req;
    const kg_hold                *hold;
    ngx_uint_t                    maybe;      /* the client left while the
                                                 authorization was pending:
                                                 a hold may have been placed */
} ngx_http_keygate_held_t;

ngx_int_t ngx_http_keygate_get_held(ngx_http_request_t *r,
    ngx_http_keygate_held_t *out);


/* ---- ngx_http_keygate_settle.c ---- */

/* The log-phase handler: settles the request's hold, without holding the
 * request (the settle outlives it). Always NGX_OK. */
ngx_int_t ngx_http_keygate_settle_handler(ngx_http_request_t *r);


/* ---- ngx_http_keygate_loop.c ---- */

/* This worker's context; NULL when keygate is unavailable here (no
 * keygate_config, or kg_open failed): keygate locations then answer 503. */
extern kg_ctx  *ngx_http_keygate_kg;

/*
 * Opens the worker's kg_ctx from config_path (NUL-terminated) and attaches
 * nginx's event loop to it. Returns NGX_OK, also when kg_open fails (that
 * is logged; ngx_http_keygate_kg stays NULL), or NGX_ERROR when out of
 * memory.
 */
ngx_int_t ngx_http_keygate_loop_open(ngx_cycle_t *cycle, ngx_str_t *config_path);

/*
 * Closes the context. Pending requests are completed by libkeygate with
 * KG_BACKEND_ERROR while ngx_http_keygate_loop_exiting() is true, and
 * their sockets leave nginx's loop through the watch hook.
 */
void ngx_http_keygate_loop_close(void);

/* To be called after every call into libkeygate: re-arms the timer to
 * kg_loop_next_timeout_ms(). */
void ngx_http_keygate_loop_sync(void);

/* +1 when a request starts waiting, -1 when it stops (answered or
 * cancelled). While any waits, the timer holds a gracefully exiting
 * worker. */
void ngx_http_keygate_loop_waiting(ngx_int_t delta);

/* 1 while ngx_http_keygate_loop_close() runs. */
ngx_uint_t ngx_http_keygate_loop_exiting(void);


/* ---- ngx_http_keygate_refusal.c ---- */

/*
 * Sends a refusal: status kg_http_status(res->status), body
 * {"error": "<kg_status_code>", "message": "<message or kg_strerror>"},
 * plus "cost_micros" for 402 insufficient_funds, and "balance_micros" where
 * the location says keygate_refusal_balance on; for 429 rate_limited a
 * "Retry-After" header (whole seconds, rounded up, from retry_after_ms)
 * and "retry_after_ms" in the body. Returns what the output chain
 * returned, for ngx_http_finalize_request().
 */
/* Sends b, whole, as the answer with this status and content type. */
ngx_int_t ngx_http_keygate_send_buf(ngx_http_request_t *r, ngx_buf_t *b,
    ngx_uint_t status, const char *type);
ngx_int_t ngx_http_keygate_send_refusal(ngx_http_request_t *r,
    const kg_request *req, const kg_result *res, const char *message,
    int64_t retry_after_ms);


/* ---- ngx_http_keygate_status.c ---- */

/* postconfiguration: adds the shared zone "keygate_metrics" (kept across
 * reloads). Returns NULL when out of memory. */
ngx_shm_zone_t *ngx_http_keygate_metrics_zone(ngx_conf_t *cf);

/* init_process: this worker counts into zone (NULL: does not count). */
void ngx_http_keygate_metrics_attach(ngx_shm_zone_t *zone);

/* A monotonic clock in microseconds, for the latency histogram. */
uint64_t ngx_http_keygate_now_us(void);

/* One decision of the access handler (once per authorization), started
 * at started_us: its status, latency, replay and the micros it charged. */
void ngx_http_keygate_metrics_decision(const kg_result *res,
    uint64_t started_us);

/* Adds libkeygate's counters (kg_stats_get) counted since the last call;
 * called by ngx_http_keygate_loop_sync(), after every call into it. */
void ngx_http_keygate_metrics_sync(void);

/* The content handler of a keygate_status location. */
ngx_int_t ngx_http_keygate_status_handler(ngx_http_request_t *r);


#endif /* NGX_HTTP_KEYGATE_H_INCLUDED_ */
