/*
 * cli_authorize.c - `keygate authorize`: see cli_authorize.h.
 *
 * A thin host of libkeygate's public ABI: kg_open() on the config file,
 * one blocking kg_authorize(), the decision, cost and balance printed.
 * Only include/keygate.h is used, so this is exactly what a gateway sees.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_authorize.h"
#include "keygate.h"

#define AUTH_MAX_PARAMS 64
#define AUTH_TOKEN_MAX  256

enum { AUTH_OK = 0, AUTH_REFUSED = 1, AUTH_USAGE = 2, AUTH_UNREACHABLE = 3 };

static const char usage_text[] =
    "usage: keygate authorize [--config FILE] (--token-file FILE | --token TOKEN)\n"
    "                         --service SERVICE [--model MODEL]\n"
    "                         [--param NAME=VALUE ...] [--request-id ID]\n"
    "                         [--settle NAME=VALUE ...] [--json]\n"
    "\n"
    "Runs one request through the gateway module (libkeygate) and prints the\n"
    "decision, the cost charged and the wallet balance. Pay-as-you-go requests\n"
    "are really charged. --config defaults to $KEYGATE_CONFIG; --token-file -\n"
    "reads the token from stdin. Exit status: 0 authorized, 1 refused,\n"
    "2 bad usage, 3 key store unreachable.\n"
    "\n"
    "--settle (services the catalog marks \"settle\": true): after the\n"
    "authorization, which holds the worst-case price, settles the request with\n"
    "the actual quantities: the --param values with these replacing or adding\n"
    "to them. Without --request-id one is made up (the hold is named by it).\n";

typedef struct auth_opts {
    const char *config, *token, *token_file, *service, *model, *request_id;
    kg_param params[AUTH_MAX_PARAMS];
    char names[AUTH_MAX_PARAMS][64];  /* copies: argv is left as it was */
    size_t nparams;
    kg_param settle[AUTH_MAX_PARAMS]; /* --settle, the same way */
    char snames[AUTH_MAX_PARAMS][64];
    size_t nsettle;
    int json, help;
} auth_opts;

static int usage(const char *why, const char *arg)
{
    if (arg != NULL)
        fprintf(stderr, "error: usage: %s: %s\n", why, arg);
    else
        fprintf(stderr, "error: usage: %s\n", why);
    fputs(usage_text, stderr);
    return AUTH_USAGE;
}

/* "--name VALUE" or "--name=VALUE": returns the value, advancing *i, or
 * NULL when argv[*i] is not this option. *missing is set when it is but
 * has no value. */
static const char *opt_value(int argc, char **argv, int *i, const char *name, int *missing)
{
    size_t n = strlen(name);
    const char *a = argv[*i];

    if (strncmp(a, name, n) != 0)
        return NULL;
    if (a[n] == '=')
        return a + n + 1;
    if (a[n] != '\0')
        return NULL;
    if (*i + 1 >= argc) {
        *missing = 1;
        return NULL;
    }
    return argv[++*i];
}

static int parse_kv(kg_param *params, char names[][64], size_t *np, const char *spec)
{
    const char *eq = strchr(spec, '=');
    char *end;
    long long v;

    if (eq == NULL || eq == spec || eq[1] == '\0' || (size_t)(eq - spec) >= sizeof names[0])
        return -1;
    errno = 0;
    v = strtoll(eq + 1, &end, 10);
    if (errno != 0 || *end != '\0' || *np >= AUTH_MAX_PARAMS)
        return -1;
    memcpy(names[*np], spec, (size_t)(eq - spec));
    names[*np][eq - spec] = '\0';
    params[*np].name = names[*np];
    params[*np].value = v;
    (*np)++;
    return 0;
}

static int parse_param(auth_opts *o, const char *spec)
{
    return parse_kv(o->params, o->names, &o->nparams, spec);
}

static int parse_settle(auth_opts *o, const char *spec)
{
    return parse_kv(o->settle, o->snames, &o->nsettle, spec);
}

static int parse(auth_opts *o, int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *v;
        int missing = 0;

        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            o->help = 1;
            return 0;
        }
        if (strcmp(argv[i], "--json") == 0) {
            o->json = 1;
            continue;
        }
#define OPT(flag, field)                                                  \
        if ((v = opt_value(argc, argv, &i, flag, &missing)) != NULL) {    \
            o->field = v;                                                 \
            continue;                                                     \
        }                                                                 \
        if (missing)                                                      \
            return usage("option needs a value", flag);
        OPT("--config", config)
        OPT("--token", token)
        OPT("--token-file", token_file)
        OPT("--service", service)
        OPT("--model", model)
        OPT("--request-id", request_id)
