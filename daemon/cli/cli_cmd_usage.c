/*
 * cli_cmd_usage.c - keygate usage: usage.summary as a table, one row per
 * bucket (UTC day or hour), then the total.
 */
#include "cli.h"
#include "cli_print.h"

#include <stdio.h>
#include <string.h>

/* "input_tokens=1200 output_tokens=300", sorted as jansson keeps them. */
static void params_text(char *buf, size_t len, json_t *params)
{
    const char *name;
    json_t *v;
    size_t off = 0;

    buf[0] = '\0';
    json_object_foreach(params, name, v) {
        int n = snprintf(buf + off, len - off, "%s%s=%lld", off ? " " : "", name,
                         (long long)json_integer_value(v));
        if (n < 0 || (size_t)n >= len - off)
            break;
        off += (size_t)n;
    }
}

static void usage_row(cli_ctx *ctx, cli_table *t, const char *label, json_t *b)
{
    char req[24], cost[CLI_MONEY_MAX], par[512];

    snprintf(req, sizeof req, "%lld", (long long)json_integer_value(json_object_get(b, "requests")));
    params_text(par, sizeof par, json_object_get(b, "params"));
    cli_table_row(t, label, req, cli_money_json(cost, sizeof cost, json_object_get(b, "cost_micros"),
                                                cli_currency(ctx)), par[0] ? par : "-");
}

static void print_usage(cli_ctx *ctx, json_t *r)
{
    json_t *list = json_object_get(r, "buckets"), *b;
    cli_table *t = cli_table_new(4, "BUCKET (UTC)", "REQUESTS", "COST", "PARAMS");
    size_t i;

    json_array_foreach(list, i, b) {
        char tb[CLI_TIME_MAX];
        usage_row(ctx, t, cli_time(tb, sizeof tb, json_object_get(b, "start")), b);
    }
    usage_row(ctx, t, "total", json_object_get(r, "total"));
    cli_table_print(t, 0);
    cli_table_free(t);
}

int cli_cmd_usage(cli_ctx *ctx, int argc, char **argv)
{
    const char *key = NULL, *wallet = NULL, *service = NULL, *model = NULL, *from = NULL,
               *to = NULL, *gran = NULL;
    int hourly = 0;
    const cli_opt opts[] = {{"--key", CLI_OPT_VALUE, &key}, {"--wallet", CLI_OPT_VALUE, &wallet},
                            {"--service", CLI_OPT_VALUE, &service}, {"--model", CLI_OPT_VALUE, &model},
                            {"--from", CLI_OPT_VALUE, &from}, {"--to", CLI_OPT_VALUE, &to},
                            {"--granularity", CLI_OPT_VALUE, &gran}, {"--hourly", CLI_OPT_FLAG, &hourly},
                            {NULL, 0, NULL}};
    cli_strlist pos;
    json_t *args, *res;
    int rc;

    if (cli_args(ctx, argc, argv, opts, &pos, 1, 1) < 0)
        return ctx->status;
    if (hourly && gran != NULL && strcmp(gran, "hour") != 0)
        return cli_usage_error(ctx, "--hourly and --granularity %s disagree", gran);
    args = json_pack("{s:s,s:s*,s:s*,s:s*,s:s*,s:s*}", "team", pos.v[0], "key", key, "wallet", wallet,
                     "service", service, "model", model, "granularity", hourly ? "hour" : gran);
    if (args && (cli_add_int(ctx, args, "--from", "from", from) < 0 ||
                 cli_add_int(ctx, args, "--to", "to", to) < 0)) {
        json_decref(args);
        return ctx->status;
    }
    rc = cli_call(ctx, "usage.summary", args, 1, &res);
    return rc ? rc : cli_emit(ctx, res, print_usage);
}
