/*
 * ngx_http_keygate_status.c - keygate's counters across workers, and the
 * `keygate_status;` handler that prints them in the Prometheus text format
 * (version 0.0.4).
 *
 *   access handler ──decision──► ngx_http_keygate_metrics_decision()
 *   libkeygate ─kg_stats_get()─► ngx_http_keygate_metrics_sync()  (deltas,
 *                                after every call into libkeygate)
 *                     both ──ngx_atomic_fetch_add──► shared zone
 *   GET keygate_status location ──copy to locals──► text
 *
 * The zone "keygate_metrics" is added when keygate_config is set; nginx
 * keeps it, and its counts, across reloads (same name, size and tag). Each
 * counter sits on its own 128-byte line, as ngx_event.c's stub_status
 * counters do, so workers bumping different counters do not share a cache
 * line. Counters only grow; a reader may see one counter a little ahead of
 * another, never a torn value. Labels are bounded: kg_status codes and
 * fixed latency bounds, never key, team or user ids.
 */

#include "ngx_http_keygate.h"


#define NGX_HTTP_KEYGATE_LINE      128
#define NGX_HTTP_KEYGATE_NSTATUS   (KG_RATE_LIMITED + 1)
#define NGX_HTTP_KEYGATE_NBOUNDS   11


typedef struct {
    ngx_atomic_t  n;
    u_char        pad[NGX_HTTP_KEYGATE_LINE - sizeof(ngx_atomic_t)];
} ngx_http_keygate_counter_t;


typedef struct {
    /* by kg_status; the last one: a status this build has no name for */
    ngx_http_keygate_counter_t  auth[NGX_HTTP_KEYGATE_NSTATUS + 1];
    /* one per latency bucket (not cumulative); the last one is +Inf */
    ngx_http_keygate_counter_t  bucket[NGX_HTTP_KEYGATE_NBOUNDS + 1];
    ngx_http_keygate_counter_t  latency_sum_us;
    ngx_http_keygate_counter_t  replays;
    ngx_http_keygate_counter_t  charged_micros;
    ngx_http_keygate_counter_t  cache_hits;
    ngx_http_keygate_counter_t  cache_misses;
    ngx_http_keygate_counter_t  invalidations;
    ngx_http_keygate_counter_t  backend_errors;
} ngx_http_keygate_metrics_t;


static ngx_int_t ngx_http_keygate_metrics_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static u_char *ngx_http_keygate_metric_head(u_char *p, const char *name,
    const char *type, const char *help);


/* upper bounds of the latency buckets: microseconds, and as printed */
static const uint64_t  ngx_http_keygate_bounds_us[NGX_HTTP_KEYGATE_NBOUNDS] = {
    500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000,
    1000000
};

static const char  *ngx_http_keygate_bounds_s[NGX_HTTP_KEYGATE_NBOUNDS] = {
    "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1",
    "0.25", "0.5", "1"
};


/* this process's view of the zone; NULL: not counting */
static ngx_http_keygate_metrics_t  *ngx_http_keygate_metrics;

/* libkeygate's counters as last added to the zone by this worker */
static kg_stats                     ngx_http_keygate_synced;


ngx_shm_zone_t *
ngx_http_keygate_metrics_zone(ngx_conf_t *cf)
{
    ngx_str_t        name = ngx_string("keygate_metrics");
    ngx_shm_zone_t  *zone;

    zone = ngx_shared_memory_add(cf, &name, 8 * ngx_pagesize,
                                 &ngx_http_keygate_module);
    if (zone == NULL) {
        return NULL;
    }

    zone->init = ngx_http_keygate_metrics_init_zone;

    return zone;
}


static ngx_int_t
ngx_http_keygate_metrics_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_slab_pool_t  *shpool;

    if (data != NULL) {                     /* a reload: keep the counts */
        shm_zone->data = data;
        return NGX_OK;
    }

    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    shm_zone->data = ngx_slab_calloc(shpool,
                                     sizeof(ngx_http_keygate_metrics_t));
    if (shm_zone->data == NULL) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


void
ngx_http_keygate_metrics_attach(ngx_shm_zone_t *zone)
{
    ngx_http_keygate_metrics = (zone != NULL) ? zone->data : NULL;
    ngx_memzero(&ngx_http_keygate_synced, sizeof(kg_stats));
}


