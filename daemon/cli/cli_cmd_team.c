/*
 * cli_cmd_team.c - keygate ping, signup, team ..., notifications, audit,
 * and the raw `call` escape hatch.
 */
#include "cli.h"
#include "cli_print.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sodium.h>
#include <unistd.h>

/* Adds "limit" to args from a --limit value; -1 (usage printed) if bad. */
static int add_limit(cli_ctx *ctx, json_t *args, const char *limit)
{
    int64_t n;

    if (limit == NULL)
        return 0;
    if (cli_parse_i64(limit, &n) < 0) {
        cli_usage_error(ctx, "--limit wants an integer, not '%s'", limit);
        return -1;
    }
    json_object_set_new(args, "limit", json_integer(n));
    return 0;
}

/* --- ping, signup ---------------------------------------------------------- */

static void print_pong(cli_ctx *ctx, json_t *result)
{
    (void)ctx;
    (void)result;
    puts("pong");
}

int cli_cmd_ping(cli_ctx *ctx, int argc, char **argv)
{
    return cli_call_by_id(ctx, argc, argv, "ping", NULL, print_pong);
}

static void print_signup(cli_ctx *ctx, json_t *r)
{
    (void)ctx;
    cli_field("user_id", "%s", cli_jstr(r, "user_id", "-"));
    cli_field("team_id", "%s", cli_jstr(r, "team_id", "-"));
    cli_field("free_key_id", "%s", cli_jstr(r, "free_key_id", "-"));
    printf("act as this user with: export KEYGATE_ACTOR=%s\n", cli_jstr(r, "user_id", "-"));
}

int cli_cmd_signup(cli_ctx *ctx, int argc, char **argv)
{
    const char *email = NULL, *name = NULL, *team = NULL;
    const cli_opt opts[] = {
        {"--email", CLI_OPT_VALUE, &email},
        {"--name", CLI_OPT_VALUE, &name},
        {"--team-name", CLI_OPT_VALUE, &team},
        {NULL, 0, NULL},
    };
    cli_strlist pos;
    json_t *args, *res;
    int rc;

    if (cli_args(ctx, argc, argv, opts, &pos, 0, 0) < 0)
        return ctx->status;
    if (email == NULL || name == NULL)
        return cli_usage_error(ctx, "signup needs --email and --name");
    args = json_pack("{s:s,s:s,s:s*}", "email", email, "name", name, "team_name", team);
    rc = cli_call(ctx, "user.signup", args, 0, &res);
    return rc ? rc : cli_emit(ctx, res, print_signup);
}

/* --- team ------------------------------------------------------------------ */

static void print_member(cli_ctx *ctx, json_t *m)
{
    (void)ctx;
    cli_field("user_id", "%s", cli_jstr(m, "user_id", "-"));
    cli_field("role", "%s", cli_jstr(m, "role", "-"));
    cli_field("email", "%s", cli_jstr(m, "email", "-"));
    cli_field("name", "%s", cli_jstr(m, "name", "-"));
}

static void print_team(cli_ctx *ctx, json_t *t)
{
    char tb[CLI_TIME_MAX];
    json_t *members = json_object_get(t, "members"), *m;
    cli_table *tab;
    size_t i;

    (void)ctx;
    cli_field("team_id", "%s", cli_jstr(t, "team_id", "-"));
    cli_field("name", "%s", cli_jstr(t, "name", "-"));
    cli_field("free_key", "%s", cli_jstr(t, "free_key_id", "-"));
    cli_field("created", "%s", cli_time(tb, sizeof tb, json_object_get(t, "created_at")));
    cli_field("members", "%zu", json_array_size(members));
    tab = cli_table_new(4, "USER_ID", "ROLE", "EMAIL", "NAME");
    json_array_foreach(members, i, m)
        cli_table_row(tab, cli_jstr(m, "user_id", "-"), cli_jstr(m, "role", "-"),
                      cli_jstr(m, "email", "-"), cli_jstr(m, "name", "-"));
    if (json_array_size(members) > 0)
        cli_table_print(tab, 2);
    cli_table_free(tab);
}

int cli_cmd_team_get(cli_ctx *ctx, int argc, char **argv)
{
    return cli_call_by_id(ctx, argc, argv, "team.get", "team", print_team);
}

