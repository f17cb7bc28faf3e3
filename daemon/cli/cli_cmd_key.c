/*
 * cli_cmd_key.c - keygate service list, price estimate and key ...
 */
#include "cli.h"
#include "cli_print.h"

#include <inttypes.h>
#include <string.h>

/* --- catalog and prices ---------------------------------------------------- */

/* "100 micros + 40 micros per 1 audio_seconds + ..." */
static void price_text(char *buf, size_t len, json_t *price)
{
    json_t *per = json_object_get(price, "per"), *r;
    size_t used, i;

    snprintf(buf, len, "%s micros", cli_jstr(price, "base_micros", "0"));
    used = strlen(buf);
    json_array_foreach(per, i, r) {
        int n = snprintf(buf + used, len - used, " + %s micros per %s %s",
                         cli_jstr(r, "micros", "?"), cli_jstr(r, "units", "?"),
                         cli_jstr(r, "param", "?"));
        if (n < 0 || (size_t)n >= len - used)
            return;
        used += (size_t)n;
    }
}

static void print_services(cli_ctx *ctx, json_t *cat)
{
    json_t *services = json_object_get(cat, "services"), *s, *m;
    size_t i, j;

    (void)ctx;
    cli_field("currency", "%s", cli_jstr(cat, "currency", "-"));
    json_array_foreach(services, i, s) {
        json_t *quota = json_object_get(json_object_get(s, "free_quota"), "requests_per_day");
        char tier[96];
        cli_table *t;

        if (!json_is_true(json_object_get(s, "free")))
            snprintf(tier, sizeof tier, "paid: payg only");
        else if (json_is_integer(quota))
            snprintf(tier, sizeof tier, "free tier, %" JSON_INTEGER_FORMAT " requests/day per team",
                     json_integer_value(quota));
        else
            snprintf(tier, sizeof tier, "free tier");
        printf("\n%s  \"%s\"  (%s)\n", cli_jstr(s, "id", "-"), cli_jstr(s, "name", "-"), tier);
        t = cli_table_new(2, "MODEL", "PRICE PER REQUEST");
        json_array_foreach(json_object_get(s, "models"), j, m) {
            char pb[512];
            price_text(pb, sizeof pb, json_object_get(m, "price"));
            cli_table_row(t, cli_jstr(m, "id", "-"), pb);
        }
        cli_table_print(t, 2);
        cli_table_free(t);
    }
}

int cli_cmd_service_list(cli_ctx *ctx, int argc, char **argv)
{
    return cli_call_by_id(ctx, argc, argv, "service.list", NULL, print_services);
}

/* The request being estimated, for the printer (the result does not
 * repeat the service and model). */
static const char *est_service, *est_model;

static void print_estimate(cli_ctx *ctx, json_t *r)
{
    const char *cur = json_string_value(json_object_get(r, "currency"));
    json_t *lines = json_object_get(r, "breakdown"), *l;
    char mb[CLI_MONEY_MAX];
    cli_table *t;
    size_t i;

    (void)ctx;
    cli_field("service", "%s", est_service);
    cli_field("model", "%s", est_model);
    cli_field("cost", "%s", cli_money_json(mb, sizeof mb, json_object_get(r, "cost_micros"), cur));
    cli_field("base", "%s", cli_money_json(mb, sizeof mb, json_object_get(r, "base_micros"), cur));
    if (json_array_size(lines) == 0)
        return;
    t = cli_table_new(3, "PARAM", "QUANTITY", "SUBTOTAL");
    json_array_foreach(lines, i, l)
        cli_table_row(t, cli_jstr(l, "param", "-"), cli_jstr(l, "quantity", "-"),
                      cli_money_json(mb, sizeof mb, json_object_get(l, "subtotal_micros"), cur));
    cli_table_print(t, 2);
    cli_table_free(t);
}