#undef OPT
        if ((v = opt_value(argc, argv, &i, "--param", &missing)) != NULL) {
            if (parse_param(o, v) != 0)
                return usage("--param wants NAME=INTEGER", v);
            continue;
        }
        if (missing)
            return usage("option needs a value", "--param");
        if ((v = opt_value(argc, argv, &i, "--settle", &missing)) != NULL) {
            if (parse_settle(o, v) != 0)
                return usage("--settle wants NAME=INTEGER", v);
            continue;
        }
        if (missing)
            return usage("option needs a value", "--settle");
        return usage("unknown argument", argv[i]);
    }
    if (o->config == NULL)
        o->config = getenv("KEYGATE_CONFIG");
    if (o->config == NULL || o->config[0] == '\0')
        return usage("no config file (--config FILE or KEYGATE_CONFIG)", NULL);
    if ((o->token == NULL) == (o->token_file == NULL))
        return usage("give exactly one of --token and --token-file", NULL);
    if (o->service == NULL)
        return usage("--service is required", NULL);
    return 0;
}

static void wipe(void *p, size_t n)
{
    explicit_bzero(p, n);
}

/* Reads the token (first line, surrounding blanks dropped) into buf. */
static int read_token(const char *path, char *buf, size_t cap, size_t *len)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "r");
    size_t n, start = 0;

    if (f == NULL) {
        fprintf(stderr, "error: cannot read the token file %s: %s\n", path, strerror(errno));
        return -1;
    }
    n = fread(buf, 1, cap - 1, f);
    if (f != stdin)
        fclose(f);
    buf[n] = '\0';
    for (size_t i = 0; i < n; i++)
        if (buf[i] == '\n' || buf[i] == '\r') {
            n = i;
            break;
        }
    while (n > 0 && (buf[n - 1] == ' ' || buf[n - 1] == '\t'))
        n--;
    while (start < n && (buf[start] == ' ' || buf[start] == '\t'))
        start++;
    memmove(buf, buf + start, n - start);
    n -= start;
    buf[n] = '\0';
    if (n == 0) {
        fprintf(stderr, "error: the token file %s is empty\n", path);
        return -1;
    }
    *len = n;
    return 0;
}

static void print_money(const char *label, int64_t micros)
{
    int64_t a = micros < 0 ? -micros : micros;
    printf("%-9s %s%lld.%06lld (%lld micros)\n", label, micros < 0 ? "-" : "",
           (long long)(a / 1000000), (long long)(a % 1000000), (long long)micros);
}

static void print_text(const kg_result *r)
{
    printf("%-9s %s (HTTP %d): %s\n", "decision:", kg_status_code(r->status),
           kg_http_status(r->status), kg_strerror(r->status));
    printf("%-9s %s\n", "key:", r->key_id[0] ? r->key_id : "-");
    printf("%-9s %s\n", "user:", r->user_id[0] ? r->user_id : "-");
    printf("%-9s %s\n", "team:", r->team_id[0] ? r->team_id : "-");
    printf("%-9s %s\n", "wallet:", r->wallet_id[0] ? r->wallet_id : "-");
    print_money("cost:", r->cost_micros);
    if (r->balance_micros >= 0)
        print_money("balance:", r->balance_micros);
    else
        printf("%-9s - (no wallet)\n", "balance:");
    printf("%-9s %s\n", "replayed:", r->replayed ? "yes (charged by an earlier request with this id)" : "no");
}

/* Ids and codes are plain ASCII; nothing needs escaping but be safe. */
static void json_str(const char *s)
{
    if (s == NULL || s[0] == '\0') {
        fputs("null", stdout);
        return;
    }
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    putchar('"');
}

static void print_settle_text(const kg_hold *h, const kg_result *s)
{
    print_money("held:", h->hold_micros);
    printf("%-9s %s (HTTP %d): %s\n", "settle:", kg_status_code(s->status),
           kg_http_status(s->status), kg_strerror(s->status));
    print_money("charged:", s->cost_micros);
    if (s->balance_micros >= 0)
        print_money("balance:", s->balance_micros);
    if (s->replayed)
        printf("%-9s %s\n", "replayed:", "yes (settled earlier, or the hold expired and was captured)");
}

static void print_json(const kg_result *r, const kg_hold *h, const kg_result *s)
{
    fputs("{\"status\":", stdout);
    json_str(kg_status_code(r->status));
    printf(",\"http\":%d,\"message\":", kg_http_status(r->status));
    json_str(kg_strerror(r->status));
    fputs(",\"key_id\":", stdout);
    json_str(r->key_id);
    fputs(",\"user_id\":", stdout);
    json_str(r->user_id);
    fputs(",\"team_id\":", stdout);
    json_str(r->team_id);
    fputs(",\"wallet_id\":", stdout);
    json_str(r->wallet_id);
    printf(",\"cost_micros\":%lld,\"balance_micros\":", (long long)r->cost_micros);
    if (r->balance_micros >= 0)
        printf("%lld", (long long)r->balance_micros);
    else
        fputs("null", stdout);
    printf(",\"replayed\":%s", r->replayed ? "true" : "false");
    if (s != NULL) {
        printf(",\"hold_micros\":%lld,\"settle\":{\"status\":", (long long)h->hold_micros);
        json_str(kg_status_code(s->status));
        printf(",\"http\":%d,\"cost_micros\":%lld,\"balance_micros\":", kg_http_status(s->status),
               (long long)s->cost_micros);
        if (s->balance_micros >= 0)
            printf("%lld", (long long)s->balance_micros);
        else
            fputs("null", stdout);
        printf(",\"replayed\":%s,\"captured\":%s}", s->replayed ? "true" : "false",
               h->captured ? "true" : "false");
    }
    fputs("}\n", stdout);
}

