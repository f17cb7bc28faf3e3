/*
 * kgt.c - see kgt.h.
 */
#define _GNU_SOURCE
#include "kgt.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <arpa/inet.h>
#include <signal.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef KGT_DATA_DIR
#error "KGT_DATA_DIR must point at tests/data"
#endif
#ifndef KGT_REDIS_SERVER
#define KGT_REDIS_SERVER "redis-server"
#endif
#ifndef KGT_REDIS_CLI
#define KGT_REDIS_CLI "redis-cli"
#endif

static kgt_env *current;        /* for kgt_fail's cleanup */
static pid_t owner;             /* only the process that set up cleans up */

int64_t kgt_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t kgt_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void kgt_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st; (void)flag; (void)ftw;
    return remove(path);
}

void kgt_fail(void)
{
    if (current != NULL && getpid() == owner)
        kgt_teardown(current);
    exit(1);
}

static void die(const char *what)
{
    fprintf(stderr, "kgt: %s: %s\n", what, strerror(errno));
    kgt_fail();
}

static void write_file(const char *path, const char *text, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
    size_t n = strlen(text);

    if (fd < 0 || write(fd, text, n) != (ssize_t)n || fchmod(fd, mode) != 0)
        die(path);
    close(fd);
}

/* A connection that answered PING, to the Unix socket sock or (sock NULL)
 * to 127.0.0.1:port, tried for up to ms; NULL if none. */
static redisContext *connect_wait(const char *sock, int port, int ms)
{
    int64_t until = kgt_now_ms() + ms;

    while (kgt_now_ms() < until) {
        redisContext *c = sock != NULL ? redisConnectUnix(sock) : redisConnect("127.0.0.1", port);
        if (c != NULL && !c->err) {
            redisReply *r = redisCommand(c, "PING");
            int ok = r != NULL && r->type == REDIS_REPLY_STATUS;
            freeReplyObject(r);
            if (ok)
                return c;
        }
        redisFree(c);
        kgt_sleep_ms(10);
    }
    return NULL;
}

/* ---- a Redis Cluster (KEYGATE_TOPOLOGY=cluster) ---------------------- */

/* Ports are claimed as tests/lib/kgtest.py free_port() claims them (the
 * same directory and files, so C and Python suites running side by side
 * never pick the same one): a file per port holding the owner's pid,
 * under one flock, below the kernel's ephemeral range. */
static int claimed[2 * KGT_NODES], nclaimed;

static void port_dir(char *out, size_t n)
{
    const char *t = getenv("TMPDIR");
    snprintf(out, n, "%s/kgtest-ports", t != NULL && t[0] != '\0' ? t : "/tmp");
}

static int bind_free(int port)
{
    struct sockaddr_in a;
    int fd = socket(AF_INET, SOCK_STREAM, 0), ok;

    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ok = fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
    if (fd >= 0)
        close(fd);
    return ok;
}

static int claim_port(void)
{
    char dir[300], path[340], tmp[360];
    int lo = 32768, hi = 0, lock;
    FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");

    if (f != NULL) {
        if (fscanf(f, "%d %d", &lo, &hi) != 2 || lo > 32768)
            lo = 32768;
        fclose(f);
    }
    port_dir(dir, sizeof dir);
    if (mkdir(dir, 01777) != 0 && errno != EEXIST)
        die(dir);
    snprintf(path, sizeof path, "%s/.lock", dir);
    if ((lock = open(path, O_RDWR | O_CREAT, 0666)) < 0 || flock(lock, LOCK_EX) != 0)
        die(path);
    for (int i = 0; i < 400; i++) {
        int port = 10000 + (int)randombytes_uniform((uint32_t)(lo - 10000)), owner_pid = 0;
        snprintf(path, sizeof path, "%s/%d", dir, port);
        if ((f = fopen(path, "r")) != NULL) {
            if (fscanf(f, "%d", &owner_pid) != 1)
                owner_pid = 0;
            fclose(f);
            if (owner_pid > 0 && (owner_pid == getpid() || kill(owner_pid, 0) == 0 || errno == EPERM))
                continue;
        }
        if (!bind_free(port))
            continue;
        snprintf(tmp, sizeof tmp, "%s.%d", path, (int)getpid());
        if ((f = fopen(tmp, "w")) == NULL)
            die(tmp);
        fprintf(f, "%d", (int)getpid());
        if (fclose(f) != 0 || rename(tmp, path) != 0)
            die(path);
        claimed[nclaimed++] = port;
        close(lock);
        return port;
    }
    fprintf(stderr, "kgt: no free loopback port in 400 tries\n");
    kgt_fail();
}

static void release_ports(void)
{
    char dir[300], path[340];

    port_dir(dir, sizeof dir);
    for (int i = 0; i < nclaimed; i++) {
        snprintf(path, sizeof path, "%s/%d", dir, claimed[i]);
        unlink(path);
    }
    nclaimed = 0;
}

