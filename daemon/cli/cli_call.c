/*
 * cli_call.c - sending one admin command and handing back its result:
 * where the socket is, the envelope, error printing and exit codes.
 */
#include "cli.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sodium.h>
#include <unistd.h>

#include "kgc_config.h"

/* The socket path: --socket or KEYGATE_SOCKET (main put it in ctx), else
 * the `socket` line of --config / KEYGATE_CONFIG, else the default. */
static int resolve_socket(cli_ctx *ctx, const char **path, char *err, size_t errlen)
{
    static kgc_config cfg;   /* one per run; its socket_path is handed out */

    if (ctx->socket_path != NULL) {
        *path = ctx->socket_path;
        return 0;
    }
    if (ctx->config_path != NULL) {
        char cerr[512];
        if (kgc_config_load(ctx->config_path, &cfg, cerr, sizeof cerr) < 0) {
            snprintf(err, errlen, "%s", cerr);
            return -1;
        }
        if (cfg.socket_path[0] == '\0') {
            snprintf(err, errlen, "%s has no 'socket' line", ctx->config_path);
            return -1;
        }
        *path = cfg.socket_path;
        return 0;
    }
    *path = CLI_DEFAULT_SOCKET;
    return 0;
}

/* One round trip; prints nothing. Returns 0 with *ans (the whole answer
 * object), or an exit code with the reason in err. */
static int call_raw(cli_ctx *ctx, const char *cmd, json_t *args, int with_actor,
                    json_t **ans, char *err, size_t errlen)
{
    json_t *req = args;

    *ans = NULL;
    if (req == NULL || !json_is_object(req)) {
        json_decref(req);
        /* json_pack and json_string fail on text that is not UTF-8. */
        snprintf(err, errlen, "the arguments of %s are not valid UTF-8 text", cmd);
        return CLI_EXIT_USAGE;
    }
    if (ctx->conn == NULL) {
        const char *path;
        char cerr[512];
        if (resolve_socket(ctx, &path, err, errlen) < 0) {
            json_decref(req);
            return CLI_EXIT_USAGE;
        }
        ctx->conn = cli_conn_open(path, ctx->timeout_ms, cerr, sizeof cerr);
        if (ctx->conn == NULL) {
            snprintf(err, errlen, "%s", cerr);
            json_decref(req);
            return CLI_EXIT_UNREACHABLE;
        }
    }
    json_object_set_new(req, "cmd", json_string(cmd));
    if (with_actor && ctx->actor != NULL && json_object_get(req, "actor") == NULL)
        json_object_set_new(req, "actor", json_string(ctx->actor));
    *ans = cli_conn_roundtrip(ctx->conn, req, err, errlen);
    json_decref(req);
    return *ans ? CLI_EXIT_OK : CLI_EXIT_UNREACHABLE;
}

int cli_call_quiet(cli_ctx *ctx, const char *cmd, json_t *args, int with_actor,
                   json_t **result, json_t **error)
{
    char err[600];
    json_t *ans;
    int rc = call_raw(ctx, cmd, args, with_actor, &ans, err, sizeof err);

    *result = NULL;
    if (error)
        *error = NULL;
    if (rc != CLI_EXIT_OK) {
        fprintf(stderr, "error: %s: %s\n",
                rc == CLI_EXIT_USAGE ? "usage" : "unreachable", err);
        return rc;
    }
    if (json_is_true(json_object_get(ans, "ok"))) {
        json_t *r = json_object_get(ans, "result");
        *result = r ? json_incref(r) : json_object();
        json_decref(ans);
        return CLI_EXIT_OK;
    }
    {
        json_t *e = json_object_get(ans, "error");
        const char *code = json_string_value(json_object_get(e, "code"));

        /* Its own status: a script may retry `unavailable` (the store could
         * not be reached or answered; see protocol.md for whether the
         * change may have been made), never another refusal. */
        rc = code != NULL && strcmp(code, "unavailable") == 0 ? CLI_EXIT_UNAVAILABLE
                                                              : CLI_EXIT_REFUSED;
        if (error)
            *error = json_is_object(e) ? json_incref(e) : json_object();
    }
    json_decref(ans);
    return rc;
}

