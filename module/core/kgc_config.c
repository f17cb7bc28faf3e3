/*
 * kgc_config.c - config and pepper files (SPEC §7).
 */
#include "kgc_config.h"
#include "kgc_token.h"

#include <ctype.h>
#include <stddef.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void kgc_config_defaults(kgc_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->socket_mode = 0660;
    snprintf(cfg->key_prefix, sizeof cfg->key_prefix, "kg:");
    snprintf(cfg->redis_host, sizeof cfg->redis_host, "127.0.0.1");
    cfg->redis_port = 6379;
    cfg->timeout_ms = 50;
    cfg->cache_ttl_ms = 1000;
    cfg->hold_ttl_ms = 600000;
    cfg->usage_counters = 1;
    cfg->max_line = 65536;
    cfg->idle_timeout_s = 30;
    cfg->max_clients = 4096;
    cfg->http_max_clients = 256;
    cfg->http_deadline_s = 10;
    cfg->signup_per_minute = 10;
    cfg->audit_retention_days = 400;
    cfg->replica_ack_timeout_ms = 500;
    cfg->ledger_tail = 1000;
    cfg->archive_batch = 1000;
    cfg->archive_interval_ms = 1000;
    cfg->lease_ttl_ms = 3000;
}

static int set_str(char *dst, size_t cap, const char *v)
{
    size_t n = strlen(v);
    if (n == 0 || n >= cap)
        return -1;
    memcpy(dst, v, n + 1);
    return 0;
}

static int set_long(long *out, const char *v, int base, long min, long max)
{
    char *end;
    long x;

    errno = 0;
    x = strtol(v, &end, base);
    if (errno || end == v || *end != '\0' || x < min || x > max)
        return -1;
    *out = x;
    return 0;
}

/* "HOST:PORT[,HOST:PORT...]" into list (at most max), *count set. */
static int set_hostports(kgc_hostport *list, int max, int *count, const char *v)
{
    int n = 0;

    while (*v) {
        const char *end = strchr(v, ','), *colon;
        size_t len = end ? (size_t)(end - v) : strlen(v);
        char one[300];
        long port;

        if (len == 0 || len >= sizeof one || n == max)
            return -1;
        memcpy(one, v, len);
        one[len] = '\0';
        colon = strrchr(one, ':');
        if (colon == NULL || colon == one || (size_t)(colon - one) >= sizeof list[n].host ||
            set_long(&port, colon + 1, 10, 1, 65535) != 0)
            return -1;
        memcpy(list[n].host, one, (size_t)(colon - one));
        list[n].host[colon - one] = '\0';
        list[n].port = (int)port;
        n++;
        v += len;
        if (*v == ',' && *++v == '\0')
            return -1;
    }
    if (n == 0)
        return -1;
    *count = n;
    return 0;
}

static int set_sentinels(kgc_config *cfg, const char *v)
{
    return set_hostports(cfg->sentinels, KGC_SENTINELS_MAX, &cfg->nsentinels, v);
}

/* "sqlite:PATH" or "postgresql:CONNINFO" (docs/archive.md). */
static int set_archive(kgc_config *cfg, const char *v)
{
    static const struct { const char *scheme; int engine; } engines[] = {
        {"sqlite:", KGC_ARCHIVE_SQLITE}, {"postgresql:", KGC_ARCHIVE_POSTGRESQL}};

    for (size_t i = 0; i < sizeof engines / sizeof engines[0]; i++) {
        size_t n = strlen(engines[i].scheme);
        if (strncmp(v, engines[i].scheme, n) == 0) {
            if (set_str(cfg->archive_target, sizeof cfg->archive_target, v + n) != 0)
                return -1;
            cfg->archive_engine = engines[i].engine;
            return 0;
        }
    }
    return -1;
}

