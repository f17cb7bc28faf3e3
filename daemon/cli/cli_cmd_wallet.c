/*
 * cli_cmd_wallet.c - keygate wallet create / list / get / credit / ledger.
 *
 * Money is integer micros on the wire; the human output shows both the
 * currency units and the micros ("12.500000 USD (12500000 micros)"). The
 * currency comes from the catalog (one service.list per run).
 */
#include "cli.h"
#include "cli_print.h"

#include <string.h>

static void print_wallet(cli_ctx *ctx, json_t *w)
{
    char mb[CLI_MONEY_MAX], tb[CLI_TIME_MAX];
    json_t *credited = json_object_get(w, "credited");

    cli_field("wallet_id", "%s", cli_jstr(w, "wallet_id", "-"));
    cli_field("name", "%s", cli_jstr(w, "name", "-"));
    cli_field("team_id", "%s", cli_jstr(w, "team_id", "-"));
    cli_field("balance", "%s",
              cli_money_json(mb, sizeof mb, json_object_get(w, "balance_micros"), cli_currency(ctx)));
    cli_field("created", "%s", cli_time(tb, sizeof tb, json_object_get(w, "created_at")));
    if (json_is_true(credited))
        cli_field("credited", "yes");
    else if (json_is_false(credited))
        cli_field("credited", "no: this reference was used before; nothing credited");
}

static void print_wallet_list(cli_ctx *ctx, json_t *r)
{
    json_t *list = json_object_get(r, "wallets"), *w;
    cli_table *t;
    size_t i;

    if (json_array_size(list) == 0) {
        puts("no wallets");
        return;
    }
    t = cli_table_new(4, "WALLET_ID", "NAME", "BALANCE", "CREATED");
    json_array_foreach(list, i, w) {
        char mb[CLI_MONEY_MAX], tb[CLI_TIME_MAX];
        cli_table_row(t, cli_jstr(w, "wallet_id", "-"), cli_jstr(w, "name", "-"),
                      cli_money_json(mb, sizeof mb, json_object_get(w, "balance_micros"),
                                     cli_currency(ctx)),
                      cli_time(tb, sizeof tb, json_object_get(w, "created_at")));
    }
    cli_table_print(t, 0);
    cli_table_free(t);
}

/* What a ledger entry was for: the reference of a credit, the request
 * of a debit. */
static void entry_details(char *buf, size_t len, json_t *e)
{
    if (strcmp(cli_jstr(e, "type", ""), "credit") == 0) {
        snprintf(buf, len, "reference=%s by %s", cli_jstr(e, "reference", "-"),
                 cli_jstr(e, "actor", "-"));
    } else {
        snprintf(buf, len, "key=%s user=%s %s/%s request=%s", cli_jstr(e, "key_id", "-"),
                 cli_jstr(e, "user_id", "-"), cli_jstr(e, "service", "-"),
                 cli_jstr(e, "model", "-"), cli_jstr(e, "request_id", "-"));
    }
}

static void print_ledger(cli_ctx *ctx, json_t *r)
{
    json_t *list = json_object_get(r, "entries"), *e;
    cli_table *t;
    size_t i;

    if (json_array_size(list) == 0) {
        puts("no ledger entries");
        return;
    }
    t = cli_table_new(5, "AT", "TYPE", "AMOUNT", "BALANCE AFTER", "DETAILS");
    json_array_foreach(list, i, e) {
        char tb[CLI_TIME_MAX], amt[CLI_MONEY_MAX + 1], bal[CLI_MONEY_MAX], det[512];
        const char *cur = cli_currency(ctx);
        int debit = strcmp(cli_jstr(e, "type", ""), "debit") == 0;

        amt[0] = debit ? '-' : '+';
        cli_money_json(amt + 1, sizeof amt - 1, json_object_get(e, "amount_micros"), cur);
        entry_details(det, sizeof det, e);
        cli_table_row(t, cli_time(tb, sizeof tb, json_object_get(e, "at")),
                      cli_jstr(e, "type", "-"), amt,
                      cli_money_json(bal, sizeof bal, json_object_get(e, "balance_micros"), cur),
                      det);
    }
    cli_table_print(t, 0);
    cli_table_free(t);
}