/* A request id for a --settle run without one: 16 hex of /dev/urandom. */
static int make_request_id(char *out, size_t cap)
{
    unsigned char b[8];
    FILE *f = fopen("/dev/urandom", "rb");
    size_t n = f != NULL ? fread(b, 1, sizeof b, f) : 0;

    if (f != NULL)
        fclose(f);
    if (n != sizeof b)
        return -1;
    snprintf(out, cap, "cli-%02x%02x%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2], b[3], b[4], b[5],
             b[6], b[7]);
    return 0;
}

/* The settle's params: the request's, each --settle replacing one of the
 * same name or added. */
static size_t settle_params(const auth_opts *o, kg_param *out)
{
    size_t n = 0;

    for (size_t i = 0; i < o->nparams; i++) {
        size_t j;
        for (j = 0; j < o->nsettle; j++)
            if (strcmp(o->settle[j].name, o->params[i].name) == 0)
                break;
        if (j == o->nsettle)
            out[n++] = o->params[i];
    }
    for (size_t j = 0; j < o->nsettle && n < 2 * AUTH_MAX_PARAMS; j++)
        out[n++] = o->settle[j];
    return n;
}

int cli_authorize(int argc, char **argv)
{
    auth_opts o;
    char token[AUTH_TOKEN_MAX], err[512];
    size_t toklen;
    kg_request req;
    kg_result res, sres;
    kg_hold hold, shold;
    kg_param sparams[2 * AUTH_MAX_PARAMS];
    char rid[40];
    kg_ctx *ctx;
    int rc;

    memset(&o, 0, sizeof o);
    if ((rc = parse(&o, argc, argv)) != 0)
        return rc;
    if (o.help) {
        fputs(usage_text, stdout);
        return AUTH_OK;
    }
    if (o.token_file != NULL) {
        if (read_token(o.token_file, token, sizeof token, &toklen) != 0) {
            wipe(token, sizeof token);
            return AUTH_USAGE;
        }
    } else {
        toklen = strlen(o.token);
        if (toklen >= sizeof token)
            toklen = sizeof token - 1;   /* too long to be a token: refused as malformed */
        memcpy(token, o.token, toklen);
        token[toklen] = '\0';
    }
    ctx = kg_open(o.config, err, sizeof err);
    if (ctx == NULL) {
        wipe(token, sizeof token);
        fprintf(stderr, "error: %s\n", err);
        return AUTH_USAGE;
    }
    memset(&req, 0, sizeof req);
    req.token = token;
    req.token_len = toklen;
    req.service = o.service;
    req.model = o.model;
    req.params = o.nparams > 0 ? o.params : NULL;
    req.nparams = o.nparams;
    req.request_id = o.request_id;
    if (o.nsettle > 0 && req.request_id == NULL) {
        if (make_request_id(rid, sizeof rid) != 0) {
            wipe(token, sizeof token);
            kg_close(ctx);
            fprintf(stderr, "error: cannot read /dev/urandom for a request id\n");
            return AUTH_USAGE;
        }
        req.request_id = rid;
    }
    kg_authorize_hold(ctx, &req, &res, &hold, sizeof hold);
    if (o.nsettle > 0 && res.status == KG_OK) {
        req.params = sparams;
        req.nparams = settle_params(&o, sparams);
        kg_settle(ctx, &req, &sres, &shold, sizeof shold);
    }
    wipe(token, sizeof token);
    kg_close(ctx);

    if (o.json)
        print_json(&res, &shold, o.nsettle > 0 && res.status == KG_OK ? &sres : NULL);
    else {
        print_text(&res);
        if (hold.hold_micros > 0 && o.nsettle == 0)
            print_money("held:", hold.hold_micros);
        if (o.nsettle > 0 && res.status == KG_OK)
            print_settle_text(&shold, &sres);
    }
    if (res.status != KG_OK)
        return res.status == KG_BACKEND_ERROR ? AUTH_UNREACHABLE : AUTH_REFUSED;
    if (o.nsettle > 0 && sres.status != KG_OK)
        return sres.status == KG_BACKEND_ERROR ? AUTH_UNREACHABLE : AUTH_REFUSED;
    return AUTH_OK;
}