static int set_redis(kgc_config *cfg, const char *v)
{
    const char *colon;
    long port;

    if (strncmp(v, "sentinel ", 9) == 0) {
        /* SPEC §7's one-line form: "redis sentinel MASTER HOST:PORT[,...]". */
        const char *name = v + 9, *sp;
        while (*name == ' ' || *name == '\t')
            name++;
        sp = strpbrk(name, " \t");
        if (sp == NULL || sp == name || (size_t)(sp - name) >= sizeof cfg->sentinel_master)
            return -1;
        memcpy(cfg->sentinel_master, name, (size_t)(sp - name));
        cfg->sentinel_master[sp - name] = '\0';
        while (*sp == ' ' || *sp == '\t')
            sp++;
        return set_sentinels(cfg, sp);
    }
    if (strncmp(v, "cluster ", 8) == 0) {
        /* "redis cluster HOST:PORT[,...]": seeds asked for CLUSTER SLOTS. */
        v += 8;
        while (*v == ' ' || *v == '\t')
            v++;
        return set_hostports(cfg->cluster, KGC_CLUSTER_SEEDS_MAX, &cfg->ncluster, v);
    }
    if (strncmp(v, "unix:", 5) == 0) {
        cfg->ncluster = 0;
        cfg->redis_host[0] = '\0';
        return set_str(cfg->redis_unix, sizeof cfg->redis_unix, v + 5);
    }
    colon = strrchr(v, ':');
    if (colon == NULL || colon == v || (size_t)(colon - v) >= sizeof cfg->redis_host)
        return -1;
    if (set_long(&port, colon + 1, 10, 1, 65535) != 0)
        return -1;
    memcpy(cfg->redis_host, v, (size_t)(colon - v));
    cfg->redis_host[colon - v] = '\0';
    cfg->redis_port = (int)port;
    cfg->redis_unix[0] = '\0';
    cfg->ncluster = 0;
    return 0;
}

/* Every key of the file, one row each: where it goes and what it accepts. */
typedef enum { K_STR, K_LONG, K_REDIS, K_CHOICE, K_SENTINELS, K_ARCHIVE } key_kind;

typedef struct key_rule {
    const char *name;
    key_kind kind;
    size_t off, size;             /* field in kgc_config and its size */
    int base;                     /* K_LONG: 8 for a file mode, else 10 */
    long min, max;                /* K_LONG: the accepted range */
    const char *const *choices;   /* K_CHOICE: the words, NULL-ended; the field
                                     (an int) gets the word's index */
} key_rule;

#define STR(n, f)  {n, K_STR, offsetof(kgc_config, f), sizeof((kgc_config *)0)->f, 0, 0, 0, NULL}
#define NUM(n, f, b, lo, hi) {n, K_LONG, offsetof(kgc_config, f), sizeof((kgc_config *)0)->f, b, lo, hi, NULL}

#define CHOICE(n, f, words) {n, K_CHOICE, offsetof(kgc_config, f), sizeof(int), 0, 0, 0, words}

static const char *const log_formats[] = {"text", "json", NULL};
static const char *const on_off[] = {"off", "on", NULL};
static const char *const debit_modes[] = {"exact", "leased", NULL};
/* KGC_DURABILITY_*: index 0 (unset) is no word a line can give */
static const char *const durabilities[] = {"", "local", "replica", NULL};

static const key_rule keys[] = {
    STR("socket", socket_path),
    NUM("socket_mode", socket_mode, 8, 0, 0777),
    STR("catalog", catalog_path),
    {"redis", K_REDIS, 0, 0, 0, 0, 0, NULL},
    STR("pepper_file", pepper_file),
    STR("redis_user", redis_user),
    STR("redis_password_file", redis_password_file),
    STR("key_prefix", key_prefix),
    NUM("timeout_ms", timeout_ms, 10, 1, 60000),
    NUM("cache_ttl_ms", cache_ttl_ms, 10, 0, 1000),   /* the 1 s refusal promise */
    NUM("hold_ttl_ms", hold_ttl_ms, 10, 1, 86400000), /* < the request record's life */
    NUM("max_line", max_line, 10, 256, 16L * 1024 * 1024),
    NUM("idle_timeout", idle_timeout_s, 10, 1, 86400),
    NUM("max_clients", max_clients, 10, 1, 1000000),
    STR("http", http_listen),
    STR("http_root", http_root),
    STR("metrics", metrics_listen),
    NUM("http_max_clients", http_max_clients, 10, 1, 100000),
    NUM("http_deadline", http_deadline_s, 10, 1, 3600),
    NUM("signup_per_minute", signup_per_minute, 10, 1, 1000000),
    NUM("audit_retention_days", audit_retention_days, 10, 1, 36500),
    CHOICE("log_format", log_format, log_formats),
    CHOICE("usage_counters", usage_counters, on_off),
    {"sentinel", K_SENTINELS, 0, 0, 0, 0, 0, NULL},
    STR("sentinel_master", sentinel_master),
    NUM("min_replicas_ack", min_replicas_ack, 10, 0, 64),
    NUM("replica_ack_timeout_ms", replica_ack_timeout_ms, 10, 1, 60000),
    CHOICE("durability", durability, durabilities),
    {"archive", K_ARCHIVE, 0, 0, 0, 0, 0, NULL},
    NUM("ledger_tail", ledger_tail, 10, 1, 10000000),
    NUM("archive_batch", archive_batch, 10, 1, 1000),   /* PAGE_BATCH_MAX */
    NUM("archive_interval_ms", archive_interval_ms, 10, 10, 3600000),
    CHOICE("debit", debit_mode, debit_modes),
    STR("lease_journal", lease_journal),
    NUM("lease_ttl_ms", lease_ttl_ms, 10, 200, 600000),
};

