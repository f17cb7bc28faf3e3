/*
 * ngx_http_keygate_module - keygate API-key checks and metering in nginx.
 *
 * A thin glue over libkeygate's non-blocking API (include/keygate.h):
 *
 *   - one kg_ctx per worker process, opened in init_process, its sockets
 *     and timer inside nginx's own event loop (ngx_http_keygate_loop.c);
 *   - the access-phase handler (ngx_http_keygate_access.c) starts
 *     kg_authorize_start() and returns NGX_AGAIN; when libkeygate calls
 *     back, a posted event re-runs the request's phases, and the handler
 *     then lets it through or answers the refusal as JSON
 *     (ngx_http_keygate_refusal.c).
 *
 * Nothing here ever waits on a socket: a worker keeps serving every other
 * request while a keygate answer is pending, whatever Redis does.
 * The client's token is passed to libkeygate and never logged or copied
 * into a response.
 *
 * This file: the directives, their configuration, the module's
 * definition, postconfiguration (which installs the access handler) and
 * the worker life cycle.
 */

#include "ngx_http_keygate.h"


typedef struct {
    ngx_str_t                   config_path;  /* keygate_config; "" = unset */
    ngx_shm_zone_t             *metrics;      /* the counters' zone, or NULL */
    ngx_uint_t                  status_used;  /* a keygate_status location */
} ngx_http_keygate_main_conf_t;


static ngx_int_t ngx_http_keygate_init(ngx_conf_t *cf);
static void *ngx_http_keygate_create_main_conf(ngx_conf_t *cf);
static void *ngx_http_keygate_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_keygate_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_http_keygate_compile(ngx_conf_t *cf, ngx_str_t *value,
    ngx_http_complex_value_t *cv);
static char *ngx_http_keygate_service(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_keygate_param(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_keygate_status(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_keygate_init_process(ngx_cycle_t *cycle);
static void ngx_http_keygate_exit_process(ngx_cycle_t *cycle);


static ngx_command_t  ngx_http_keygate_commands[] = {

    { ngx_string("keygate_config"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_keygate_main_conf_t, config_path),
      NULL },

    { ngx_string("keygate_service"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_keygate_service,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("keygate_model"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_set_complex_value_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_keygate_loc_conf_t, model),
      NULL },

    { ngx_string("keygate_request_id"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_set_complex_value_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_keygate_loc_conf_t, request_id),
      NULL },

    { ngx_string("keygate_param"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE2,
      ngx_http_keygate_param,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_keygate_loc_conf_t, params),
      NULL },

    /* the measured quantity of a settle service, read in the log phase */
    { ngx_string("keygate_settle_param"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE2,
      ngx_http_keygate_param,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_keygate_loc_conf_t, settle_params),
      NULL },

    { ngx_string("keygate_status"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_keygate_status,
      0,
      0,
      NULL },

    { ngx_string("keygate_refusal_balance"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_keygate_loc_conf_t, refusal_balance),
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_keygate_module_ctx = {
    ngx_http_keygate_add_variables,        /* preconfiguration */
    ngx_http_keygate_init,                 /* postconfiguration */

    ngx_http_keygate_create_main_conf,     /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_keygate_create_loc_conf,      /* create location configuration */
    ngx_http_keygate_merge_loc_conf        /* merge location configuration */
};


ngx_module_t  ngx_http_keygate_module = {
    NGX_MODULE_V1,
    &ngx_http_keygate_module_ctx,          /* module context */
    ngx_http_keygate_commands,             /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_http_keygate_init_process,         /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_keygate_exit_process,         /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


/* ------------------------------------------------------------------ */
/* Configuration                                                       */
/* ------------------------------------------------------------------ */

static void *
ngx_http_keygate_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_keygate_main_conf_t  *kmcf;

    kmcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_keygate_main_conf_t));
    if (kmcf == NULL) {
        return NULL;
    }

    /* kmcf->config_path = { 0, NULL }: ngx_conf_set_str_slot's "unset" */

    return kmcf;
}


static void *
ngx_http_keygate_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_keygate_loc_conf_t  *conf;

    conf = ngx_pcalloc(cf->pool, sizeof(ngx_http_keygate_loc_conf_t));
    if (conf == NULL) {
        return NULL;
    }

    conf->service = NGX_CONF_UNSET_PTR;
    conf->model = NGX_CONF_UNSET_PTR;
    conf->request_id = NGX_CONF_UNSET_PTR;
    conf->params = NGX_CONF_UNSET_PTR;
    conf->settle_params = NGX_CONF_UNSET_PTR;
    conf->refusal_balance = NGX_CONF_UNSET;

    return conf;
}


static char *
ngx_http_keygate_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_keygate_loc_conf_t *prev = parent;
    ngx_http_keygate_loc_conf_t *conf = child;

    ngx_http_keygate_main_conf_t  *kmcf;

    ngx_conf_merge_ptr_value(conf->service, prev->service, NULL);
    ngx_conf_merge_ptr_value(conf->model, prev->model, NULL);
    ngx_conf_merge_ptr_value(conf->request_id, prev->request_id, NULL);
    ngx_conf_merge_ptr_value(conf->params, prev->params, NULL);
    ngx_conf_merge_ptr_value(conf->settle_params, prev->settle_params, NULL);

    /* a hold is named by its request id: nginx's own when none is set */
    if (conf->service != NULL && conf->settle_params != NULL
        && conf->request_id == NULL)
    {
        ngx_str_t  rid = ngx_string("$request_id");

        conf->request_id = ngx_palloc(cf->pool,
                                      sizeof(ngx_http_complex_value_t));
        if (conf->request_id == NULL
            || ngx_http_keygate_compile(cf, &rid, conf->request_id)
               != NGX_CONF_OK)
        {
            return NGX_CONF_ERROR;
        }
    }
    /* off: any holder of a key's token could read its wallet's balance */
    ngx_conf_merge_value(conf->refusal_balance, prev->refusal_balance, 0);

    if (conf->service != NULL) {
        kmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_keygate_module);

        if (kmcf->config_path.data == NULL) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"keygate_service\" needs \"keygate_config\" "
                               "in the http block");
            return NGX_CONF_ERROR;
        }
    }

    return NGX_CONF_OK;
}


