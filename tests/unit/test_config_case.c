/*
 * One data-driven config case: tests/data/config/{valid,invalid}/NAME.conf.
 * A case's first line says what must happen:
 *   "# expect: ok key=value key=value"   loads, with these field values
 *   "# expect: error TEXT"               refused, the message contains TEXT
 */
#include "check.h"
#include "kgc_config.h"

#include <stdio.h>
#include <string.h>

static void field(const kgc_config *c, const char *name, char *out, size_t n)
{
    if (!strcmp(name, "socket")) snprintf(out, n, "%s", c->socket_path);
    else if (!strcmp(name, "socket_mode")) snprintf(out, n, "%o", c->socket_mode);
    else if (!strcmp(name, "catalog")) snprintf(out, n, "%s", c->catalog_path);
    else if (!strcmp(name, "redis_unix")) snprintf(out, n, "%s", c->redis_unix);
    else if (!strcmp(name, "redis_host")) snprintf(out, n, "%s", c->redis_host);
    else if (!strcmp(name, "redis_port")) snprintf(out, n, "%d", c->redis_port);
    else if (!strcmp(name, "pepper_file")) snprintf(out, n, "%s", c->pepper_file);
    else if (!strcmp(name, "key_prefix")) snprintf(out, n, "%s", c->key_prefix);
    else if (!strcmp(name, "timeout_ms")) snprintf(out, n, "%d", c->timeout_ms);
    else if (!strcmp(name, "cache_ttl_ms")) snprintf(out, n, "%d", c->cache_ttl_ms);
    else if (!strcmp(name, "max_line")) snprintf(out, n, "%zu", c->max_line);
    else if (!strcmp(name, "log_format")) snprintf(out, n, "%d", c->log_format);
    else if (!strcmp(name, "usage_counters")) snprintf(out, n, "%d", c->usage_counters);
    else if (!strcmp(name, "nsentinels")) snprintf(out, n, "%d", c->nsentinels);
    else if (!strcmp(name, "sentinel0")) snprintf(out, n, "%s:%d", c->sentinels[0].host, c->sentinels[0].port);
    else if (!strcmp(name, "sentinel_last"))
        snprintf(out, n, "%s:%d", c->sentinels[c->nsentinels ? c->nsentinels - 1 : 0].host,
                 c->sentinels[c->nsentinels ? c->nsentinels - 1 : 0].port);
    else if (!strcmp(name, "ncluster")) snprintf(out, n, "%d", c->ncluster);
    else if (!strcmp(name, "cluster0")) snprintf(out, n, "%s:%d", c->cluster[0].host, c->cluster[0].port);
    else if (!strcmp(name, "cluster_last"))
        snprintf(out, n, "%s:%d", c->cluster[c->ncluster ? c->ncluster - 1 : 0].host,
                 c->cluster[c->ncluster ? c->ncluster - 1 : 0].port);
    else if (!strcmp(name, "sentinel_master")) snprintf(out, n, "%s", c->sentinel_master);
    else if (!strcmp(name, "min_replicas_ack")) snprintf(out, n, "%d", c->min_replicas_ack);
    else if (!strcmp(name, "replica_ack_timeout_ms")) snprintf(out, n, "%d", c->replica_ack_timeout_ms);
    else if (!strcmp(name, "archive_engine")) snprintf(out, n, "%d", c->archive_engine);
    else if (!strcmp(name, "archive_target")) snprintf(out, n, "%s", c->archive_target);
    else if (!strcmp(name, "ledger_tail")) snprintf(out, n, "%d", c->ledger_tail);
    else if (!strcmp(name, "archive_batch")) snprintf(out, n, "%d", c->archive_batch);
    else snprintf(out, n, "<unknown field %s>", name);
}

int main(int argc, char **argv)
{
    char first[512], err[512], *expect, *tok, *save = NULL;
    kgc_config cfg;
    FILE *f;
    int rc;

    if (argc != 2 || (f = fopen(argv[1], "r")) == NULL) {
        fprintf(stderr, "usage: test_config_case FILE\n");
        return 2;
    }
    if (fgets(first, sizeof first, f) == NULL || strncmp(first, "# expect: ", 10) != 0) {
        fprintf(stderr, "%s: first line must be '# expect: ...'\n", argv[1]);
        return 2;
    }
    fclose(f);
    first[strcspn(first, "\n")] = '\0';
    expect = first + 10;
    rc = kgc_config_load(argv[1], &cfg, err, sizeof err);
    if (strncmp(expect, "error ", 6) == 0) {
        CHECK(rc != 0);
        if (rc != 0 && strstr(err, expect + 6) == NULL) {
            fprintf(stderr, "message '%s' lacks '%s'\n", err, expect + 6);
            check_failures++;
        }
        return CHECK_DONE();
    }
    if (rc != 0)
        fprintf(stderr, "refused: %s\n", err);
    CHECK(rc == 0);
    for (tok = strtok_r(expect + 2, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
        char *eq = strchr(tok, '='), got[1100];
        if (eq == NULL)
            continue;
        *eq = '\0';
        field(&cfg, tok, got, sizeof got);
        if (strcmp(got, eq + 1) != 0) {
            fprintf(stderr, "%s = '%s', expected '%s'\n", tok, got, eq + 1);
            check_failures++;
        }
    }
    return CHECK_DONE();
}