static redisContext *tcp_wait(int port, int ms)
{
    return connect_wait(NULL, port, ms);
}

/* redis-server with argv (argv[0] is replaced), a child that never
 * outlives the test. */
static pid_t spawn(const char **argv)
{
    pid_t pid = fork();

    if (pid < 0)
        die("fork");
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        argv[0] = KGT_REDIS_SERVER;
        execvp(KGT_REDIS_SERVER, (char *const *)argv);
        _exit(127);
    }
    return pid;
}

/* Data node i in its own directory: a cluster node, or (sentinel) the
 * primary (0) or its replica (1). */
static void node_start(kgt_env *e, int i)
{
    char d[300], logfile[320], port[16], bus[16], primary[16];
    const char *argv[40] = {"", "--port", port, "--bind", "127.0.0.1",
                            "--repl-diskless-sync-delay", "0", "--save", "", "--appendonly", "no",
                            "--dir", d, "--daemonize", "no", "--logfile", logfile,
                            "--loglevel", "warning"};
    int n = 19;

    snprintf(d, sizeof d, "%s/node-%d", e->dir, i);
    if (mkdir(d, 0700) != 0 && errno != EEXIST)
        die(d);
    snprintf(logfile, sizeof logfile, "%s/log", d);
    snprintf(port, sizeof port, "%d", e->port[i]);
    snprintf(bus, sizeof bus, "%d", e->bus[i]);
    snprintf(primary, sizeof primary, "%d", e->port[0]);
    if (e->cluster) {
        const char *more[] = {"--cluster-enabled", "yes", "--cluster-port", bus,
                              "--cluster-config-file", "nodes.conf", "--cluster-node-timeout",
                              "1000", "--cluster-replica-validity-factor", "0"};
        memcpy(argv + n, more, sizeof more);
        n += (int)(sizeof more / sizeof more[0]);
    } else if (i > 0) {
        argv[n++] = "--replicaof";
        argv[n++] = "127.0.0.1";
        argv[n++] = primary;
    }
    argv[n] = NULL;
    e->pid[i] = spawn(argv);
}

/* ---- Sentinel (KEYGATE_TOPOLOGY=sentinel) ------------------------------ */

#define KGT_MASTER "kgmaster"

static int replica_linked(kgt_env *e)
{
    redisContext *c = tcp_wait(e->port[1], 2000);
    redisReply *r = c != NULL ? redisCommand(c, "INFO replication") : NULL;
    int ok = r != NULL && r->type == REDIS_REPLY_STRING &&
             strstr(r->str, "master_link_status:up") != NULL;

    freeReplyObject(r);
    redisFree(c);
    return ok;
}

static int sentinel_names_primary(kgt_env *e, int i)
{
    redisContext *c = tcp_wait(e->sport[i], 2000);
    redisReply *r = c != NULL ? redisCommand(c, "SENTINEL get-master-addr-by-name " KGT_MASTER)
                              : NULL;
    int ok = r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
             atoi(r->element[1]->str) == e->port[0];

    freeReplyObject(r);
    redisFree(c);
    return ok;
}

/* The primary and its replica up, linked; then every sentinel up and
 * naming the primary. */
static void sentinel_wait_ok(kgt_env *e)
{
    int64_t until = kgt_now_ms() + 30000;

    for (;;) {
        int ok = replica_linked(e);
        for (int i = 0; i < 3 && ok && e->spid[0] > 0; i++)
            ok = sentinel_names_primary(e, i);
        if (ok)
            return;
        if (kgt_now_ms() > until) {
            fprintf(stderr, "kgt: primary, replica and sentinels not ready (logs in %s)\n", e->dir);
            kgt_fail();
        }
        kgt_sleep_ms(50);
    }
}

static void sentinel_create(kgt_env *e)
{
    for (int i = 0; i < 2; i++)
        e->port[i] = claim_port();
    for (int i = 0; i < 3; i++)
        e->sport[i] = claim_port();
    node_start(e, 0);
    if ((e->rc = tcp_wait(e->port[0], 10000)) == NULL) {
        fprintf(stderr, "kgt: the primary did not come up (log: %s/node-0/log)\n", e->dir);
        kgt_fail();
    }
    node_start(e, 1);
    for (int i = 0; i < 3; i++) {
        char d[300], conf[320];
        const char *argv[4] = {"", conf, "--sentinel", NULL};
        FILE *f;

        snprintf(d, sizeof d, "%s/sentinel-%d", e->dir, i);
        snprintf(conf, sizeof conf, "%s/sentinel.conf", d);
        if (mkdir(d, 0700) != 0 || (f = fopen(conf, "w")) == NULL)
            die(d);
        fprintf(f, "port %d\nbind 127.0.0.1\ndir %s\nlogfile %s/log\n"
                   "sentinel monitor " KGT_MASTER " 127.0.0.1 %d 2\n"
                   "sentinel down-after-milliseconds " KGT_MASTER " 60000\n"
                   "sentinel failover-timeout " KGT_MASTER " 180000\n",
                e->sport[i], d, d, e->port[0]);
        if (fclose(f) != 0)
            die(conf);
        e->spid[i] = spawn(argv);
    }
    sentinel_wait_ok(e);
}

