/*
 * cli_main.c - `keygate`: the command-line client of keygated's admin
 * socket (docs/cli.md, docs/protocol.md).
 *
 *   keygate [global options] <group> <verb> [args...]
 *
 * main() reads the environment and the global options before the command
 * words, finds the command's row in the table below and runs its handler
 * with the remaining arguments.
 */
#include "cli.h"

#include <malloc.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#ifdef KEYGATE_CLI_AUTHORIZE
#include "cli_authorize.h"
#endif

#ifndef KEYGATE_VERSION
#define KEYGATE_VERSION "unknown"
#endif

/* `keygate fsck` (cli_cmd_fsck.c): reads Redis itself, not the daemon. */
int cli_cmd_fsck(cli_ctx *ctx, int argc, char **argv);

/* The command table: one row per command. Longer word sequences are
 * matched before their prefixes by the lookup, so order is for help only. */
const cli_command cli_commands[] = {
    {"ping", cli_cmd_ping, "", "check that the daemon answers"},
    {"signup", cli_cmd_signup, "--email EMAIL --name NAME [--team-name TEAM_NAME]",
     "create a user, their team and its free key"},

    {"team get", cli_cmd_team_get, "TEAM", "show a team and its members"},
    {"team member add", cli_cmd_member_add, "TEAM (--user USER | --email EMAIL) --role admin|user",
     "add a member"},
    {"team member set-role", cli_cmd_member_set_role, "TEAM USER admin|user", "change a member's role"},
    {"team member remove", cli_cmd_member_remove, "TEAM USER",
     "remove a member (their tokens die)"},
    {"team transfer", cli_cmd_team_transfer, "TEAM USER",
     "make USER the owner (you become admin)"},

    {"service list", cli_cmd_service_list, "", "show the catalog: services, models, prices"},
    {"price estimate", cli_cmd_price_estimate, "SERVICE MODEL [PARAM=INTEGER ...]",
     "expected cost of one request"},

    {"key create", cli_cmd_key_create,
     "TEAM --name NAME [--description TEXT] [--user USER]... [--service SPEC]...",
     "create a paid key"},
    {"key list", cli_cmd_key_list, "TEAM", "list the team's keys you may see"},
    {"key get", cli_cmd_key_get, "KEY", "show a key: users, token hints, services, expiry, budgets, rate limits"},
    {"key update", cli_cmd_key_update,
     "KEY [--name NAME] [--description TEXT] [--expires-at ISO8601|none] "
     "[--budget-day MICROS|none] [--budget-month MICROS|none] "
     "[--rate-limit SERVICE=PER_SECOND/PER_MINUTE|none]...",
     "rename or describe a key; set its expiry, budgets and rate limits"},
    {"key users", cli_cmd_key_users, "KEY (USER... | --none) [--notify]",
     "set the key's users (replaces them)"},
    {"key services", cli_cmd_key_services, "KEY (SPEC... | --none)",
     "set the key's services (replaces them); SPEC: SERVICE=free | SERVICE=payg:MODEL[,MODEL...]@WALLET"},
    {"key revoke", cli_cmd_key_revoke, "KEY", "revoke a key: every token of it stops working"},

    {"token generate", cli_cmd_token_generate, "KEY [--out FILE]",
     "issue your personal token for KEY (shown once)"},
    {"token rotate", cli_cmd_token_rotate, "KEY [--user USER] [--grace SECONDS] [--out FILE]",
     "replace a personal token (shown once)"},

    {"wallet create", cli_cmd_wallet_create, "TEAM NAME", "create a wallet"},
    {"wallet list", cli_cmd_wallet_list, "TEAM", "list the team's wallets"},
    {"wallet get", cli_cmd_wallet_get, "WALLET", "show a wallet and its balance"},
    {"wallet credit", cli_cmd_wallet_credit, "WALLET AMOUNT_MICROS --reference REF",
     "top up (the same REF credits once)"},
    {"wallet ledger", cli_cmd_wallet_ledger,
     "WALLET [--limit N] [--cursor C | --all] [--key KEY] [--service S] [--from MS] [--to MS]",
     "credits and debits, newest first, a page at a time"},
    {"usage", cli_cmd_usage,
     "TEAM [--key K] [--wallet W] [--service S] [--model M] [--from MS] [--to MS] "
     "[--granularity day|hour | --hourly]",
     "requests, cost and param totals per UTC day (last 30) or hour (last 24)"},

    {"notifications", cli_cmd_notifications, "[--limit N] [--cursor C | --all]",
     "your notifications, newest first"},
    {"audit", cli_cmd_audit, "TEAM [--limit N] [--cursor C | --all]",
     "the team's audit log, newest first"},
    {"call", cli_cmd_call, "CMD ['{JSON ARGS}']", "send any admin command as is"},
    {"fsck", cli_cmd_fsck, "[--config FILE] [--repair]",
     "check every invariant of the data in Redis (read-only; exit 0 clean, 1 problems); "
     "--repair settles commits across slots a killed keygated left open"},
#ifdef KEYGATE_CLI_AUTHORIZE
    {"authorize", NULL, "[args...]  (see keygate authorize --help)",
     "run one request through the gateway module"},
#endif
    {NULL, NULL, NULL, NULL},
};

