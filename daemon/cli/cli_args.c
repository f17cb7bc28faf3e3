/*
 * cli_args.c - argument parsing for the keygate CLI: options, positional
 * arguments, integers, and the compact service and param specs.
 */
#include "cli.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

void *cli_alloc(cli_ctx *ctx, size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);

    if (p != NULL && ctx->nallocs == ctx->capallocs) {
        size_t cap = ctx->capallocs ? 2 * ctx->capallocs : 16;
        void **na = realloc(ctx->allocs, cap * sizeof *na);
        if (na == NULL) {
            free(p);
            p = NULL;
        } else {
            ctx->allocs = na;
            ctx->capallocs = cap;
        }
    }
    if (p == NULL) {
        /* A CLI that cannot get a few bytes has nothing sensible left to do. */
        fputs("error: internal: out of memory\n", stderr);
        abort();
    }
    ctx->allocs[ctx->nallocs++] = p;
    return p;
}

void cli_ctx_cleanup(cli_ctx *ctx)
{
    for (size_t i = 0; i < ctx->nallocs; i++)
        free(ctx->allocs[i]);
    free(ctx->allocs);
    ctx->allocs = NULL;
    ctx->nallocs = ctx->capallocs = 0;
    cli_conn_close(ctx->conn);
    ctx->conn = NULL;
    free(ctx->currency);
    ctx->currency = NULL;
}

int cli_parse_i64(const char *s, int64_t *out)
{
    char *end;
    long long v;

    if (s == NULL || *s == '\0' || *s == ' ' || *s == '+')
        return -1;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno != 0 || *end != '\0')
        return -1;
    *out = (int64_t)v;
    return 0;
}

void cli_print_group_usage(FILE *f, const char *group)
{
    size_t glen = strlen(group);
    int first = 1;

    for (const cli_command *c = cli_commands; c->words; c++) {
        if (strncmp(c->words, group, glen) != 0 || (c->words[glen] != '\0' && c->words[glen] != ' '))
            continue;
        fprintf(f, "%s keygate [options] %s%s%s\n", first ? "usage:" : "      ",
                c->words, c->synopsis[0] ? " " : "", c->synopsis);
        first = 0;
    }
}

static void group_of(const cli_ctx *ctx, char *out, size_t outlen)
{
    const char *w = ctx->cmd ? ctx->cmd->words : "";
    size_t n = strcspn(w, " ");

    if (n >= outlen)
        n = outlen - 1;
    memcpy(out, w, n);
    out[n] = '\0';
}

