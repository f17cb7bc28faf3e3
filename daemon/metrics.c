/*
 * metrics.c - the counters behind metrics.h, and their rendering.
 *
 * Commands are counted per (command, outcome) and timed per command in a
 * fixed-bucket histogram; the rest are single counters and one gauge.
 */
#include "metrics.h"
#include "cmd.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#define MX_MAX_CMDS 64            /* rows of cmd_table, plus "unknown" */

/* Outcomes: "ok", the protocol's error codes, then "other". */
static const char *const outcomes[] = {
    "ok", "bad_request", "unknown_command", "unauthenticated", "forbidden", "not_found",
    "conflict", "free_key_immutable", "invalid_state", "unavailable", "internal",
    "rate_limited", "other",
};
#define MX_NOUTCOMES (sizeof outcomes / sizeof outcomes[0])

/* Histogram bounds in seconds; a last bucket is +Inf. */
static const double bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                0.1, 0.25, 0.5, 1, 2.5, 5};
#define MX_NBOUNDS (sizeof bounds / sizeof bounds[0])

static const struct {
    const char *name, *help;
} counter_rows[MX_NCOUNTERS] = {
    [MX_REDIS_BATCHES] = {"keygated_redis_round_trips_total",
                          "Command batches sent to Redis (one round trip each)."},
    [MX_REDIS_ERROR_REPLIES] = {"keygated_redis_error_replies_total",
                                "Error replies from Redis inside those batches."},
    [MX_REDIS_DISCONNECTS] = {"keygated_redis_disconnects_total",
                              "Connections to Redis lost."},
    [MX_REDIS_CONNECT_FAILURES] = {"keygated_redis_connect_failures_total",
                                   "Connection attempts to Redis that failed."},
    [MX_CATALOG_RELOADS] = {"keygated_catalog_reloads_total",
                            "Catalog reloads (SIGHUP) that took effect."},
    [MX_CATALOG_RELOAD_FAILURES] = {"keygated_catalog_reload_failures_total",
                                    "Catalog reloads refused (the old catalog kept serving)."},
    [MX_HTTP_REQUESTS] = {"keygated_http_requests_total",
                          "Console HTTP requests read whole."},
    [MX_COMMIT_MOVED] = {"keygated_commits_moved_total",
                         "Commits refused because another keygated wrote a key the command "
                         "read (the command ran again)."},
};

static unsigned long long counters[MX_NCOUNTERS];
static unsigned long long commands[MX_MAX_CMDS][MX_NOUTCOMES];
static unsigned long long hist[MX_MAX_CMDS][MX_NBOUNDS + 1];
static double hist_sum[MX_MAX_CMDS];
static long long clients;

/* Row of a command: its place in cmd_table, or the last one ("unknown"). */
static size_t cmd_row(const char *cmd)
{
    const cmd_def *d = cmd ? cmd_find(cmd) : NULL;
    size_t i = d ? (size_t)(d - cmd_table) : MX_MAX_CMDS - 1;
    return i < MX_MAX_CMDS - 1 ? i : MX_MAX_CMDS - 1;
}

static const char *row_name(size_t i)
{
    for (size_t k = 0; cmd_table[k].name != NULL; k++)
        if (k == i)
            return cmd_table[k].name;
    return "unknown";
}

void metrics_count(mx_counter c)
{
    if ((unsigned)c < MX_NCOUNTERS)
        counters[c]++;
}

void metrics_command(const char *cmd, const char *code, double seconds)
{
    size_t r = cmd_row(cmd), o = MX_NOUTCOMES - 1, b = 0;

    for (size_t k = 0; k < MX_NOUTCOMES - 1; k++)
        if (strcmp(outcomes[k], code ? code : "ok") == 0)
            o = k;
    commands[r][o]++;
    while (b < MX_NBOUNDS && seconds > bounds[b])
        b++;
    hist[r][b]++;
    hist_sum[r] += seconds;
}

void metrics_clients(int delta)
{
    clients += delta;
}

double metrics_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* 1 if the row ever counted anything: rows never used are left out. */
static int row_used(size_t r)
{
    for (size_t o = 0; o < MX_NOUTCOMES; o++)
        if (commands[r][o])
            return 1;
    return 0;
}

void metrics_render(struct evbuffer *out)
{
    evbuffer_add_printf(out, "# HELP keygated_commands_total Admin commands answered, by command "
                             "and outcome (ok or the error code).\n"
                             "# TYPE keygated_commands_total counter\n");
    for (size_t r = 0; r < MX_MAX_CMDS; r++)
        for (size_t o = 0; o < MX_NOUTCOMES; o++)
            if (commands[r][o])
                evbuffer_add_printf(out, "keygated_commands_total{command=\"%s\",outcome=\"%s\"} %llu\n",
                                    row_name(r), outcomes[o], commands[r][o]);
    evbuffer_add_printf(out, "# HELP keygated_command_duration_seconds Time from a command's "
                             "arrival to its answer.\n"
                             "# TYPE keygated_command_duration_seconds histogram\n");
    for (size_t r = 0; r < MX_MAX_CMDS; r++) {
        unsigned long long cum = 0;

        if (!row_used(r))
            continue;
        for (size_t b = 0; b <= MX_NBOUNDS; b++) {
            char le[32];

            cum += hist[r][b];
            if (b < MX_NBOUNDS)
                snprintf(le, sizeof le, "%g", bounds[b]);
            else
                snprintf(le, sizeof le, "+Inf");
            evbuffer_add_printf(out, "keygated_command_duration_seconds_bucket{command=\"%s\",le=\"%s\"} %llu\n",
                                row_name(r), le, cum);
        }
        evbuffer_add_printf(out, "keygated_command_duration_seconds_sum{command=\"%s\"} %.6f\n"
                                 "keygated_command_duration_seconds_count{command=\"%s\"} %llu\n",
                            row_name(r), hist_sum[r], row_name(r), cum);
    }
    for (size_t c = 0; c < MX_NCOUNTERS; c++)
        evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", counter_rows[c].name,
                            counter_rows[c].help, counter_rows[c].name, counter_rows[c].name,
                            counters[c]);
    evbuffer_add_printf(out, "# HELP keygated_admin_clients Admin socket clients connected.\n"
                             "# TYPE keygated_admin_clients gauge\nkeygated_admin_clients %lld\n",
                        clients);
}