/* Compiles a directive's value (it may hold variables) into cv. */
static char *
ngx_http_keygate_compile(ngx_conf_t *cf, ngx_str_t *value,
    ngx_http_complex_value_t *cv)
{
    ngx_http_compile_complex_value_t   ccv;

    ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

    ccv.cf = cf;
    ccv.value = value;
    ccv.complex_value = cv;

    if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* keygate_service NAME | off; */
static char *
ngx_http_keygate_service(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_keygate_loc_conf_t *klcf = conf;

    ngx_str_t                         *value;

    if (klcf->service != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_strcmp(value[1].data, "off") == 0) {
        klcf->service = NULL;
        return NGX_CONF_OK;
    }

    if (value[1].len == 0) {
        return "needs a service name";
    }

    klcf->service = ngx_palloc(cf->pool, sizeof(ngx_http_complex_value_t));
    if (klcf->service == NULL) {
        return NGX_CONF_ERROR;
    }

    return ngx_http_keygate_compile(cf, &value[1], klcf->service);
}


/* keygate_param NAME VALUE; and keygate_settle_param NAME VALUE;
 * repeatable; cmd->offset names the array */
static char *
ngx_http_keygate_param(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_array_t **params = (ngx_array_t **) ((char *) conf + cmd->offset);

    ngx_str_t                         *value;
    ngx_uint_t                         i;
    ngx_http_keygate_param_t          *p;

    value = cf->args->elts;

    if (value[1].len == 0) {
        return "needs a parameter name";
    }

    for (i = 0; i < value[1].len; i++) {
        if (value[1].data[i] == '$') {
            return "takes a literal parameter name";
        }
    }

    if (*params == NGX_CONF_UNSET_PTR) {
        *params = ngx_array_create(cf->pool, 4,
                                   sizeof(ngx_http_keygate_param_t));
        if (*params == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    p = (*params)->elts;

    for (i = 0; i < (*params)->nelts; i++) {
        if (p[i].name.len == value[1].len
            && ngx_strncmp(p[i].name.data, value[1].data, value[1].len) == 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "duplicate %V \"%V\"", &cmd->name, &value[1]);
            return NGX_CONF_ERROR;
        }
    }

    p = ngx_array_push(*params);
    if (p == NULL) {
        return NGX_CONF_ERROR;
    }

    p->name = value[1];         /* the config parser NUL-terminates args */

    return ngx_http_keygate_compile(cf, &value[2], &p->value);
}


/* keygate_status; the location answers with keygate's counters */
static char *
ngx_http_keygate_status(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_core_loc_conf_t      *clcf;
    ngx_http_keygate_main_conf_t  *kmcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_keygate_status_handler;

    kmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_keygate_module);
    kmcf->status_used = 1;

    return NGX_CONF_OK;
}


/*
 * postconfiguration: checks the ABI and the config file (in the master, so
 * that "nginx -t" reports a bad file), and installs the access handler
 * at the front of the access handlers array. nginx runs that array from
 * the back, so keygate runs after allow/deny, auth_basic and
 * auth_request: money is only charged for requests the other checks let
 * through.
 */
static ngx_int_t
ngx_http_keygate_init(ngx_conf_t *cf)
{
    char                           err[256];
    kg_ctx                        *kg;
    ngx_array_t                   *a;
    ngx_http_handler_pt           *h;
    ngx_http_core_main_conf_t     *cmcf;
    ngx_http_keygate_main_conf_t  *kmcf;

    kmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_keygate_module);

    if (kmcf->config_path.data == NULL) {
        if (kmcf->status_used) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "\"keygate_status\" needs \"keygate_config\" "
                          "in the http block");
            return NGX_ERROR;
        }

        return NGX_OK;
    }

    if (kg_abi_version() != KG_ABI_VERSION) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "keygate: libkeygate ABI version %d, module built for %d",
                      kg_abi_version(), KG_ABI_VERSION);
        return NGX_ERROR;
    }

    if (ngx_conf_full_name(cf->cycle, &kmcf->config_path, 1) != NGX_OK) {
        return NGX_ERROR;
    }

    err[0] = '\0';
    kg = kg_open((const char *) kmcf->config_path.data, err, sizeof(err));

    if (kg == NULL) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "keygate_config \"%V\": %s", &kmcf->config_path, err);
        return NGX_ERROR;
    }

    kg_close(kg);

    kmcf->metrics = ngx_http_keygate_metrics_zone(cf);
    if (kmcf->metrics == NULL) {
        return NGX_ERROR;
    }

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);
    a = &cmcf->phases[NGX_HTTP_ACCESS_PHASE].handlers;

    h = ngx_array_push(a);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h = a->elts;
    ngx_memmove(&h[1], &h[0], (a->nelts - 1) * sizeof(ngx_http_handler_pt));
    h[0] = ngx_http_keygate_handler;

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_LOG_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_keygate_settle_handler;

    return NGX_OK;
}