int cli_call(cli_ctx *ctx, const char *cmd, json_t *args, int with_actor, json_t **result)
{
    json_t *error;
    int rc = cli_call_quiet(ctx, cmd, args, with_actor, result, &error);

    if (rc == CLI_EXIT_REFUSED || rc == CLI_EXIT_UNAVAILABLE) {
        const char *code = json_string_value(json_object_get(error, "code"));
        const char *msg = json_string_value(json_object_get(error, "message"));

        fprintf(stderr, "error: %s: %s\n", code ? code : "unknown", msg ? msg : "(no message)");
        if (code && strcmp(code, "unauthenticated") == 0 && ctx->actor == NULL)
            fputs("hint: say who you act as with --actor USER_ID or KEYGATE_ACTOR\n", stderr);
        json_decref(error);
    }
    return rc;
}

int cli_call_pages(cli_ctx *ctx, const char *cmd, json_t *args, const char *field, int all,
                   json_t **result)
{
    json_t *items = NULL, *page;
    int rc;

    if (args == NULL)
        return cli_call(ctx, cmd, NULL, 1, result);
    for (;;) {
        const char *next;

        rc = cli_call(ctx, cmd, json_deep_copy(args), 1, &page);
        if (rc != CLI_EXIT_OK) {
            json_decref(items);
            json_decref(args);
            return rc;
        }
        if (items != NULL) {
            json_array_extend(items, json_object_get(page, field));
            json_object_set(page, field, items);
            json_decref(items);
        }
        next = json_string_value(json_object_get(page, "next_cursor"));
        if (!all || next == NULL)
            break;
        json_object_set_new(args, "cursor", json_string(next));
        items = json_incref(json_object_get(page, field));
        json_decref(page);
    }
    if (all)
        json_object_del(page, "next_cursor");
    json_decref(args);
    *result = page;
    return CLI_EXIT_OK;
}

int cli_emit_page(cli_ctx *ctx, json_t *result, cli_printer printer)
{
    const char *next = json_string_value(json_object_get(result, "next_cursor"));

    if (next != NULL && !ctx->json)
        fprintf(stderr, "more: add --cursor %s (or --all)\n", next);
    return cli_emit(ctx, result, printer);
}

int cli_write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int cli_write_json_line(json_t *v)
{
    char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    size_t n;
    int rc;

    if (s == NULL)
        return -1;
    fflush(stdout);
    n = strlen(s);
    rc = cli_write_all(STDOUT_FILENO, s, n);
    if (rc == 0)
        rc = cli_write_all(STDOUT_FILENO, "\n", 1);
    sodium_memzero(s, n);
    free(s);
    return rc;
}

int cli_emit(cli_ctx *ctx, json_t *result, cli_printer printer)
{
    if (ctx->json) {
        if (cli_write_json_line(result) < 0)
            fprintf(stderr, "error: output: %s\n", strerror(errno));
    } else {
        printer(ctx, result);
    }
    json_decref(result);
    return CLI_EXIT_OK;
}

const char *cli_currency(cli_ctx *ctx)
{
    char err[600];
    json_t *ans, *cur;

    if (ctx->currency_tried)
        return ctx->currency;
    ctx->currency_tried = 1;
    if (call_raw(ctx, "service.list", json_object(), 0, &ans, err, sizeof err) != CLI_EXIT_OK)
        return NULL;
    cur = json_object_get(json_object_get(ans, "result"), "currency");
    if (json_is_true(json_object_get(ans, "ok")) && json_is_string(cur))
        ctx->currency = strdup(json_string_value(cur));
    json_decref(ans);
    return ctx->currency;
}

int cli_call_by_id(cli_ctx *ctx, int argc, char **argv, const char *cmd, const char *field,
                   cli_printer print)
{
    cli_strlist pos;
    json_t *res;
    int rc;

    int n = field != NULL;

    if (cli_args(ctx, argc, argv, NULL, &pos, n, n) < 0)
        return ctx->status;
    rc = cli_call(ctx, cmd, n ? json_pack("{s:s}", field, pos.v[0]) : json_object(), n, &res);
    return rc ? rc : cli_emit(ctx, res, print);
}