static void print_help(FILE *f)
{
    fputs("usage: keygate [options] <command> [args...]\n\ncommands:\n", f);
    for (const cli_command *c = cli_commands; c->words; c++)
        fprintf(f, "  %s%s%s\n      %s\n", c->words, c->synopsis[0] ? " " : "", c->synopsis,
                c->summary);
    fputs("\noptions (before or after the command words):\n"
          "  --socket PATH    admin socket (env KEYGATE_SOCKET; default: the `socket` line of\n"
          "                   --config FILE / KEYGATE_CONFIG, else " CLI_DEFAULT_SOCKET ")\n"
          "  --actor USER_ID  the user you act as (env KEYGATE_ACTOR)\n"
          "  --json           print the raw result JSON (one line) instead of text\n"
          "  --timeout SEC    wait at most SEC seconds for the daemon (default 10)\n"
          "  --config FILE    read the socket path from a keygated config file\n"
          "\nexit status: 0 ok, 1 refused (error: CODE: MESSAGE on stderr), 2 bad usage,\n"
          "             3 daemon unreachable or no answer\n"
          "See docs/cli.md for examples.\n", f);
}

/* jansson allocates through these: every block it frees is wiped first,
 * so a token that passed through the parser leaves no copy on the heap. */
static void *wiping_malloc(size_t n)
{
    return malloc(n);
}

static void wiping_free(void *p)
{
    if (p != NULL) {
        sodium_memzero(p, malloc_usable_size(p));
        free(p);
    }
}

/* Number of leading words of argv (argc of them) that name cmd, or 0. */
static int match_words(const char *words, int argc, char **argv)
{
    int n = 0;

    while (*words) {
        size_t len = strcspn(words, " ");
        if (n >= argc || strlen(argv[n]) != len || strncmp(argv[n], words, len) != 0)
            return 0;
        n++;
        words += len;
        while (*words == ' ')
            words++;
    }
    return n;
}

static int group_exists(const char *group)
{
    size_t n = strlen(group);

    for (const cli_command *c = cli_commands; c->words; c++)
        if (strncmp(c->words, group, n) == 0 && (c->words[n] == '\0' || c->words[n] == ' '))
            return 1;
    return 0;
}

/* The first words of the table, each once: " ping signup team ...". */
static void print_groups(FILE *f)
{
    for (const cli_command *c = cli_commands; c->words; c++) {
        size_t n = strcspn(c->words, " ");
        int seen = 0;
        for (const cli_command *d = cli_commands; d < c && !seen; d++)
            seen = strncmp(d->words, c->words, n) == 0 && strcspn(d->words, " ") == n;
        if (!seen)
            fprintf(f, " %.*s", (int)n, c->words);
    }
}

