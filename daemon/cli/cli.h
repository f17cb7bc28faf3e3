/*
 * cli.h - the keygate command-line client: shared context, the command
 * table's row type, argument parsing and the call helpers every command
 * uses.
 *
 * A command is one row of the table in cli_main.c: the words that name it
 * ("team member add"), a handler, its synopsis and a one-line summary. A
 * handler parses its arguments with cli_args(), builds the JSON arguments,
 * sends them with cli_call() and prints the result with cli_emit(): human
 * text by default, the raw result JSON with --json.
 *
 * Exit codes are part of the interface (docs/cli.md).
 */
#ifndef KG_CLI_H
#define KG_CLI_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "cli_conn.h"

#define CLI_EXIT_OK          0  /* the command succeeded */
#define CLI_EXIT_REFUSED     1  /* the daemon (or a local check) refused it */
#define CLI_EXIT_USAGE       2  /* bad usage: nothing was sent */
#define CLI_EXIT_UNREACHABLE 3  /* the daemon could not be reached or answered garbage */
#define CLI_EXIT_UNAVAILABLE 4  /* the daemon answered `unavailable`: retry later */

#define CLI_DEFAULT_SOCKET     "/run/keygate/keygated.sock"
#define CLI_DEFAULT_TIMEOUT_MS 10000

struct cli_command;

typedef struct cli_ctx {
    const char *socket_path;        /* --socket / KEYGATE_SOCKET; borrowed, NULL = resolve */
    const char *config_path;        /* --config / KEYGATE_CONFIG; borrowed, NULL = none */
    const char *actor;              /* --actor / KEYGATE_ACTOR; borrowed, NULL = none */
    int json;                       /* --json: print the raw result JSON */
    int timeout_ms;                 /* per round trip (connect, then each answer) */
    int status;                     /* exit code when cli_args() says stop */
    const struct cli_command *cmd;  /* the row being run (for its usage) */
    cli_conn *conn;                 /* opened on first call; owned */
    char *currency;                 /* from service.list, for money display; owned */
    int currency_tried;             /* 1 once we asked for it */
    void **allocs;                  /* freed by cli_ctx_cleanup; owned */
    size_t nallocs, capallocs;
} cli_ctx;

typedef int (*cli_handler)(cli_ctx *ctx, int argc, char **argv);

typedef struct cli_command {
    const char *words;              /* the words naming it: "team member add" */
    cli_handler run;                /* gets the arguments after the words */
    const char *synopsis;           /* arguments, as shown in usage */
    const char *summary;            /* one line, for help */
} cli_command;

/* The command table (cli_main.c), terminated by a row with words == NULL. */
extern const cli_command cli_commands[];

/* --- argument parsing (cli_args.c) --------------------------------------- */

typedef struct cli_strlist {
    const char **v;                 /* borrowed strings (from argv); array owned by ctx */
    int n;
} cli_strlist;

typedef enum cli_optkind {
    CLI_OPT_FLAG,                   /* dest: int *, set to 1 */
    CLI_OPT_VALUE,                  /* dest: const char **, last one wins */
    CLI_OPT_LIST                    /* dest: cli_strlist *, repeatable */
} cli_optkind;

typedef struct cli_opt {
    const char *name;               /* "--name" (also accepted as "--name=value") */
    cli_optkind kind;
    void *dest;
} cli_opt;

/* Parses a command's arguments: the options of opts (terminated by a row
 * with name == NULL; opts may be NULL) and the global options (--json,
 * --actor, --socket, --config, --timeout), which are accepted anywhere.
 * Positional arguments go to *pos (at least minpos, at most maxpos; -1 =
 * no limit). "--" ends the options. Returns 0 to go on, or -1 to stop with
 * ctx->status set: CLI_EXIT_USAGE after printing the problem and the
 * command's usage on stderr, CLI_EXIT_OK after -h/--help printed it. */
int cli_args(cli_ctx *ctx, int argc, char **argv, const cli_opt *opts,
             cli_strlist *pos, int minpos, int maxpos);

/* Applies one global option at argv[*i] (advancing *i past its value).
 * Returns 1 if it was one, 0 if not, -1 (usage printed, ctx->status set)
 * if it was one with a bad or missing value. */
int cli_global_opt(cli_ctx *ctx, int argc, char **argv, int *i);

/* Prints "error: usage: <why>" and the usage of ctx->cmd's group on
 * stderr; returns CLI_EXIT_USAGE. */