int cli_cmd_price_estimate(cli_ctx *ctx, int argc, char **argv)
{
    cli_strlist pos;
    json_t *params, *res;
    char err[512];
    int rc;

    if (cli_args(ctx, argc, argv, NULL, &pos, 2, -1) < 0)
        return ctx->status;
    params = json_object();
    for (int i = 2; i < pos.n; i++) {
        if (cli_param_spec(params, pos.v[i], err, sizeof err) < 0) {
            json_decref(params);
            return cli_usage_error(ctx, "%s", err);
        }
    }
    est_service = pos.v[0];
    est_model = pos.v[1];
    rc = cli_call(ctx, "price.estimate",
                  json_pack("{s:s,s:s,s:o}", "service", pos.v[0], "model", pos.v[1],
                            "params", params), 0, &res);
    return rc ? rc : cli_emit(ctx, res, print_estimate);
}

/* --- keys ------------------------------------------------------------------ */

static void policy_text(char *buf, size_t len, json_t *p)
{
    const char *pol = cli_jstr(p, "policy", "?");

    if (strcmp(pol, "payg") == 0) {
        char models[512];
        snprintf(buf, len, "payg  models: %s  wallet: %s",
                 cli_join(models, sizeof models, json_object_get(p, "models"), ",", "-"),
                 cli_jstr(p, "wallet", "-"));
    } else {
        snprintf(buf, len, "%s", pol);
    }
}

static void print_key(cli_ctx *ctx, json_t *k)
{
    json_t *users = json_object_get(k, "users"), *tokens = json_object_get(k, "tokens");
    json_t *services = json_object_get(k, "services"), *notified, *u, *p;
    const char *sid;
    char tb[CLI_TIME_MAX];
    size_t i;

    cli_field("key_id", "%s", cli_jstr(k, "key_id", "-"));
    cli_field("name", "%s", cli_jstr(k, "name", "-"));
    cli_field("description", "%s", cli_jstr(k, "description", ""));
    cli_field("team_id", "%s", cli_jstr(k, "team_id", "-"));
    cli_field("kind", "%s", cli_jstr(k, "kind", "-"));
    cli_field("status", "%s", cli_jstr(k, "status", "-"));
    cli_field("created", "%s", cli_time(tb, sizeof tb, json_object_get(k, "created_at")));
    cli_field("updated", "%s", cli_time(tb, sizeof tb, json_object_get(k, "updated_at")));

    if (json_array_size(users) == 0) {
        cli_field("users", "none");
    } else {
        cli_table *t = cli_table_new(4, "USER_ID", "TOKEN", "TOKEN_ID", "SINCE");
        cli_field("users", "%zu", json_array_size(users));
        json_array_foreach(users, i, u) {
            const char *uid = json_is_string(u) ? json_string_value(u) : "?";
            json_t *tok = json_object_get(tokens, uid);
            if (json_is_object(tok))
                cli_table_row(t, uid, cli_jstr(tok, "hint", "-"), cli_jstr(tok, "token_id", "-"),
                              cli_time(tb, sizeof tb, json_object_get(tok, "created_at")));
            else
                cli_table_row(t, uid, "(no token)", "-", "-");
        }
        cli_table_print(t, 2);
        cli_table_free(t);
    }

    if (json_object_size(services) == 0) {
        cli_field("services", "none");
    } else {
        cli_table *t = cli_table_new(2, "SERVICE", "POLICY");
        cli_field("services", "%zu", json_object_size(services));
        json_object_foreach(services, sid, p) {
            char pb[768];
            policy_text(pb, sizeof pb, p);
            cli_table_row(t, sid, pb);
        }
        cli_table_print(t, 2);
        cli_table_free(t);
    }

    if (strcmp(cli_jstr(k, "kind", ""), "free") != 0)
        cli_print_limits(ctx, k);

    notified = json_object_get(k, "notified");
    if (json_is_array(notified)) {
        char nb[1024];
        cli_field("notified", "%s", cli_join(nb, sizeof nb, notified, ", ", "nobody"));
    }
}