static void stop_pids(pid_t *pids, int n)
{
    for (int i = 0; i < n; i++)
        if (pids[i] > 0) {
            kill(pids[i], SIGCONT);
            kill(pids[i], SIGTERM);
        }
    for (int i = 0; i < n; i++)
        if (pids[i] > 0) {
            waitpid(pids[i], NULL, 0);
            pids[i] = 0;
        }
}

static int info_has(redisContext *c, const char *what)
{
    redisReply *r = redisCommand(c, "CLUSTER INFO");
    int ok = r != NULL && r->type == REDIS_REPLY_STRING && strstr(r->str, what) != NULL;
    freeReplyObject(r);
    return ok;
}

/* Every node up, every slot served, every node knowing all the others. */
static void cluster_wait_ok(kgt_env *e)
{
    int64_t until = kgt_now_ms() + 60000;

    for (int i = 0; i < KGT_NODES; i++) {
        if (e->nc[i] == NULL && (e->nc[i] = tcp_wait(e->port[i], 10000)) == NULL) {
            fprintf(stderr, "kgt: cluster node %d (port %d) did not come up (log: %s/node-%d/log)\n",
                    i, e->port[i], e->dir, i);
            kgt_fail();
        }
    }
    for (;;) {
        int ok = 1;
        for (int i = 0; i < KGT_NODES && ok; i++)
            ok = info_has(e->nc[i], "cluster_state:ok") &&
                 info_has(e->nc[i], "cluster_slots_ok:16384") &&
                 info_has(e->nc[i], "cluster_known_nodes:6");
        if (ok)
            return;
        if (kgt_now_ms() > until) {
            fprintf(stderr, "kgt: the cluster did not reach cluster_state:ok\n");
            kgt_fail();
        }
        kgt_sleep_ms(50);
    }
}

static void cluster_create(kgt_env *e)
{
    char addr[KGT_NODES][32], logfile[320];
    const char *argv[KGT_NODES + 8];
    int n = 0, st, fd;
    pid_t pid;

    for (int i = 0; i < KGT_NODES; i++) {
        e->port[i] = claim_port();
        e->bus[i] = claim_port();
    }
    for (int i = 0; i < KGT_NODES; i++)
        node_start(e, i);
    for (int i = 0; i < KGT_NODES; i++)
        if ((e->nc[i] = tcp_wait(e->port[i], 10000)) == NULL) {
            fprintf(stderr, "kgt: cluster node %d (port %d) did not come up (log: %s/node-%d/log)\n",
                    i, e->port[i], e->dir, i);
            kgt_fail();
        }
    argv[n++] = KGT_REDIS_CLI;
    argv[n++] = "--cluster";
    argv[n++] = "create";
    for (int i = 0; i < KGT_NODES; i++) {
        snprintf(addr[i], sizeof addr[i], "127.0.0.1:%d", e->port[i]);
        argv[n++] = addr[i];
    }
    argv[n++] = "--cluster-replicas";
    argv[n++] = "1";
    argv[n++] = "--cluster-yes";
    argv[n] = NULL;
    snprintf(logfile, sizeof logfile, "%s/cluster-create.log", e->dir);
    if ((pid = fork()) < 0)
        die("fork");
    if (pid == 0) {
        if ((fd = open(logfile, O_WRONLY | O_CREAT | O_TRUNC, 0600)) >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execvp(KGT_REDIS_CLI, (char *const *)argv);
        _exit(127);
    }
    if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "kgt: redis-cli --cluster create failed (see %s)\n", logfile);
        kgt_fail();
    }
    cluster_wait_ok(e);
    e->rc = tcp_wait(e->port[0], 10000);
    if (e->rc == NULL) {
        fprintf(stderr, "kgt: no connection to cluster node 0\n");
        kgt_fail();
    }
}

/* The data nodes (every cluster node; the primary and its replica). */
static void nodes_stop(kgt_env *e)
{
    for (int i = 0; i < KGT_NODES; i++) {
        if (e->nc[i] != NULL)
            redisFree(e->nc[i]);
        e->nc[i] = NULL;
    }
    stop_pids(e->pid, KGT_NODES);
}

/* The connection to the node listening on port (made on first use). */
static redisContext *node_conn(kgt_env *e, int port)
{
    for (int i = 0; i < KGT_NODES; i++)
        if (e->port[i] == port) {
            if (e->nc[i] == NULL || e->nc[i]->err) {
                redisFree(e->nc[i]);
                e->nc[i] = tcp_wait(port, 2000);
            }
            return e->nc[i];
        }
    return NULL;
}

