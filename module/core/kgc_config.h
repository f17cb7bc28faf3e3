/*
 * kgc_config.h - the shared config file (SPEC §7) and the pepper file.
 *
 * One "key value" per line, '#' starts a comment, blank lines ignored.
 * Both the daemon and libkeygate read the same file; each uses the keys it
 * needs. A key that neither knows is an error naming its line.
 */
#ifndef KGC_CONFIG_H
#define KGC_CONFIG_H

#include <stddef.h>

#define KGC_PATH_MAX 1024
#define KGC_SENTINELS_MAX 8
#define KGC_CLUSTER_SEEDS_MAX 16
#define KGC_REDIS_USER_MAX 128
#define KGC_REDIS_PASSWORD_MAX 512  /* bytes of the password, its NUL included */

typedef struct kgc_hostport {
    char host[256];
    int port;
} kgc_hostport;

typedef struct kgc_config {
    char socket_path[108];        /* daemon: admin Unix socket ("" = unset) */
    unsigned socket_mode;         /* daemon: its file mode, default 0660 */
    char catalog_path[KGC_PATH_MAX]; /* daemon: service catalog JSON */
    char redis_unix[108];         /* both: Redis Unix socket, or "" */
    char redis_host[256];         /* both: Redis host when redis_unix is "" */
    int redis_port;               /* both: Redis TCP port */
    char pepper_file[KGC_PATH_MAX]; /* both: 64 hex characters */
    /* Redis ACL credentials (all; docs/operations.md "Redis ACL credentials"):
     * every connection to a data node sends AUTH first (kgc_auth.h); the
     * sentinels are not asked to. redis_password is read from
     * redis_password_file by kgc_config_load, which refuses a user without
     * a password file; no user with a password means AUTH <password>, the
     * "default" user. The password is never logged nor put in a message;
     * kgc_config_wipe clears it. */
    char redis_user[KGC_REDIS_USER_MAX];           /* "" = none given */
    char redis_password_file[KGC_PATH_MAX];        /* "" = no AUTH */
    char redis_password[KGC_REDIS_PASSWORD_MAX];   /* the file's first line */
    char key_prefix[64];          /* both: prefix of every Redis key, "kg:" */
    int timeout_ms;               /* module: per-request store timeout, 50 */
    int cache_ttl_ms;             /* module: token cache backstop TTL, 1000 */
    int hold_ttl_ms;              /* module: a hold not settled by then is captured
                                     at its reserved amount, 600000 (10 min) */
    size_t max_line;              /* daemon: admin line limit, 65536 */
    int idle_timeout_s;           /* daemon: drop a silent client with a partial line, 30 */
    int max_clients;              /* daemon: admin connections at once, 4096 */
    char http_listen[128];        /* daemon: "HOST:PORT" of the console, "" = off */
    char http_root[KGC_PATH_MAX]; /* daemon: console static files */
    char metrics_listen[128];     /* daemon: "HOST:PORT" serving only /metrics, "" = off */
    int log_format;               /* daemon: KGC_LOG_TEXT or KGC_LOG_JSON */
    int usage_counters;           /* gateways: 1 = count usage in the money scripts */
    int http_max_clients;         /* daemon: console connections at once, 256 */
    int http_deadline_s;          /* daemon: whole request (headers + body) must arrive in, 10 */
    int signup_per_minute;        /* daemon: sign-ups per source (uid or address) a minute, 10 */
    int audit_retention_days;     /* daemon: accepted changes kept in the audit stream, 400 */
    /* Sentinel (both): when nsentinels > 0 the store's address comes from
     * these sentinels (kgc_sentinel.h), never from redis_host/redis_port. */
    kgc_hostport sentinels[KGC_SENTINELS_MAX];
    int nsentinels;
    char sentinel_master[128];    /* the master's name at the sentinels */
    /* Redis Cluster (gateways; issue 11): when ncluster > 0, "redis cluster
     * HOST:PORT[,...]" named these seed nodes, asked for the slot map
     * (kgc_cluster.h); redis_host/redis_port/redis_unix are not used. */
    kgc_hostport cluster[KGC_CLUSTER_SEEDS_MAX];
    int ncluster;
    int min_replicas_ack;         /* both: WAIT for this many replicas after a write, 0 = off */
    int durability;               /* both: "durability local|replica" as given
                                     (KGC_DURABILITY_*); replica sets
                                     min_replicas_ack to at least 1 */
    int replica_ack_timeout_ms;   /* both: WAIT's timeout, 500 */
    /* Ledger archive (daemon; docs/archive.md): "archive sqlite:PATH" or
     * "archive postgresql:CONNINFO"; absent = no archiving. */
    int archive_engine;           /* KGC_ARCHIVE_* */
    char archive_target[KGC_PATH_MAX]; /* the PATH or the CONNINFO */
    int ledger_tail;              /* daemon: entries kept in Redis per wallet, 1000 */
    int archive_batch;            /* daemon: entries per archive transaction, 1000 */
    int archive_interval_ms;      /* daemon: pause of an idle archiver, 1000 */
    /* Leased funds (issue 14, docs/module.md "Leased funds"): */
    int debit_mode;               /* gateways: KGC_DEBIT_EXACT (default) or _LEASED */
    char lease_journal[KGC_PATH_MAX]; /* gateways: journal file prefix (leased: required) */
    int lease_ttl_ms;             /* both: a lease not renewed by then is reclaimed, 3000 */
} kgc_config;

/* archive_engine values */
#define KGC_ARCHIVE_NONE 0
#define KGC_ARCHIVE_SQLITE 1
#define KGC_ARCHIVE_POSTGRESQL 2

/* durability values: the name for min_replicas_ack 0 / >= 1 */
#define KGC_DURABILITY_UNSET   0
#define KGC_DURABILITY_LOCAL   1  /* answered once the master has it */
#define KGC_DURABILITY_REPLICA 2  /* ... and a replica acknowledged it (WAIT) */

/* debit_mode values */
#define KGC_DEBIT_EXACT  0
#define KGC_DEBIT_LEASED 1

/* Fills *cfg with defaults, then with the file's values, and reads
 * redis_password_file if one is named (refused, naming that file, if it is
 * not a regular file, if others may read it, if it is empty or longer than
 * a line of KGC_REDIS_PASSWORD_MAX - 1 bytes). Returns 0, or -1 with a
 * message naming the file and line in err (never the password); on -1 the
 * password is already wiped. A loaded config holds the Redis password:
 * wipe it with kgc_config_wipe when done with it. */
int kgc_config_load(const char *path, kgc_config *cfg, char *err, size_t errlen);

/* Clears the secret a loaded config holds (the Redis password) with
 * sodium_memzero. Accepts NULL; the rest of *cfg stays usable, without
 * credentials. */
void kgc_config_wipe(kgc_config *cfg);

/* Defaults only (what an empty file gives). */
void kgc_config_defaults(kgc_config *cfg);

/* Reads the pepper file: exactly 64 hex characters (one trailing newline
 * allowed), refused if it is not a regular file or others may read it.
 * On success *out is KGC_PEPPER_LEN bytes of sodium_malloc()ed, read-only
 * memory owned by the caller (free with sodium_free). Returns 0 or -1. */
int kgc_pepper_load(const char *path, unsigned char **out, char *err, size_t errlen);

/* log_format values */
#define KGC_LOG_TEXT 0
#define KGC_LOG_JSON 1

#endif