static void print_key_list(cli_ctx *ctx, json_t *r)
{
    json_t *keys = json_object_get(r, "keys"), *k;
    cli_table *t;
    size_t i;

    (void)ctx;
    if (json_array_size(keys) == 0) {
        puts("no keys");
        return;
    }
    t = cli_table_new(7, "KEY_ID", "NAME", "KIND", "STATUS", "USERS", "TOKENS", "SERVICES");
    json_array_foreach(keys, i, k) {
        json_t *services = json_object_get(k, "services"), *p;
        char users[16], tokens[16], svc[1024];
        const char *sid;
        size_t used = 0;

        snprintf(users, sizeof users, "%zu", json_array_size(json_object_get(k, "users")));
        snprintf(tokens, sizeof tokens, "%zu", json_object_size(json_object_get(k, "tokens")));
        svc[0] = '\0';
        json_object_foreach(services, sid, p) {
            int n = snprintf(svc + used, sizeof svc - used, "%s%s(%s)", used ? " " : "",
                             sid, cli_jstr(p, "policy", "?"));
            if (n < 0 || (size_t)n >= sizeof svc - used)
                break;
            used += (size_t)n;
        }
        cli_table_row(t, cli_jstr(k, "key_id", "-"), cli_jstr(k, "name", "-"),
                      cli_jstr(k, "kind", "-"), cli_jstr(k, "status", "-"), users, tokens,
                      used ? svc : "-");
    }
    cli_table_print(t, 0);
    cli_table_free(t);
}

/* Builds the services object from specs; -1 (usage printed) if one is bad. */
static json_t *services_from_specs(cli_ctx *ctx, const char **specs, int n)
{
    json_t *services = json_object();
    char err[512];

    for (int i = 0; i < n; i++) {
        if (cli_service_spec(services, specs[i], err, sizeof err) < 0) {
            json_decref(services);
            cli_usage_error(ctx, "%s", err);
            return NULL;
        }
    }
    return services;
}

static json_t *string_array(const char **v, int n)
{
    json_t *a = json_array();

    for (int i = 0; i < n; i++)
        if (json_array_append_new(a, json_string(v[i])) < 0) {
            json_decref(a);
            return NULL;
        }
    return a;
}

int cli_cmd_key_create(cli_ctx *ctx, int argc, char **argv)
{
    const char *name = NULL, *desc = NULL;
    cli_strlist users, specs, pos;
    const cli_opt opts[] = {
        {"--name", CLI_OPT_VALUE, &name},
        {"--description", CLI_OPT_VALUE, &desc},
        {"--user", CLI_OPT_LIST, &users},
        {"--service", CLI_OPT_LIST, &specs},
        {NULL, 0, NULL},
    };
    json_t *args, *res;
    int rc;

    if (cli_args(ctx, argc, argv, opts, &pos, 1, 1) < 0)
        return ctx->status;
    if (name == NULL)
        return cli_usage_error(ctx, "key create needs --name");
    args = json_pack("{s:s,s:s,s:s*}", "team", pos.v[0], "name", name, "description", desc);
    if (args && users.n > 0) {
        json_t *a = string_array(users.v, users.n);
        if (a == NULL || json_object_set_new(args, "users", a) < 0) {
            json_decref(args);
            args = NULL;
        }
    }
    if (args && specs.n > 0) {
        json_t *s = services_from_specs(ctx, specs.v, specs.n);
        if (s == NULL) {
            json_decref(args);
            return ctx->status;
        }
        json_object_set_new(args, "services", s);
    }
    rc = cli_call(ctx, "key.create", args, 1, &res);
    return rc ? rc : cli_emit(ctx, res, print_key);
}

/* Every key, as before paging: follows the pages (1000 keys each). */
int cli_cmd_key_list(cli_ctx *ctx, int argc, char **argv)
{
    cli_strlist pos;
    json_t *res;
    int rc;

    if (cli_args(ctx, argc, argv, NULL, &pos, 1, 1) < 0)
        return ctx->status;
    rc = cli_call_pages(ctx, "key.list", json_pack("{s:s,s:i}", "team", pos.v[0], "limit", 1000),
                        "keys", 1, &res);
    return rc ? rc : cli_emit(ctx, res, print_key_list);
}

int cli_cmd_key_get(cli_ctx *ctx, int argc, char **argv)
{
    return cli_call_by_id(ctx, argc, argv, "key.get", "key", print_key);
}