/* One formatted command, following MOVED on a cluster (no slot moves in
 * these tests, so ASK does not arise). NULL on a connection error. */
static redisReply *routed(kgt_env *e, const char *cmd, size_t len, redisContext **via)
{
    redisContext *c = e->rc;

    for (int hops = 0; c != NULL && hops < 8; hops++) {
        redisReply *r = NULL;
        const char *colon;

        if (redisAppendFormattedCommand(c, cmd, len) != REDIS_OK ||
            redisGetReply(c, (void **)&r) != REDIS_OK)
            return NULL;
        if (via != NULL)
            *via = c;
        if (!e->cluster || r->type != REDIS_REPLY_ERROR || strncmp(r->str, "MOVED ", 6) != 0 ||
            (colon = strrchr(r->str, ':')) == NULL)
            return r;
        c = node_conn(e, atoi(colon + 1));
        freeReplyObject(r);
    }
    return NULL;
}

/* The connection a command on key ends up on. */
static redisContext *holder(kgt_env *e, const char *key)
{
    redisContext *via = NULL;
    char *cmd = NULL;
    int len = redisFormatCommand(&cmd, "EXISTS %s", key);
    redisReply *r = len > 0 ? routed(e, cmd, (size_t)len, &via) : NULL;

    free(cmd);
    freeReplyObject(r);
    return via;
}

int kgt_team_node(kgt_env *e, const char *team)
{
    char key[128];
    redisContext *via;

    if (!e->cluster)
        return 0;
    snprintf(key, sizeof key, KGT_PREFIX "{t:%s}:team", team);
    if ((via = holder(e, key)) == NULL) {
        fprintf(stderr, "kgt: no node for %s\n", key);
        kgt_fail();
    }
    return via->tcp.port;
}

redisContext *kgt_connect_for(kgt_env *e, const char *key)
{
    redisContext *via = holder(e, key), *c;

    if (!e->cluster && !e->sentinel)
        c = redisConnectUnix(e->sock);
    else
        c = via != NULL ? redisConnect(via->tcp.host, via->tcp.port) : NULL;
    if (c == NULL || c->err) {
        fprintf(stderr, "kgt: no connection for %s\n", key);
        kgt_fail();
    }
    return c;
}

void kgt_redis_start(kgt_env *e)
{
    char logfile[400];
    pid_t pid;

    if (e->cluster || e->sentinel) {
        for (int i = 0; i < (e->cluster ? KGT_NODES : 2); i++)
            node_start(e, i);
        if (e->cluster)
            cluster_wait_ok(e);
        else
            sentinel_wait_ok(e);
        if (e->rc != NULL)
            redisFree(e->rc);
        e->rc = tcp_wait(e->port[0], 10000);
        return;
    }
    snprintf(logfile, sizeof logfile, "%s/redis.log", e->dir);
    pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);   /* never outlive a crashed test */
        execlp(KGT_REDIS_SERVER, KGT_REDIS_SERVER, "--port", "0",
               "--unixsocket", e->sock, "--unixsocketperm", "700",
               "--save", "", "--appendonly", "no", "--dir", e->dir,
               "--daemonize", "no", "--logfile", logfile, "--loglevel", "warning",
               (char *)NULL);
        _exit(127);
    }
    e->redis_pid = pid;
    if (e->rc != NULL)
        redisFree(e->rc);
    e->rc = connect_wait(e->sock, 0, 10000);
    if (e->rc == NULL) {
        fprintf(stderr, "kgt: redis-server did not come up on %s\n", e->sock);
        kgt_fail();
    }
}

void kgt_redis_stop(kgt_env *e)
{
    if (e->rc != NULL) {
        redisFree(e->rc);
        e->rc = NULL;
    }
    if (e->cluster || e->sentinel) {
        nodes_stop(e);
        return;
    }
    if (e->redis_pid > 0) {
        kill(e->redis_pid, SIGCONT);
        kill(e->redis_pid, SIGTERM);
        waitpid(e->redis_pid, NULL, 0);
        e->redis_pid = 0;
    }
    unlink(e->sock);
}

void kgt_redis_pause(kgt_env *e, int paused)
{
    if (!e->cluster && !e->sentinel) {
        kill(e->redis_pid, paused ? SIGSTOP : SIGCONT);
        return;
    }
    for (int i = 0; i < KGT_NODES; i++)
        if (e->pid[i] > 0)
            kill(e->pid[i], paused ? SIGSTOP : SIGCONT);
}