int cli_cmd_member_add(cli_ctx *ctx, int argc, char **argv)
{
    const char *user = NULL, *email = NULL, *role = NULL;
    const cli_opt opts[] = {
        {"--user", CLI_OPT_VALUE, &user},
        {"--email", CLI_OPT_VALUE, &email},
        {"--role", CLI_OPT_VALUE, &role},
        {NULL, 0, NULL},
    };
    cli_strlist pos;
    json_t *args, *res;
    int rc;

    if (cli_args(ctx, argc, argv, opts, &pos, 1, 1) < 0)
        return ctx->status;
    if ((user == NULL) == (email == NULL))
        return cli_usage_error(ctx, "give exactly one of --user USER_ID or --email EMAIL");
    if (role == NULL)
        return cli_usage_error(ctx, "--role admin|user is required");
    args = json_pack("{s:s,s:s,s:s}", "team", pos.v[0], "role", role,
                     user ? "user" : "email", user ? user : email);
    rc = cli_call(ctx, "team.member.add", args, 1, &res);
    return rc ? rc : cli_emit(ctx, res, print_member);
}

int cli_cmd_member_set_role(cli_ctx *ctx, int argc, char **argv)
{
    cli_strlist pos;
    json_t *res;
    int rc;

    if (cli_args(ctx, argc, argv, NULL, &pos, 3, 3) < 0)
        return ctx->status;
    rc = cli_call(ctx, "team.member.set_role",
                  json_pack("{s:s,s:s,s:s}", "team", pos.v[0], "user", pos.v[1], "role", pos.v[2]),
                  1, &res);
    return rc ? rc : cli_emit(ctx, res, print_member);
}

static void print_removed(cli_ctx *ctx, json_t *r)
{
    (void)ctx;
    (void)r;
    puts("removed (their tokens on the team's keys no longer work)");
}

int cli_cmd_member_remove(cli_ctx *ctx, int argc, char **argv)
{
    cli_strlist pos;
    json_t *res;
    int rc;

    if (cli_args(ctx, argc, argv, NULL, &pos, 2, 2) < 0)
        return ctx->status;
    rc = cli_call(ctx, "team.member.remove",
                  json_pack("{s:s,s:s}", "team", pos.v[0], "user", pos.v[1]), 1, &res);
    return rc ? rc : cli_emit(ctx, res, print_removed);
}

int cli_cmd_team_transfer(cli_ctx *ctx, int argc, char **argv)
{
    cli_strlist pos;
    json_t *res;
    int rc;

    if (cli_args(ctx, argc, argv, NULL, &pos, 2, 2) < 0)
        return ctx->status;
    rc = cli_call(ctx, "team.transfer_ownership",
                  json_pack("{s:s,s:s}", "team", pos.v[0], "user", pos.v[1]), 1, &res);
    return rc ? rc : cli_emit(ctx, res, print_team);
}

/* --- notifications, audit -------------------------------------------------- */

static void print_notifications(cli_ctx *ctx, json_t *r)
{
    json_t *list = json_object_get(r, "notifications"), *n;
    cli_table *t;
    size_t i;

    (void)ctx;
    if (json_array_size(list) == 0) {
        puts("no notifications");
        return;
    }
    t = cli_table_new(6, "AT", "TYPE", "KEY_ID", "KEY_NAME", "TEAM_ID", "BY");
    json_array_foreach(list, i, n) {
        char tb[CLI_TIME_MAX];
        cli_table_row(t, cli_time(tb, sizeof tb, json_object_get(n, "at")),
                      cli_jstr(n, "type", "-"), cli_jstr(n, "key_id", "-"),
                      cli_jstr(n, "key_name", "-"), cli_jstr(n, "team_id", "-"),
                      cli_jstr(n, "by", "-"));
    }
    cli_table_print(t, 0);
    cli_table_free(t);
}