int cli_cmd_key_update(cli_ctx *ctx, int argc, char **argv)
{
    const char *name = NULL, *desc = NULL, *expires = NULL, *bday = NULL, *bmonth = NULL;
    cli_strlist rates;
    const cli_opt opts[] = {
        {"--name", CLI_OPT_VALUE, &name},
        {"--description", CLI_OPT_VALUE, &desc},
        {"--expires-at", CLI_OPT_VALUE, &expires},
        {"--budget-day", CLI_OPT_VALUE, &bday},
        {"--budget-month", CLI_OPT_VALUE, &bmonth},
        {"--rate-limit", CLI_OPT_LIST, &rates},
        {NULL, 0, NULL},
    };
    cli_strlist pos;
    json_t *args, *res;
    char err[512];
    int rc;

    if (cli_args(ctx, argc, argv, opts, &pos, 1, 1) < 0)
        return ctx->status;
    if (name == NULL && desc == NULL && expires == NULL && bday == NULL && bmonth == NULL &&
        rates.n == 0)
        return cli_usage_error(ctx, "nothing to change: give --name, --description, --expires-at, "
                               "--budget-day, --budget-month or --rate-limit");
    args = json_pack("{s:s,s:s*,s:s*}", "key", pos.v[0], "name", name, "description", desc);
    if (args && cli_limit_args(args, expires, bday, bmonth, &rates, err, sizeof err) < 0) {
        json_decref(args);
        return cli_usage_error(ctx, "%s", err);
    }
    rc = cli_call(ctx, "key.update", args, 1, &res);
    return rc ? rc : cli_emit(ctx, res, print_key);
}

int cli_cmd_key_users(cli_ctx *ctx, int argc, char **argv)
{
    int notify = 0, none = 0;
    const cli_opt opts[] = {
        {"--notify", CLI_OPT_FLAG, &notify},
        {"--none", CLI_OPT_FLAG, &none},
        {NULL, 0, NULL},
    };
    cli_strlist pos;
    json_t *users, *res;
    int rc;

    if (cli_args(ctx, argc, argv, opts, &pos, 1, -1) < 0)
        return ctx->status;
    /* The list replaces the key's users: an empty list only on purpose. */
    if (pos.n == 1 && !none)
        return cli_usage_error(ctx, "give the key's users (the list replaces them), "
                               "or --none to unassign everyone");
    if (pos.n > 1 && none)
        return cli_usage_error(ctx, "--none and a list of users do not go together");
    users = string_array(pos.v + 1, pos.n - 1);
    rc = cli_call(ctx, "key.users.set",
                  users ? json_pack("{s:s,s:o,s:b}", "key", pos.v[0], "users", users,
                                    "notify", notify) : NULL,
                  1, &res);
    return rc ? rc : cli_emit(ctx, res, print_key);
}

int cli_cmd_key_services(cli_ctx *ctx, int argc, char **argv)
{
    int none = 0;
    const cli_opt opts[] = {{"--none", CLI_OPT_FLAG, &none}, {NULL, 0, NULL}};
    cli_strlist pos;
    json_t *services, *res;
    int rc;

    if (cli_args(ctx, argc, argv, opts, &pos, 1, -1) < 0)
        return ctx->status;
    if (pos.n == 1 && !none)
        return cli_usage_error(ctx, "give the key's services (the list replaces them), "
                               "or --none to disable every service");
    if (pos.n > 1 && none)
        return cli_usage_error(ctx, "--none and a list of services do not go together");
    services = services_from_specs(ctx, pos.v + 1, pos.n - 1);
    if (services == NULL)
        return ctx->status;
    rc = cli_call(ctx, "key.services.set",
                  json_pack("{s:s,s:o}", "key", pos.v[0], "services", services), 1, &res);
    return rc ? rc : cli_emit(ctx, res, print_key);
}

int cli_cmd_key_revoke(cli_ctx *ctx, int argc, char **argv)
{
    return cli_call_by_id(ctx, argc, argv, "key.revoke", "key", print_key);
}