const char *kgt_write_conf(kgt_env *e, const char *name, const char *extra)
{
    static char path[400];
    char text[2048], redis[400];

    if (e->cluster) {
        int n = snprintf(redis, sizeof redis, "cluster ");
        for (int i = 0; i < KGT_NODES; i++)
            n += snprintf(redis + n, sizeof redis - (size_t)n, "%s127.0.0.1:%d", i ? "," : "",
                          e->port[i]);
    } else if (e->sentinel) {
        snprintf(redis, sizeof redis, "sentinel " KGT_MASTER " 127.0.0.1:%d,127.0.0.1:%d,127.0.0.1:%d",
                 e->sport[0], e->sport[1], e->sport[2]);
    } else {
        snprintf(redis, sizeof redis, "unix:%s", e->sock);
    }
    snprintf(path, sizeof path, "%s/%s", e->dir, name);
    snprintf(text, sizeof text,
             "# written by the libkeygate tests\n"
             "redis %s\n"
             "pepper_file %s\n"
             "key_prefix " KGT_PREFIX "\n"
             "timeout_ms 250\n"
             "cache_ttl_ms 1000\n"
             "%s",
             redis, e->pepper_file, extra != NULL ? extra : "");
    write_file(path, text, 0600);
    return path;
}

void kgt_setup(kgt_env *e, const char *conf_extra)
{
    char hex[KGC_PEPPER_LEN * 2 + 2];
    const char *topo = getenv("KEYGATE_TOPOLOGY");

    memset(e, 0, sizeof *e);
    if (topo != NULL && topo[0] != '\0' && strcmp(topo, "single") != 0) {
        if (strcmp(topo, "cluster") == 0) {
            e->cluster = 1;
        } else if (strcmp(topo, "sentinel") == 0) {
            e->sentinel = 1;
        } else {
            fprintf(stderr, "kgt: KEYGATE_TOPOLOGY=%s: not single, cluster or sentinel\n", topo);
            exit(1);
        }
    }
    current = e;
    owner = getpid();
    signal(SIGPIPE, SIG_DFL);   /* prove the library survives a host that does not ignore it */
    if (sodium_init() < 0)
        die("sodium_init");
    snprintf(e->dir, sizeof e->dir, "/tmp/kgtest.XXXXXX");
    if (mkdtemp(e->dir) == NULL)
        die("mkdtemp");
    snprintf(e->sock, sizeof e->sock, "%s/redis.sock", e->dir);
    snprintf(e->pepper_file, sizeof e->pepper_file, "%s/pepper", e->dir);
    randombytes_buf(e->pepper, sizeof e->pepper);
    sodium_bin2hex(hex, sizeof hex, e->pepper, sizeof e->pepper);
    strcat(hex, "\n");
    write_file(e->pepper_file, hex, 0600);
    if (e->cluster)
        cluster_create(e);
    else if (e->sentinel)
        sentinel_create(e);
    snprintf(e->conf, sizeof e->conf, "%s", kgt_write_conf(e, "keygate.conf", conf_extra));
    if (!e->cluster && !e->sentinel)
        kgt_redis_start(e);
}

void kgt_teardown(kgt_env *e)
{
    kgt_redis_stop(e);
    stop_pids(e->spid, 3);
    release_ports();
    if (e->dir[0] != '\0')
        nftw(e->dir, rm_one, 8, FTW_DEPTH | FTW_PHYS);
    e->dir[0] = '\0';
    if (current == e)
        current = NULL;
}

static redisReply *vcmd(kgt_env *e, const char *fmt, va_list ap)
{
    char *cmd = NULL;
    int len = redisvFormatCommand(&cmd, fmt, ap);
    redisReply *r = len > 0 ? routed(e, cmd, (size_t)len, NULL) : NULL;

    free(cmd);
    if (r == NULL) {
        fprintf(stderr, "kgt: redis command '%s' failed: %s\n", fmt,
                e->rc != NULL ? e->rc->errstr : "not connected");
        kgt_fail();
    }
    if (r->type == REDIS_REPLY_ERROR) {
        fprintf(stderr, "kgt: redis command '%s': %s\n", fmt, r->str);
        kgt_fail();
    }
    return r;
}

redisReply *kgt_cmd(kgt_env *e, const char *fmt, ...)
{
    va_list ap;
    redisReply *r;
    va_start(ap, fmt);
    r = vcmd(e, fmt, ap);
    va_end(ap);
    return r;
}

void kgt_do(kgt_env *e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    freeReplyObject(vcmd(e, fmt, ap));
    va_end(ap);
}

long long kgt_int(kgt_env *e, const char *fmt, ...)
{
    va_list ap;
    redisReply *r;
    long long v = 0;

    va_start(ap, fmt);
    r = vcmd(e, fmt, ap);
    va_end(ap);
    if (r->type == REDIS_REPLY_INTEGER)
        v = r->integer;
    else if (r->type == REDIS_REPLY_STRING)
        v = strtoll(r->str, NULL, 10);
    else if (r->type != REDIS_REPLY_NIL) {
        fprintf(stderr, "kgt: '%s' did not answer a number\n", fmt);
        kgt_fail();
    }
    freeReplyObject(r);
    return v;
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    char *buf;
    long n;

    if (f == NULL || fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0)
        die(path);
    rewind(f);
    buf = calloc(1, (size_t)n + 1);
    if (buf == NULL || fread(buf, 1, (size_t)n, f) != (size_t)n)
        die(path);
    fclose(f);
    return buf;
}