/* Stores x into an integer field of the size the row says. */
static void put_long(void *field, size_t size, long x)
{
    if (size == sizeof(int))
        *(int *)field = (int)x;   /* int and unsigned alike */
    else
        *(size_t *)field = (size_t)x;
}

/* Applies one "key value" pair. Returns 0, -1 for a bad value, -2 for an
 * unknown key. */
static int apply(kgc_config *cfg, const char *k, const char *v)
{
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        const key_rule *r = &keys[i];
        char *field = (char *)cfg + r->off;
        long x;

        if (strcmp(k, r->name) != 0)
            continue;
        switch (r->kind) {
        case K_STR:
            return set_str(field, r->size, v);
        case K_LONG:
            if (set_long(&x, v, r->base, r->min, r->max) != 0)
                return -1;
            put_long(field, r->size, x);
            return 0;
        case K_REDIS:
            return set_redis(cfg, v);
        case K_CHOICE:
            for (int c = 0; r->choices[c] != NULL; c++)
                if (strcmp(v, r->choices[c]) == 0) {
                    *(int *)field = c;
                    return 0;
                }
            return -1;
        case K_SENTINELS:
            return set_sentinels(cfg, v);
        case K_ARCHIVE:
            return set_archive(cfg, v);
        }
    }
    return -2;
}

/* Reads the Redis password file into cfg->redis_password: one line (a
 * trailing newline, or CR LF, is not part of it), refused like the pepper
 * file when others may read it. Messages name the file, never what it
 * holds. 0 or -1. */
static int read_password(kgc_config *cfg, char *err, size_t errlen)
{
    const char *path = cfg->redis_password_file;
    char buf[KGC_REDIS_PASSWORD_MAX + 2];   /* the line, its CR LF: one byte over
                                               says the password is too long */
    struct stat st;
    ssize_t got;
    size_t n = 0;
    int fd, rc = -1;

    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s: not a regular file", path);
        goto done;
    }
    if (st.st_mode & S_IROTH) {
        snprintf(err, errlen,
                 "%s: refused, the Redis password file is world-readable (chmod o-r)", path);
        goto done;
    }
    while (n < sizeof buf && (got = read(fd, buf + n, sizeof buf - n)) != 0) {
        if (got < 0) {
            if (errno == EINTR)
                continue;
            snprintf(err, errlen, "%s: %s", path, strerror(errno));
            goto done;
        }
        n += (size_t)got;
    }
    if (n > 0 && buf[n - 1] == '\n')
        n--;
    if (n > 0 && buf[n - 1] == '\r')
        n--;
    if (n == 0) {
        snprintf(err, errlen, "%s: the Redis password file is empty", path);
        goto done;
    }
    if (n >= sizeof cfg->redis_password) {
        snprintf(err, errlen, "%s: the Redis password is longer than %zu bytes", path,
                 sizeof cfg->redis_password - 1);
        goto done;
    }
    if (memchr(buf, '\n', n) != NULL || memchr(buf, '\0', n) != NULL) {
        snprintf(err, errlen, "%s: the Redis password must be one line of text", path);
        goto done;
    }
    memcpy(cfg->redis_password, buf, n);
    cfg->redis_password[n] = '\0';
    rc = 0;
done:
    sodium_memzero(buf, sizeof buf);
    close(fd);
    return rc;
}

/* redis_user and redis_password_file, once the whole file is read. */
static int check_credentials(const char *path, kgc_config *cfg, char *err, size_t errlen)
{
    for (const char *c = cfg->redis_user; *c; c++)
        if ((unsigned char)*c <= ' ' || *c == 0x7f) {
            snprintf(err, errlen, "%s: bad value for 'redis_user' (a name without blanks)", path);
            return -1;
        }
    if (cfg->redis_user[0] != '\0' && cfg->redis_password_file[0] == '\0') {
        snprintf(err, errlen, "%s: 'redis_user' needs 'redis_password_file'", path);
        return -1;
    }
    if (cfg->redis_password_file[0] == '\0')
        return 0;
    return read_password(cfg, err, errlen);
}