/* ------------------------------------------------------------------ */
/* Worker life cycle                                                   */
/* ------------------------------------------------------------------ */

/*
 * Opens this worker's kg_ctx and attaches nginx's loop. A failure (say the
 * pepper file is unreadable by the worker's user) is logged and leaves
 * the worker up: every keygate location then answers 503, never lets a
 * request through.
 */
static ngx_int_t
ngx_http_keygate_init_process(ngx_cycle_t *cycle)
{
    ngx_http_conf_ctx_t          *hctx;
    ngx_http_keygate_main_conf_t *kmcf;

    if (ngx_process != NGX_PROCESS_WORKER && ngx_process != NGX_PROCESS_SINGLE) {
        return NGX_OK;
    }

    hctx = (ngx_http_conf_ctx_t *) ngx_get_conf(cycle->conf_ctx,
                                                ngx_http_module);
    if (hctx == NULL) {
        return NGX_OK;
    }

    kmcf = hctx->main_conf[ngx_http_keygate_module.ctx_index];

    if (kmcf == NULL || kmcf->config_path.data == NULL) {
        return NGX_OK;
    }

    ngx_http_keygate_metrics_attach(kmcf->metrics);

    if (ngx_http_keygate_loop_open(cycle, &kmcf->config_path) != NGX_OK) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * Closes the worker's kg_ctx. What is still pending is completed with
 * KG_BACKEND_ERROR but not resumed any more (the process is leaving); the
 * sockets leave nginx's loop, so nginx finds no stray connection at exit.
 */
static void
ngx_http_keygate_exit_process(ngx_cycle_t *cycle)
{
    (void) cycle;

    ngx_http_keygate_loop_close();
}