void kgt_catalog(kgt_env *e, const char *json)
{
    char *text = json != NULL ? strdup(json) : slurp(KGT_DATA_DIR "/catalog.json");
    kgt_do(e, "SET " KGT_PREFIX "catalog %s", text);
    kgt_do(e, "PUBLISH " KGT_PREFIX "inval catalog");
    free(text);
}

void kgt_team(kgt_env *e, char *team_out)
{
    char owner_id[KGC_ID_MAX];
    json_t *doc;
    char *text;

    kgc_id_team(team_out);
    kgc_id_user(owner_id);
    doc = json_pack("{s:s,s:s,s:{s:s},s:s,s:I}", "team_id", team_out, "name", "test team",
                    "members", owner_id, "owner", "free_key_id", "", "created_at",
                    (json_int_t)kgt_wall_ms());
    text = json_dumps(doc, JSON_COMPACT);
    kgt_do(e, "SET " KGT_PREFIX "{t:%s}:team %s", team_out, text);
    free(text);
    json_decref(doc);
}

void kgt_wallet(kgt_env *e, const char *team, int64_t balance, char *wallet_out)
{
    kgc_id_wallet(team, wallet_out);
    kgt_do(e, "HSET " KGT_PREFIX "{t:%s}:wallet:%s wallet_id %s team_id %s name %s "
              "balance_micros %lld created_at %lld",
           team, wallet_out, wallet_out, team, "test wallet", (long long)0,
           (long long)kgt_wall_ms());
    kgt_do(e, "ZADD " KGT_PREFIX "{t:%s}:wallets %lld %s", team, (long long)kgt_wall_ms(),
           wallet_out);
    if (balance > 0)
        kgt_credit(e, team, wallet_out, balance);
}

/* As the daemon's credit script: balance and ledger entry together. */
void kgt_credit(kgt_env *e, const char *team, const char *wallet, int64_t amount)
{
    static const char lua[] =
        "local b = redis.call('HINCRBY', KEYS[1], 'balance_micros', ARGV[1])\n"
        "redis.call('LPUSH', KEYS[2], '{\"type\":\"credit\",\"amount_micros\":' .. ARGV[1] ..\n"
        "  ',\"balance_micros\":' .. string.format('%d', b) .. ',\"at\":' .. ARGV[2] ..\n"
        "  ',\"reference\":' .. cjson.encode(ARGV[3]) .. ',\"actor\":\"u_test\"}')\n"
        "return b\n";
    char ref[64];

    snprintf(ref, sizeof ref, "test-%lld", (long long)kgt_wall_ms());
    kgt_do(e, "EVAL %s 2 " KGT_PREFIX "{t:%s}:wallet:%s " KGT_PREFIX "{t:%s}:ledger:%s %lld %lld %s",
           lua, team, wallet, team, wallet, (long long)amount, (long long)kgt_wall_ms(), ref);
}

void kgt_key(kgt_env *e, const char *team, const char *kind, const char *services,
             char *key_out)
{
    json_error_t je;
    json_t *svcs = json_loads(services != NULL ? services : "{}", 0, &je), *doc;
    int64_t now = kgt_wall_ms();

    if (svcs == NULL) {
        fprintf(stderr, "kgt: bad services JSON: %s\n", je.text);
        kgt_fail();
    }
    kgc_id_key(team, key_out);
    doc = json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:[],s:o,s:{},s:I,s:I}",
                    "key_id", key_out, "team_id", team, "name", "test key",
                    "description", "", "kind", kind, "status", "active", "users",
                    "services", svcs, "tokens", "created_at", (json_int_t)now,
                    "updated_at", (json_int_t)now);
    kgt_key_save(e, team, key_out, doc);
    kgt_do(e, "ZADD " KGT_PREFIX "{t:%s}:keys %lld %s", team, (long long)now, key_out);
    json_decref(doc);
}

json_t *kgt_key_doc(kgt_env *e, const char *team, const char *key)
{
    redisReply *r = kgt_cmd(e, "GET " KGT_PREFIX "{t:%s}:key:%s", team, key);
    json_t *doc = r->type == REDIS_REPLY_STRING ? json_loads(r->str, 0, NULL) : NULL;

    freeReplyObject(r);
    if (doc == NULL) {
        fprintf(stderr, "kgt: key %s has no document\n", key);
        kgt_fail();
    }
    return doc;
}

void kgt_key_save(kgt_env *e, const char *team, const char *key, json_t *doc)
{
    char *text = json_dumps(doc, JSON_COMPACT);
    kgt_do(e, "SET " KGT_PREFIX "{t:%s}:key:%s %s", team, key, text);
    free(text);
}