int kgc_config_load(const char *path, kgc_config *cfg, char *err, size_t errlen)
{
    FILE *f;
    char line[2048];
    int lineno = 0, rc = 0;

    kgc_config_defaults(cfg);
    f = fopen(path, "r");
    if (f == NULL) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    while (fgets(line, sizeof line, f) != NULL) {
        char *p = line, *k, *v, *end;
        int r;

        lineno++;
        if (strchr(line, '\n') == NULL && !feof(f)) {
            snprintf(err, errlen, "%s:%d: line too long", path, lineno);
            rc = -1;
            break;
        }
        if ((end = strchr(p, '#')) != NULL)
            *end = '\0';
        while (isspace((unsigned char)*p))
            p++;
        end = p + strlen(p);
        while (end > p && isspace((unsigned char)end[-1]))
            *--end = '\0';
        if (*p == '\0')
            continue;
        k = p;
        while (*p && !isspace((unsigned char)*p))
            p++;
        if (*p == '\0') {
            snprintf(err, errlen, "%s:%d: '%s' needs a value", path, lineno, k);
            rc = -1;
            break;
        }
        *p++ = '\0';
        while (isspace((unsigned char)*p))
            p++;
        v = p;
        r = apply(cfg, k, v);
        if (r == -2) {
            snprintf(err, errlen, "%s:%d: unknown key '%s'", path, lineno, k);
            rc = -1;
            break;
        }
        if (r != 0) {
            snprintf(err, errlen, "%s:%d: bad value for '%s'", path, lineno, k);
            rc = -1;
            break;
        }
    }
    fclose(f);
    if (rc == 0 && (cfg->nsentinels > 0) != (cfg->sentinel_master[0] != '\0')) {
        snprintf(err, errlen, "%s: 'sentinel' and 'sentinel_master' go together", path);
        rc = -1;
    }
    if (rc == 0 && cfg->ncluster > 0 && cfg->nsentinels > 0) {
        snprintf(err, errlen, "%s: 'redis cluster' and 'sentinel' exclude each other", path);
        rc = -1;
    }
    if (rc == 0 && cfg->durability == KGC_DURABILITY_LOCAL && cfg->min_replicas_ack > 0) {
        snprintf(err, errlen, "%s: 'durability local' and 'min_replicas_ack %d' disagree", path,
                 cfg->min_replicas_ack);
        rc = -1;
    }
    if (rc == 0 && cfg->durability == KGC_DURABILITY_REPLICA && cfg->min_replicas_ack == 0)
        cfg->min_replicas_ack = 1;
    if (rc == 0)
        rc = check_credentials(path, cfg, err, errlen);
    if (rc != 0)
        kgc_config_wipe(cfg);
    return rc;
}

void kgc_config_wipe(kgc_config *cfg)
{
    if (cfg == NULL)
        return;
    sodium_memzero(cfg->redis_password, sizeof cfg->redis_password);
    cfg->redis_password_file[0] = '\0';
}

int kgc_pepper_load(const char *path, unsigned char **out, char *err, size_t errlen)
{
    char hex[KGC_PEPPER_LEN * 2 + 2];
    struct stat st;
    unsigned char *p = NULL;
    size_t binlen = 0, n;
    const char *end = NULL;
    int fd, rc = -1;

    *out = NULL;
    if (path == NULL || path[0] == '\0') {
        snprintf(err, errlen, "pepper_file is not set");
        return -1;
    }
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s: not a regular file", path);
        goto done;
    }
    if (st.st_mode & S_IROTH) {
        snprintf(err, errlen, "%s: refused, the pepper file is world-readable (chmod o-r)", path);
        goto done;
    }
    n = (size_t)read(fd, hex, sizeof hex);
    if (n == (size_t)-1)
        n = 0;
    if (n > 0 && hex[n - 1] == '\n')
        n--;
    if (n != KGC_PEPPER_LEN * 2) {
        snprintf(err, errlen, "%s: expected 64 hex characters", path);
        goto done;
    }
    p = sodium_malloc(KGC_PEPPER_LEN);
    if (p == NULL) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    if (sodium_hex2bin(p, KGC_PEPPER_LEN, hex, n, NULL, &binlen, &end) != 0 ||
        binlen != KGC_PEPPER_LEN || end != hex + n) {
        snprintf(err, errlen, "%s: expected 64 hex characters", path);
        goto done;
    }
    sodium_mprotect_readonly(p);
    *out = p;
    p = NULL;
    rc = 0;
done:
    sodium_memzero(hex, sizeof hex);
    if (p != NULL)
        sodium_free(p);
    close(fd);
    return rc;
}