int cli_usage_error(cli_ctx *ctx, const char *fmt, ...)
{
    char group[64];
    va_list ap;

    fputs("error: usage: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    group_of(ctx, group, sizeof group);
    if (group[0])
        cli_print_group_usage(stderr, group);
    fputs("(keygate help: all commands and global options)\n", stderr);
    ctx->status = CLI_EXIT_USAGE;
    return CLI_EXIT_USAGE;
}

/* Splits "--name=value" into the option name (copied into buf) and value. */
static const char *split_eq(const char *arg, char *buf, size_t buflen, const char **value)
{
    const char *eq = strchr(arg, '=');

    *value = NULL;
    if (eq == NULL || (size_t)(eq - arg) >= buflen)
        return arg;
    memcpy(buf, arg, (size_t)(eq - arg));
    buf[eq - arg] = '\0';
    *value = eq + 1;
    return buf;
}

/* Fetches an option's value: the "=value" part or the next argument. */
static int opt_value(cli_ctx *ctx, int argc, char **argv, int *i, const char *name,
                     const char *inline_value, const char **out)
{
    if (inline_value != NULL) {
        *out = inline_value;
        return 0;
    }
    if (*i + 1 >= argc) {
        cli_usage_error(ctx, "%s needs a value", name);
        return -1;
    }
    *out = argv[++*i];
    return 0;
}

int cli_global_opt(cli_ctx *ctx, int argc, char **argv, int *i)
{
    char buf[32];
    const char *iv, *v;
    const char *name = split_eq(argv[*i], buf, sizeof buf, &iv);

    if (strcmp(name, "--json") == 0 && iv == NULL) {
        ctx->json = 1;
        return 1;
    }
    if (strcmp(name, "--socket") == 0) {
        if (opt_value(ctx, argc, argv, i, name, iv, &v) < 0)
            return -1;
        ctx->socket_path = v;
        return 1;
    }
    if (strcmp(name, "--config") == 0) {
        if (opt_value(ctx, argc, argv, i, name, iv, &v) < 0)
            return -1;
        ctx->config_path = v;
        return 1;
    }
    if (strcmp(name, "--actor") == 0) {
        if (opt_value(ctx, argc, argv, i, name, iv, &v) < 0)
            return -1;
        ctx->actor = v[0] ? v : NULL;
        return 1;
    }
    if (strcmp(name, "--timeout") == 0) {
        char *end;
        double s;
        if (opt_value(ctx, argc, argv, i, name, iv, &v) < 0)
            return -1;
        errno = 0;
        s = strtod(v, &end);
        if (errno != 0 || end == v || *end != '\0' || !(s > 0) || s > 86400) {
            cli_usage_error(ctx, "--timeout wants seconds (0 < SEC <= 86400), not '%s'", v);
            return -1;
        }
        ctx->timeout_ms = (int)(s * 1000 + 0.5) > 0 ? (int)(s * 1000 + 0.5) : 1;
        return 1;
    }
    return 0;
}

int cli_args(cli_ctx *ctx, int argc, char **argv, const cli_opt *opts,
             cli_strlist *pos, int minpos, int maxpos)
{
    int only_pos = 0;

    /* Lists can never hold more than argc entries: size them once. */
    pos->v = cli_alloc(ctx, (size_t)argc + 1, sizeof *pos->v);
    pos->n = 0;
    for (const cli_opt *o = opts; o && o->name; o++) {
        if (o->kind == CLI_OPT_LIST) {
            cli_strlist *l = o->dest;
            l->v = cli_alloc(ctx, (size_t)argc + 1, sizeof *l->v);
            l->n = 0;
        }
    }

    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const cli_opt *o;
        char buf[64];
        const char *iv, *name, *v;
        int g;

        if (only_pos || a[0] != '-' || a[1] == '\0' ||
            (a[1] >= '0' && a[1] <= '9')) {          /* "-" and negative numbers */
            pos->v[pos->n++] = a;
            continue;
        }
        if (strcmp(a, "--") == 0) {
            only_pos = 1;
            continue;
        }
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            char group[64];
            group_of(ctx, group, sizeof group);
            cli_print_group_usage(stdout, group);
            ctx->status = CLI_EXIT_OK;
            return -1;
        }
        g = cli_global_opt(ctx, argc, argv, &i);
        if (g < 0)
            return -1;
        if (g > 0)
            continue;

        name = split_eq(a, buf, sizeof buf, &iv);
        for (o = opts; o && o->name; o++)
            if (strcmp(o->name, name) == 0)
                break;
        if (o == NULL || o->name == NULL) {
            cli_usage_error(ctx, "unknown option %s", name);
            return -1;
        }
        if (o->kind == CLI_OPT_FLAG) {
            if (iv != NULL) {
                cli_usage_error(ctx, "%s takes no value", name);
                return -1;
            }
            *(int *)o->dest = 1;
            continue;
        }
        if (opt_value(ctx, argc, argv, &i, name, iv, &v) < 0)
            return -1;
        if (o->kind == CLI_OPT_VALUE) {
            *(const char **)o->dest = v;
        } else {
            cli_strlist *l = o->dest;
            l->v[l->n++] = v;
        }
    }

    if (pos->n < minpos) {
        cli_usage_error(ctx, "missing argument%s: keygate %s %s", minpos - pos->n > 1 ? "s" : "",
                        ctx->cmd ? ctx->cmd->words : "", ctx->cmd ? ctx->cmd->synopsis : "");
        return -1;
    }
    if (maxpos >= 0 && pos->n > maxpos) {
        cli_usage_error(ctx, "unexpected argument '%s'", pos->v[maxpos]);
        return -1;
    }
    return 0;
}