void kgt_hash(kgt_env *e, const char *tok, char *hex_out)
{
    if (kgc_token_hash_hex(e->pepper, tok, strlen(tok), hex_out) != 0) {
        fprintf(stderr, "kgt: hashing failed\n");
        kgt_fail();
    }
}

void kgt_token(kgt_env *e, const char *team, const char *key, const char *user,
               int64_t expires_ms, char *tok_out)
{
    char hex[KGC_HASH_HEX_LEN + 1], tid[KGC_ID_MAX], hint[KGC_HINT_MAX];
    json_t *doc = kgt_key_doc(e, team, key), *users = json_object_get(doc, "users");
    size_t i;

    if (kgc_token_generate(team, tok_out) != 0) {
        fprintf(stderr, "kgt: %s is not a team id\n", team);
        kgt_fail();
    }
    kgt_hash(e, tok_out, hex);
    kgc_token_hint(tok_out, KGC_TOKEN_LEN, hint);
    kgc_id_token(tid);
    for (i = 0; i < json_array_size(users); i++)
        if (strcmp(json_string_value(json_array_get(users, i)), user) == 0)
            break;
    if (i == json_array_size(users))
        json_array_append_new(users, json_string(user));
    json_object_set_new(json_object_get(doc, "tokens"), user,
                        json_pack("{s:s,s:s,s:s,s:I}", "token_id", tid, "hint", hint,
                                  "hash", hex, "created_at", (json_int_t)kgt_wall_ms()));
    kgt_key_save(e, team, key, doc);
    json_decref(doc);
    kgt_do(e, "HSET " KGT_PREFIX "{t:%s}:tok:%s key_id %s team_id %s user_id %s token_id %s expires_ms %lld",
           team, hex, key, team, user, tid, (long long)expires_ms);
}

void kgt_publish_key(kgt_env *e, const char *key)
{
    char msg[128];
    snprintf(msg, sizeof msg, "key %s", key);
    kgt_do(e, "PUBLISH " KGT_PREFIX "inval %s", msg);
}

void kgt_key_field(kgt_env *e, const char *team, const char *key, const char *name,
                   json_t *value)
{
    json_t *doc = kgt_key_doc(e, team, key);

    if (value != NULL)
        json_object_set_new(doc, name, value);
    else
        json_object_del(doc, name);
    kgt_key_save(e, team, key, doc);
    json_decref(doc);
    kgt_publish_key(e, key);
}

void kgt_revoke(kgt_env *e, const char *team, const char *key)
{
    json_t *doc = kgt_key_doc(e, team, key);
    json_object_set_new(doc, "status", json_string("revoked"));
    kgt_key_save(e, team, key, doc);
    json_decref(doc);
    kgt_publish_key(e, key);
}

void kgt_unassign(kgt_env *e, const char *team, const char *key, const char *user,
                  const char *tok)
{
    json_t *doc = kgt_key_doc(e, team, key), *users = json_object_get(doc, "users");
    char hex[KGC_HASH_HEX_LEN + 1];

    for (size_t i = 0; i < json_array_size(users); i++)
        if (strcmp(json_string_value(json_array_get(users, i)), user) == 0) {
            json_array_remove(users, i);
            break;
        }
    json_object_del(json_object_get(doc, "tokens"), user);
    kgt_key_save(e, team, key, doc);
    json_decref(doc);
    kgt_hash(e, tok, hex);
    kgt_do(e, "DEL " KGT_PREFIX "{t:%s}:tok:%s", team, hex);
    kgt_publish_key(e, key);
}

void kgt_rotate(kgt_env *e, const char *team, const char *key, const char *user,
                const char *old_tok, int64_t grace_ms, char *new_tok)
{
    char hex[KGC_HASH_HEX_LEN + 1];

    kgt_hash(e, old_tok, hex);
    if (grace_ms > 0) {
        int64_t at = kgt_wall_ms() + grace_ms;
        kgt_do(e, "HSET " KGT_PREFIX "{t:%s}:tok:%s expires_ms %lld", team, hex, (long long)at);
        kgt_do(e, "PEXPIREAT " KGT_PREFIX "{t:%s}:tok:%s %lld", team, hex, (long long)at);
    } else {
        kgt_do(e, "DEL " KGT_PREFIX "{t:%s}:tok:%s", team, hex);
    }
    kgt_token(e, team, key, user, 0, new_tok);
    kgt_publish_key(e, key);
}