int cli_cmd_notifications(cli_ctx *ctx, int argc, char **argv)
{
    const char *limit = NULL, *cursor = NULL;
    int all = 0;
    const cli_opt opts[] = {{"--limit", CLI_OPT_VALUE, &limit}, {"--cursor", CLI_OPT_VALUE, &cursor},
                            {"--all", CLI_OPT_FLAG, &all}, {NULL, 0, NULL}};
    cli_strlist pos;
    json_t *args, *res;
    int rc;

    if (cli_args(ctx, argc, argv, opts, &pos, 0, 0) < 0)
        return ctx->status;
    args = json_pack("{s:s*}", "cursor", cursor);
    if (args && add_limit(ctx, args, limit) < 0) {
        json_decref(args);
        return ctx->status;
    }
    rc = cli_call_pages(ctx, "notification.list", args, "notifications", all, &res);
    return rc ? rc : cli_emit_page(ctx, res, print_notifications);
}

static void print_audit(cli_ctx *ctx, json_t *r)
{
    json_t *list = json_object_get(r, "entries"), *e;
    cli_table *t;
    size_t i;

    (void)ctx;
    if (json_array_size(list) == 0) {
        puts("no audit entries");
        return;
    }
    t = cli_table_new(6, "AT", "ACTOR", "PEER", "CMD", "TARGET", "OUTCOME");
    json_array_foreach(list, i, e) {
        char tb[CLI_TIME_MAX], peer[64];
        snprintf(peer, sizeof peer, "uid %s pid %s", cli_jstr(e, "peer_uid", "?"),
                 cli_jstr(e, "peer_pid", "?"));
        cli_table_row(t, cli_time(tb, sizeof tb, json_object_get(e, "at")),
                      cli_jstr(e, "actor", "-"), peer, cli_jstr(e, "cmd", "-"),
                      cli_jstr(e, "target", "-"), cli_jstr(e, "outcome", "-"));
    }
    cli_table_print(t, 0);
    cli_table_free(t);
}

int cli_cmd_audit(cli_ctx *ctx, int argc, char **argv)
{
    const char *limit = NULL, *cursor = NULL;
    int all = 0;
    const cli_opt opts[] = {{"--limit", CLI_OPT_VALUE, &limit}, {"--cursor", CLI_OPT_VALUE, &cursor},
                            {"--all", CLI_OPT_FLAG, &all}, {NULL, 0, NULL}};
    cli_strlist pos;
    json_t *args, *res;
    int rc;

    if (cli_args(ctx, argc, argv, opts, &pos, 1, 1) < 0)
        return ctx->status;
    args = json_pack("{s:s,s:s*}", "team", pos.v[0], "cursor", cursor);
    if (args && add_limit(ctx, args, limit) < 0) {
        json_decref(args);
        return ctx->status;
    }
    rc = cli_call_pages(ctx, "audit.list", args, "entries", all, &res);
    return rc ? rc : cli_emit_page(ctx, res, print_audit);
}

/* --- call: any command, raw ------------------------------------------------ */

/* Human form of a raw result: indented JSON. Written with write(2) and
 * wiped, since a raw call may be token.generate. */
static void print_raw(cli_ctx *ctx, json_t *r)
{
    char *s = json_dumps(r, JSON_INDENT(2) | JSON_ENCODE_ANY);
    size_t n;

    (void)ctx;
    if (s == NULL)
        return;
    fflush(stdout);
    n = strlen(s);
    s[n] = '\n';   /* json_dumps' NUL becomes the line end... */
    if (write(STDOUT_FILENO, s, n + 1) < 0)
        fprintf(stderr, "error: output: %s\n", strerror(errno));
    sodium_memzero(s, n + 1);
    free(s);       /* ...which is fine: free does not look at it. */
}

int cli_cmd_call(cli_ctx *ctx, int argc, char **argv)
{
    cli_strlist pos;
    json_t *args, *res;
    json_error_t jerr;
    int rc;

    if (cli_args(ctx, argc, argv, NULL, &pos, 1, 2) < 0)
        return ctx->status;
    if (pos.n == 1) {
        args = json_object();
    } else {
        args = json_loads(pos.v[1], 0, &jerr);
        if (args == NULL)
            return cli_usage_error(ctx, "arguments are not JSON: %s", jerr.text);
        if (!json_is_object(args)) {
            json_decref(args);
            return cli_usage_error(ctx, "arguments must be a JSON object");
        }
    }
    rc = cli_call(ctx, pos.v[0], args, 1, &res);
    return rc ? rc : cli_emit(ctx, res, print_raw);
}