int cli_service_spec(json_t *services, const char *spec, char *err, size_t errlen)
{
    const char *eq = strchr(spec, '=');
    char id[256];
    const char *pol;
    json_t *policy;

    if (eq == NULL || eq == spec || (size_t)(eq - spec) >= sizeof id) {
        snprintf(err, errlen, "bad service spec '%s': want SERVICE=free or "
                 "SERVICE=payg:MODEL[,MODEL...]@WALLET", spec);
        return -1;
    }
    memcpy(id, spec, (size_t)(eq - spec));
    id[eq - spec] = '\0';
    if (json_object_get(services, id) != NULL) {
        snprintf(err, errlen, "service '%s' given twice", id);
        return -1;
    }
    pol = eq + 1;

    if (strcmp(pol, "free") == 0) {
        policy = json_pack("{s:s}", "policy", "free");
    } else if (strncmp(pol, "payg:", 5) == 0) {
        const char *models = pol + 5;
        const char *at = strrchr(models, '@');
        json_t *list;
        const char *p;

        if (at == NULL || at == models || at[1] == '\0') {
            snprintf(err, errlen, "bad service spec '%s': payg needs models and a wallet: "
                     "%s=payg:MODEL[,MODEL...]@WALLET", spec, id);
            return -1;
        }
        list = json_array();
        for (p = models; p < at;) {
            size_t n = strcspn(p, ",@");
            if (n == 0) {
                json_decref(list);
                snprintf(err, errlen, "bad service spec '%s': empty model name", spec);
                return -1;
            }
            json_array_append_new(list, json_stringn(p, n));
            p += n;
            if (*p == ',')
                p++;
            if (p == at && p[-1] == ',') {
                json_decref(list);
                snprintf(err, errlen, "bad service spec '%s': empty model name", spec);
                return -1;
            }
        }
        policy = json_pack("{s:s,s:o,s:s}", "policy", "payg", "models", list, "wallet", at + 1);
    } else {
        snprintf(err, errlen, "bad service spec '%s': the policy is 'free' or "
                 "'payg:MODEL[,MODEL...]@WALLET'", spec);
        return -1;
    }
    if (policy == NULL || json_object_set_new(services, id, policy) < 0) {
        snprintf(err, errlen, "bad service spec '%s' (not UTF-8?)", spec);
        return -1;
    }
    return 0;
}

int cli_param_spec(json_t *params, const char *spec, char *err, size_t errlen)
{
    const char *eq = strchr(spec, '=');
    char name[256];
    int64_t v;

    if (eq == NULL || eq == spec || (size_t)(eq - spec) >= sizeof name) {
        snprintf(err, errlen, "bad parameter '%s': want NAME=INTEGER", spec);
        return -1;
    }
    memcpy(name, spec, (size_t)(eq - spec));
    name[eq - spec] = '\0';
    if (cli_parse_i64(eq + 1, &v) < 0) {
        snprintf(err, errlen, "bad parameter '%s': '%s' is not a 64-bit integer", spec, eq + 1);
        return -1;
    }
    if (json_object_get(params, name) != NULL) {
        snprintf(err, errlen, "parameter '%s' given twice", name);
        return -1;
    }
    if (json_object_set_new(params, name, json_integer(v)) < 0) {
        snprintf(err, errlen, "bad parameter name '%s' (not UTF-8?)", name);
        return -1;
    }
    return 0;
}

/* Adds an integer option's value to args; -1 (usage printed) if it is not one. */
int cli_add_int(cli_ctx *ctx, json_t *args, const char *opt, const char *field, const char *v)
{
    int64_t n;

    if (v == NULL)
        return 0;
    if (cli_parse_i64(v, &n) < 0) {
        cli_usage_error(ctx, "%s wants an integer, not '%s'", opt, v);
        return -1;
    }
    json_object_set_new(args, field, json_integer(n));
    return 0;
}