static int run(cli_ctx *ctx, int argc, char **argv)
{
    const cli_command *best = NULL;
    int i = 1, bestn = 0;
    const char *env;

    if ((env = getenv("KEYGATE_SOCKET")) != NULL && env[0])
        ctx->socket_path = env;
    if ((env = getenv("KEYGATE_CONFIG")) != NULL && env[0])
        ctx->config_path = env;
    if ((env = getenv("KEYGATE_ACTOR")) != NULL && env[0])
        ctx->actor = env;

    for (; i < argc && argv[i][0] == '-'; i++) {
        int g;
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            print_help(stdout);
            return CLI_EXIT_OK;
        }
        if (strcmp(argv[i], "--version") == 0) {
            puts("keygate " KEYGATE_VERSION);
            return CLI_EXIT_OK;
        }
        g = cli_global_opt(ctx, argc, argv, &i);
        if (g < 0)
            return ctx->status;
        if (g == 0) {
            fprintf(stderr, "error: usage: unknown option %s\n"
                    "(keygate help: all commands and global options)\n", argv[i]);
            return CLI_EXIT_USAGE;
        }
    }
    if (i >= argc) {
        fputs("error: usage: no command given\n", stderr);
        print_help(stderr);   /* the whole list is the useful answer here */
        return CLI_EXIT_USAGE;
    }
    if (strcmp(argv[i], "help") == 0) {
        if (i + 1 < argc && group_exists(argv[i + 1]))
            cli_print_group_usage(stdout, argv[i + 1]);
        else
            print_help(stdout);
        return CLI_EXIT_OK;
    }

#ifdef KEYGATE_CLI_AUTHORIZE
    /* Its own options and output: the words after "authorize" go to it
     * untouched (argv[0] is "authorize", as a program name for getopt),
     * after the global options it shares, --json and --config, when they
     * came before the word ("keygate --json authorize ..."). */
    if (strcmp(argv[i], "authorize") == 0) {
        char **av = cli_alloc(ctx, (size_t)argc + 4, sizeof *av);
        int n = 0;

        av[n++] = argv[i];
        if (ctx->config_path != NULL) {
            av[n++] = "--config";
            av[n++] = (char *)ctx->config_path;
        }
        if (ctx->json)
            av[n++] = "--json";
        for (int j = i + 1; j < argc; j++)
            av[n++] = argv[j];
        av[n] = NULL;
        return cli_authorize(n, av);
    }
#endif

    for (const cli_command *c = cli_commands; c->words; c++) {
        int n = c->run ? match_words(c->words, argc - i, argv + i) : 0;
        if (n > bestn) {
            best = c;
            bestn = n;
        }
    }
    if (best == NULL) {
        if (group_exists(argv[i])) {
            const char *verb = i + 1 < argc ? argv[i + 1] : NULL;
            if (verb && (strcmp(verb, "-h") == 0 || strcmp(verb, "--help") == 0 ||
                         strcmp(verb, "help") == 0)) {
                cli_print_group_usage(stdout, argv[i]);
                return CLI_EXIT_OK;
            }
            if (verb)
                fprintf(stderr, "error: usage: unknown command '%s %s'\n", argv[i], verb);
            else
                fprintf(stderr, "error: usage: '%s' needs a subcommand\n", argv[i]);
            cli_print_group_usage(stderr, argv[i]);
            return CLI_EXIT_USAGE;
        }
        fprintf(stderr, "error: usage: unknown command '%s'\ncommands:", argv[i]);
        print_groups(stderr);
        fputs("\n(keygate help: all commands and global options)\n", stderr);
        return CLI_EXIT_USAGE;
    }
    ctx->cmd = best;
    return best->run(ctx, argc - i - bestn, argv + i + bestn);
}

int main(int argc, char **argv)
{
    cli_ctx ctx = {.timeout_ms = CLI_DEFAULT_TIMEOUT_MS};
    int rc;

    json_set_alloc_funcs(wiping_malloc, wiping_free);
    if (sodium_init() < 0) {
        fputs("error: internal: libsodium failed to initialise\n", stderr);
        return CLI_EXIT_REFUSED;
    }
    rc = run(&ctx, argc, argv);
    cli_ctx_cleanup(&ctx);
    if (fflush(stdout) != 0 && rc == CLI_EXIT_OK) {
        perror("error: output");
        rc = CLI_EXIT_REFUSED;
    }
    return rc;
}