int cli_cmd_wallet_create(cli_ctx *ctx, int argc, char **argv)
{
    cli_strlist pos;
    json_t *res;
    int rc;

    if (cli_args(ctx, argc, argv, NULL, &pos, 2, 2) < 0)
        return ctx->status;
    rc = cli_call(ctx, "wallet.create", json_pack("{s:s,s:s}", "team", pos.v[0], "name", pos.v[1]),
                  1, &res);
    return rc ? rc : cli_emit(ctx, res, print_wallet);
}

int cli_cmd_wallet_list(cli_ctx *ctx, int argc, char **argv)
{
    return cli_call_by_id(ctx, argc, argv, "wallet.list", "team", print_wallet_list);
}

int cli_cmd_wallet_get(cli_ctx *ctx, int argc, char **argv)
{
    return cli_call_by_id(ctx, argc, argv, "wallet.get", "wallet", print_wallet);
}

int cli_cmd_wallet_credit(cli_ctx *ctx, int argc, char **argv)
{
    const char *ref = NULL;
    const cli_opt opts[] = {{"--reference", CLI_OPT_VALUE, &ref}, {NULL, 0, NULL}};
    cli_strlist pos;
    json_t *res;
    int64_t amount;
    int rc;

    if (cli_args(ctx, argc, argv, opts, &pos, 2, 2) < 0)
        return ctx->status;
    if (cli_parse_i64(pos.v[1], &amount) < 0)
        return cli_usage_error(ctx, "AMOUNT_MICROS is an integer number of micros "
                               "(1 unit = 1000000), not '%s'", pos.v[1]);
    if (ref == NULL || ref[0] == '\0')
        return cli_usage_error(ctx, "--reference R is required (the same reference credits once)");
    rc = cli_call(ctx, "wallet.credit",
                  json_pack("{s:s,s:I,s:s}", "wallet", pos.v[0], "amount_micros",
                            (json_int_t)amount, "reference", ref), 1, &res);
    return rc ? rc : cli_emit(ctx, res, print_wallet);
}

int cli_cmd_wallet_ledger(cli_ctx *ctx, int argc, char **argv)
{
    const char *limit = NULL, *cursor = NULL, *key = NULL, *service = NULL, *from = NULL,
               *to = NULL;
    int all = 0;
    const cli_opt opts[] = {{"--limit", CLI_OPT_VALUE, &limit}, {"--cursor", CLI_OPT_VALUE, &cursor},
                            {"--key", CLI_OPT_VALUE, &key}, {"--service", CLI_OPT_VALUE, &service},
                            {"--from", CLI_OPT_VALUE, &from}, {"--to", CLI_OPT_VALUE, &to},
                            {"--all", CLI_OPT_FLAG, &all}, {NULL, 0, NULL}};
    cli_strlist pos;
    json_t *args, *res;
    int rc;

    if (cli_args(ctx, argc, argv, opts, &pos, 1, 1) < 0)
        return ctx->status;
    args = json_pack("{s:s,s:s*,s:s*,s:s*}", "wallet", pos.v[0], "cursor", cursor, "key", key,
                     "service", service);
    if (args && (cli_add_int(ctx, args, "--limit", "limit", limit) < 0 ||
                 cli_add_int(ctx, args, "--from", "from", from) < 0 ||
                 cli_add_int(ctx, args, "--to", "to", to) < 0)) {
        json_decref(args);
        return ctx->status;
    }
    rc = cli_call_pages(ctx, "wallet.ledger", args, "entries", all, &res);
    return rc ? rc : cli_emit_page(ctx, res, print_ledger);
}