int cli_usage_error(cli_ctx *ctx, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Prints the synopsis of every command of `group` (the first word) to f. */
void cli_print_group_usage(FILE *f, const char *group);

/* Strict integer parsing: the whole string, decimal, in range. 0 or -1. */
int cli_parse_i64(const char *s, int64_t *out);
/* Adds option opt's integer value v (NULL: absent, nothing added) to args
 * as field; -1 (usage error printed, ctx->status set) if v is not one. */
int cli_add_int(cli_ctx *ctx, json_t *args, const char *opt, const char *field, const char *v);

/* Adds "service=free" or "service=payg:m1,m2@wallet" to a services
 * object (key.services.set's argument). Returns 0, or -1 with the reason
 * in err. */
int cli_service_spec(json_t *services, const char *spec, char *err, size_t errlen);

/* Adds "name=integer" to a params object (price.estimate's argument).
 * Returns 0, or -1 with the reason in err. */
int cli_param_spec(json_t *params, const char *spec, char *err, size_t errlen);

/* --- a key's expiry, budgets and rate limits (cli_key_limits.c) ------------ */

/* ISO 8601 UTC time ("2027-01-31T12:00:00Z", "...+02:00", "2027-01-31")
 * to ms since the epoch. 0, or -1 when it is not one. */
int cli_parse_iso8601_ms(const char *s, int64_t *out_ms);

/* Adds key.update's expires_at, budget_day_micros, budget_month_micros
 * and rate_limits to args for the options given (NULL / empty list = not
 * given; "none" = null). Returns 0, or -1 with the reason in err. */
int cli_limit_args(json_t *args, const char *expires, const char *bday, const char *bmonth,
                   const cli_strlist *rates, char *err, size_t errlen);

/* The "expires", budget and "rate limits" lines of `key get`. */
void cli_print_limits(cli_ctx *ctx, json_t *key);

/* calloc that ctx frees at exit (the CLI is short-lived). Aborts on OOM. */
void *cli_alloc(cli_ctx *ctx, size_t n, size_t size);
void cli_ctx_cleanup(cli_ctx *ctx);

/* --- calling the daemon (cli_call.c) -------------------------------------- */

/* Sends {"cmd": cmd, ...args} (plus "actor" when with_actor and one is
 * set) and waits for the answer. args is stolen; NULL means building it
 * failed (json_pack refuses text that is not UTF-8): a usage error. On success
 * returns CLI_EXIT_OK with *result a new reference. Otherwise prints
 * "error: <code>: <message>" on stderr and returns CLI_EXIT_REFUSED (the
 * daemon refused) or CLI_EXIT_UNREACHABLE (no daemon, timeout, garbage). */
int cli_call(cli_ctx *ctx, const char *cmd, json_t *args, int with_actor, json_t **result);

/* Like cli_call but prints nothing on a refusal: *error receives the
 * error object (new reference). Transport failures are still printed. */
int cli_call_quiet(cli_ctx *ctx, const char *cmd, json_t *args, int with_actor,
                   json_t **result, json_t **error);

typedef void (*cli_printer)(cli_ctx *ctx, json_t *result);

/* A paged listing command (docs/protocol.md, "Paging"): args (stolen) may
 * carry "cursor". all = 0: one page, as cli_call. all = 1: follows
 * next_cursor to the end; *result is the last page's result with `field`
 * holding the items of every page, and no next_cursor. */
int cli_call_pages(cli_ctx *ctx, const char *cmd, json_t *args, const char *field, int all,
                   json_t **result);

/* cli_emit for a page: also tells, on stderr (human output only), how to
 * get the next page when there is one. */
int cli_emit_page(cli_ctx *ctx, json_t *result, cli_printer printer);

/* Prints result (--json: compact JSON on one line; else printer) and
 * drops the reference. Returns CLI_EXIT_OK. */
int cli_emit(cli_ctx *ctx, json_t *result, cli_printer printer);

/* The commonest command shape: one positional id, sent as `field` of cmd
 * with the actor, the result printed by print. A NULL field: no positional
 * argument and no actor (ping, service list). Returns the exit code. */
int cli_call_by_id(cli_ctx *ctx, int argc, char **argv, const char *cmd, const char *field,
                   cli_printer print);

/* write(2) all of p, retrying on EINTR. 0, or -1 with errno set. */
int cli_write_all(int fd, const char *p, size_t n);

/* Writes a JSON value as one compact line to stdout with write(2), wiping
 * the serialized copy: used for results that hold a secret. 0 or -1. */
int cli_write_json_line(json_t *v);

/* The catalog's currency ("USD"), asked once per run; NULL if unknown. */
const char *cli_currency(cli_ctx *ctx);

/* --- the commands (one file per area) ------------------------------------ */

int cli_cmd_ping(cli_ctx *ctx, int argc, char **argv);
int cli_cmd_signup(cli_ctx *ctx, int argc, char **argv);
int cli_cmd_team_get(cli_ctx *ctx, int argc, char **argv);
int cli_cmd_member_add(cli_ctx *ctx, int argc, char **argv);
int cli_cmd_member_set_role(cli_ctx *ctx, int argc, char **argv);
int cli_cmd_member_remove(cli_ctx *ctx, int argc, char **argv);
int cli_cmd_team_transfer(cli_ctx *ctx, int argc, char **argv);
int cli_cmd_notifications(cli_ctx *ctx, int argc, char **argv);
int cli_cmd_audit(cli_ctx *ctx, int argc, char **argv);
int cli_cmd_call(cli_ctx *ctx, int argc, char **argv);

int cli_cmd_service_list(cli_ctx *ctx, int argc, char **argv);
int cli_cmd_price_estimate(cli_ctx *ctx, int argc, char **argv);

int cli_cmd_key_create(cli_ctx *ctx, int argc, char **argv);
int cli_cmd_key_list(cli_ctx *ctx, int argc, char **argv);
int cli_cmd_key_get(cli_ctx *ctx, int argc, char **argv);
int cli_cmd_key_update(cli_ctx *ctx, int argc, char **argv);
int cli_cmd_key_users(cli_ctx *ctx, int argc, char **argv);
int cli_cmd_key_services(cli_ctx *ctx, int argc, char **argv);
int cli_cmd_key_revoke(cli_ctx *ctx, int argc, char **argv);

int cli_cmd_token_generate(cli_ctx *ctx, int argc, char **argv);
int cli_cmd_token_rotate(cli_ctx *ctx, int argc, char **argv);

int cli_cmd_wallet_create(cli_ctx *ctx, int argc, char **argv);
int cli_cmd_wallet_list(cli_ctx *ctx, int argc, char **argv);
int cli_cmd_wallet_get(cli_ctx *ctx, int argc, char **argv);
int cli_cmd_wallet_credit(cli_ctx *ctx, int argc, char **argv);
int cli_cmd_wallet_ledger(cli_ctx *ctx, int argc, char **argv);
int cli_cmd_usage(cli_ctx *ctx, int argc, char **argv);

#endif