void kgt_request(kgt_req *r, const char *tok, const char *service, const char *model,
                 const char *request_id, ...)
{
    va_list ap;
    const char *name;
    size_t n = 0;

    memset(r, 0, sizeof *r);
    r->req.token = tok;
    r->req.token_len = tok != NULL ? strlen(tok) : 0;
    r->req.service = service;
    r->req.model = model;
    r->req.request_id = request_id;
    va_start(ap, request_id);
    while (n < 4 && (name = va_arg(ap, const char *)) != NULL) {
        r->params[n].name = name;
        r->params[n].value = va_arg(ap, int64_t);
        n++;
    }
    va_end(ap);
    r->req.params = n > 0 ? r->params : NULL;
    r->req.nparams = n;
}

void kgt_world_make(kgt_env *e, kgt_world *w, int64_t balance)
{
    char svcs[512];

    kgt_team(e, w->team);
    kgt_wallet(e, w->team, balance, w->wallet);
    snprintf(svcs, sizeof svcs,
             "{\"text-generation\":{\"policy\":\"payg\",\"models\":[\"small\"],\"wallet\":\"%s\"},"
             "\"speech-to-text\":{\"policy\":\"free\"}}", w->wallet);
    kgt_key(e, w->team, "paid", svcs, w->key);
    kgc_id_user(w->user);
    kgt_token(e, w->team, w->key, w->user, 0, w->tok);
}

void kgt_catalog_field(kgt_env *e, const char *service, const char *field, json_t *value)
{
    char *text = slurp(KGT_DATA_DIR "/catalog.json"), *out;
    json_t *cat = json_loads(text, 0, NULL), *svcs = json_object_get(cat, "services"), *s;
    size_t i;

    json_array_foreach(svcs, i, s) {
        if (strcmp(json_string_value(json_object_get(s, "id")), service) != 0)
            continue;
        if (value != NULL)
            json_object_set(s, field, value);
        else
            json_object_del(s, field);
    }
    json_decref(value);
    out = json_dumps(cat, JSON_COMPACT);
    kgt_catalog(e, out);
    free(out);
    free(text);
    json_decref(cat);
}

void kgt_catalog_quota(kgt_env *e, const char *service, int64_t n)
{
    kgt_catalog_field(e, service, "free_quota",
                      n > 0 ? json_pack("{s:I}", "requests_per_day", (json_int_t)n) : NULL);
}

long long kgt_balance(kgt_env *e, const kgt_world *w)
{
    return kgt_int(e, "HGET " KGT_PREFIX "{t:%s}:wallet:%s balance_micros", w->team, w->wallet);
}

long long kgt_ledger_len(kgt_env *e, const kgt_world *w)
{
    return kgt_int(e, "LLEN " KGT_PREFIX "{t:%s}:ledger:%s", w->team, w->wallet);
}

void kgt_today(char *out)
{
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(out, 16, "%Y%m%d", &tm);
}

redisContext *kgt_connect(kgt_env *e)
{
    if (e->cluster || e->sentinel)
        return redisConnect("127.0.0.1", e->port[0]);
    return redisConnectUnix(e->sock);
}

int kgt_reconnect(kgt_env *e)
{
    if (e->cluster) {
        /* every node at once: the child's fd count stays what it is from
         * here on (test_chaos compares it after kg_close) */
        for (int i = 0; i < KGT_NODES; i++) {
            redisFree(e->nc[i]);      /* closes the child's copy of the fd only */
            if ((e->nc[i] = redisConnect("127.0.0.1", e->port[i])) != NULL && e->nc[i]->err) {
                redisFree(e->nc[i]);
                e->nc[i] = NULL;
            }
        }
    }
    e->rc = kgt_connect(e);
    return e->rc != NULL && !e->rc->err ? 0 : -1;
}

int kgt_nodes(kgt_env *e)
{
    return e->cluster ? KGT_NODES : 1;
}

redisReply *kgt_node_cmd(kgt_env *e, int i, const char *fmt, ...)
{
    redisContext *c = e->cluster ? node_conn(e, e->port[i]) : e->rc;
    redisReply *r;
    va_list ap;

    va_start(ap, fmt);
    r = c != NULL ? redisvCommand(c, fmt, ap) : NULL;
    va_end(ap);
    if (r == NULL || r->type == REDIS_REPLY_ERROR) {
        fprintf(stderr, "kgt: '%s' on node %d: %s\n", fmt, i,
                r != NULL ? r->str : c != NULL ? c->errstr : "not connected");
        kgt_fail();
    }
    return r;
}

/* On a cluster: the sum over every node. */
long long kgt_calls(kgt_env *e, const char *cmd)
{
    char pat[64];
    long long n = 0;

    snprintf(pat, sizeof pat, "cmdstat_%s:calls=", cmd);
    for (int i = 0; i < kgt_nodes(e); i++) {
        redisReply *r = kgt_node_cmd(e, i, "INFO commandstats");
        const char *p;

        if (r->type == REDIS_REPLY_STRING && (p = strstr(r->str, pat)) != NULL)
            n += strtoll(p + strlen(pat), NULL, 10);
        freeReplyObject(r);
    }
    return n;
}