uint64_t
ngx_http_keygate_now_us(void)
{
    struct timespec  ts;

    /* nginx's cached time has 1 ms steps: too coarse for a warm decision */
    (void) clock_gettime(CLOCK_MONOTONIC, &ts);

    return (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
}


void
ngx_http_keygate_metrics_decision(const kg_result *res, uint64_t started_us)
{
    uint64_t                     us, now;
    ngx_uint_t                   i, st;
    ngx_http_keygate_metrics_t  *m;

    m = ngx_http_keygate_metrics;

    if (m == NULL) {
        return;
    }

    st = (ngx_uint_t) res->status;

    if (st >= NGX_HTTP_KEYGATE_NSTATUS) {
        st = NGX_HTTP_KEYGATE_NSTATUS;
    }

    (void) ngx_atomic_fetch_add(&m->auth[st].n, 1);

    now = ngx_http_keygate_now_us();
    us = (now > started_us) ? now - started_us : 0;

    for (i = 0; i < NGX_HTTP_KEYGATE_NBOUNDS; i++) {
        if (us <= ngx_http_keygate_bounds_us[i]) {
            break;
        }
    }

    (void) ngx_atomic_fetch_add(&m->bucket[i].n, 1);
    (void) ngx_atomic_fetch_add(&m->latency_sum_us.n, (ngx_atomic_int_t) us);

    if (res->status == KG_OK) {
        if (res->replayed) {
            (void) ngx_atomic_fetch_add(&m->replays.n, 1);
        }

        if (res->cost_micros > 0) {
            (void) ngx_atomic_fetch_add(&m->charged_micros.n,
                                        (ngx_atomic_int_t) res->cost_micros);
        }
    }
}


/* Adds to the zone what libkeygate counted since the last call. */
void
ngx_http_keygate_metrics_sync(void)
{
    kg_stats                     now, *was;
    ngx_http_keygate_metrics_t  *m;

    m = ngx_http_keygate_metrics;

    if (m == NULL || ngx_http_keygate_kg == NULL) {
        return;
    }

    kg_stats_get(ngx_http_keygate_kg, &now, sizeof(kg_stats));
    was = &ngx_http_keygate_synced;

#define ngx_http_keygate_add(field)                                          \
    if (now.field > was->field) {                                            \
        (void) ngx_atomic_fetch_add(&m->field.n,                             \
                                    (ngx_atomic_int_t) (now.field - was->field)); \
    }

    ngx_http_keygate_add(cache_hits);
    ngx_http_keygate_add(cache_misses);
    ngx_http_keygate_add(invalidations);
    ngx_http_keygate_add(backend_errors);

#undef ngx_http_keygate_add

    *was = now;
}


#define NGX_HTTP_KEYGATE_HEAD_LEN  512          /* one HELP + TYPE pair */
#define NGX_HTTP_KEYGATE_LINE_LEN  (128 + NGX_ATOMIC_T_LEN)


ngx_int_t
ngx_http_keygate_status_handler(ngx_http_request_t *r)
{
    size_t                       len;
    u_char                      *p;
    uint64_t                     cum;
    ngx_int_t                    rc;
    ngx_buf_t                   *b;
    ngx_uint_t                   i;
    ngx_atomic_uint_t            auth[NGX_HTTP_KEYGATE_NSTATUS + 1];
    ngx_atomic_uint_t            bucket[NGX_HTTP_KEYGATE_NBOUNDS + 1];
    ngx_atomic_uint_t            sum_us, replays, charged, hits, misses;
    ngx_atomic_uint_t            inval, backend;
    ngx_http_keygate_metrics_t  *m;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);

    if (rc != NGX_OK) {
        return rc;
    }

    m = ngx_http_keygate_metrics;

    if (m == NULL) {
        return NGX_HTTP_SERVICE_UNAVAILABLE;
    }

    ngx_http_keygate_metrics_sync();

    /* copy first, print after: the numbers move while we print */

    for (i = 0; i <= NGX_HTTP_KEYGATE_NSTATUS; i++) {
        auth[i] = m->auth[i].n;
    }

    for (i = 0; i <= NGX_HTTP_KEYGATE_NBOUNDS; i++) {
        bucket[i] = m->bucket[i].n;
    }

    sum_us = m->latency_sum_us.n;
    replays = m->replays.n;
    charged = m->charged_micros.n;
    hits = m->cache_hits.n;
    misses = m->cache_misses.n;
    inval = m->invalidations.n;
    backend = m->backend_errors.n;

    len = 9 * NGX_HTTP_KEYGATE_HEAD_LEN
          + (NGX_HTTP_KEYGATE_NSTATUS + NGX_HTTP_KEYGATE_NBOUNDS + 12)
            * NGX_HTTP_KEYGATE_LINE_LEN;

    b = ngx_create_temp_buf(r->pool, len);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = b->last;

    p = ngx_http_keygate_metric_head(p, "keygate_authorizations_total",
            "counter", "Authorizations decided by keygate locations, by "
            "status (kg_status_code).");

    for (i = 0; i < NGX_HTTP_KEYGATE_NSTATUS; i++) {
        p = ngx_sprintf(p, "keygate_authorizations_total{status=\"%s\"} %uA\n",
                        kg_status_code((kg_status) i), auth[i]);
    }

    if (auth[NGX_HTTP_KEYGATE_NSTATUS] != 0) {
        p = ngx_sprintf(p,
                        "keygate_authorizations_total{status=\"other\"} %uA\n",
                        auth[NGX_HTTP_KEYGATE_NSTATUS]);
    }

    p = ngx_http_keygate_metric_head(p,
            "keygate_authorization_duration_seconds", "histogram",
            "Time from a request's entry into keygate's access handler to "
            "its decision.");

    cum = 0;

    for (i = 0; i < NGX_HTTP_KEYGATE_NBOUNDS; i++) {
        cum += bucket[i];
        p = ngx_sprintf(p, "keygate_authorization_duration_seconds_bucket"
                        "{le=\"%s\"} %uL\n", ngx_http_keygate_bounds_s[i], cum);
    }

    cum += bucket[NGX_HTTP_KEYGATE_NBOUNDS];

    p = ngx_sprintf(p, "keygate_authorization_duration_seconds_bucket"
                    "{le=\"+Inf\"} %uL\n"
                    "keygate_authorization_duration_seconds_sum %uA.%06uA\n"
                    "keygate_authorization_duration_seconds_count %uL\n",
                    cum, sum_us / 1000000, sum_us % 1000000, cum);

    p = ngx_http_keygate_metric_head(p, "keygate_charged_micros_total",
            "counter", "Money charged to wallets by authorizations, in "
            "micros (1 currency unit = 1000000).");
    p = ngx_sprintf(p, "keygate_charged_micros_total %uA\n", charged);

    p = ngx_http_keygate_metric_head(p, "keygate_replays_total", "counter",
            "Authorizations that replayed a request id: let through, "
            "charged nothing.");
    p = ngx_sprintf(p, "keygate_replays_total %uA\n", replays);

    p = ngx_http_keygate_metric_head(p, "keygate_token_cache_hits_total",
            "counter", "Tokens resolved from a worker's in-process cache.");
    p = ngx_sprintf(p, "keygate_token_cache_hits_total %uA\n", hits);

    p = ngx_http_keygate_metric_head(p, "keygate_token_cache_misses_total",
            "counter", "Tokens resolved by reading Redis.");
    p = ngx_sprintf(p, "keygate_token_cache_misses_total %uA\n", misses);

    p = ngx_http_keygate_metric_head(p, "keygate_invalidations_total",
            "counter", "Invalidation messages received, summed over the "
            "workers' subscriptions.");
    p = ngx_sprintf(p, "keygate_invalidations_total %uA\n", inval);

    p = ngx_http_keygate_metric_head(p, "keygate_backend_errors_total",
            "counter", "Requests libkeygate answered backend_error because "
            "of the store: unreachable, slower than timeout_ms, or damaged "
            "records.");
    p = ngx_sprintf(p, "keygate_backend_errors_total %uA\n", backend);

    b->last = p;

    return ngx_http_keygate_send_buf(r, b, NGX_HTTP_OK, "text/plain; version=0.0.4");
}


static u_char *
ngx_http_keygate_metric_head(u_char *p, const char *name, const char *type,
    const char *help)
{
    return ngx_sprintf(p, "# HELP %s %s\n# TYPE %s %s\n",
                       name, help, name, type);
}
