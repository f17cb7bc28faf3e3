/*
 * bench_admin - admin throughput of keygated over its Unix socket.
 *
 *   bench_admin [--keygated PATH] [--n N] [--depth D]
 *
 * Starts a private redis-server and keygated in a temp dir, signs up, then
 * measures, in the same run: `ping` one at a time (the baseline: one bare
 * round trip through the daemon), `key.create` and `token.generate` one at a
 * time and pipelined (D requests in flight). Prints ops/s and the ratio of
 * each to the ping baseline.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char dir[256];
static pid_t redis_pid, daemon_pid;
static FILE *in;
static int fd;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static pid_t spawn(char *const argv[], const char *log)
{
    pid_t p = fork();
    if (p == 0) {
        int l = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (l >= 0) {
            dup2(l, 1);
            dup2(l, 2);
        }
        execvp(argv[0], argv);
        _exit(127);
    }
    return p;
}

static int wait_socket(const char *path)
{
    for (int i = 0; i < 200; i++) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        int s = socket(AF_UNIX, SOCK_STREAM, 0);
        snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
        if (connect(s, (struct sockaddr *)&sa, sizeof sa) == 0)
            return s;
        close(s);
        usleep(20000);
    }
    return -1;
}

static void cleanup(void)
{
    char cmd[400];
    if (daemon_pid > 0) {
        kill(daemon_pid, SIGTERM);
        waitpid(daemon_pid, NULL, 0);
    }
    if (redis_pid > 0) {
        kill(redis_pid, SIGTERM);
        waitpid(redis_pid, NULL, 0);
    }
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (dir[0] && system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
}

static void send_line(const char *s)
{
    size_t n = strlen(s);
    while (n > 0) {
        ssize_t w = write(fd, s, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            perror("write");
            exit(1);
        }
        s += w;
        n -= (size_t)w;
    }
}

static json_t *read_reply(void)
{
    char *line = NULL;
    size_t cap = 0;
    json_t *r;
    if (getline(&line, &cap, in) <= 0) {
        fprintf(stderr, "daemon closed the connection\n");
        exit(1);
    }
    r = json_loads(line, 0, NULL);
    free(line);
    if (r == NULL || !json_is_true(json_object_get(r, "ok"))) {
        fprintf(stderr, "command failed: %s\n", r ? json_dumps(r, 0) : "bad JSON");
        exit(1);
    }
    return r;
}

typedef char *(*make_fn)(int i, void *ctx);

/* Runs n requests with at most depth in flight; returns ops/s. */
static double run(int n, int depth, make_fn make, void *ctx, json_t **results)
{
    int sent = 0, got = 0;
    double t0 = now_s();

    while (got < n) {
        while (sent < n && sent - got < depth) {
            char *line = make(sent, ctx);
            send_line(line);
            free(line);
            sent++;
        }
        json_t *r = read_reply();
        if (results != NULL)
            results[got] = json_incref(json_object_get(r, "result"));
        json_decref(r);
        got++;
    }
    return n / (now_s() - t0);
}

static char *make_ping(int i, void *ctx)
{
    char *s;
    (void)ctx;
    if (asprintf(&s, "{\"id\":%d,\"cmd\":\"ping\"}\n", i) < 0)
        exit(1);
    return s;
}

typedef struct { const char *actor, *team; json_t **keys; } bctx;

static char *make_create(int i, void *c)
{
    bctx *b = c;
    char *s;
    if (asprintf(&s, "{\"id\":%d,\"cmd\":\"key.create\",\"actor\":\"%s\",\"team\":\"%s\","
                 "\"name\":\"bench-%d\",\"users\":[\"%s\"]}\n", i, b->actor, b->team, i,
                 b->actor) < 0)
        exit(1);
    return s;
}

static char *make_token(int i, void *c)
{
    bctx *b = c;
    char *s;
    if (asprintf(&s, "{\"id\":%d,\"cmd\":\"token.generate\",\"actor\":\"%s\",\"key\":\"%s\"}\n",
                 i, b->actor, json_string_value(json_object_get(b->keys[i], "key_id"))) < 0)
        exit(1);
    return s;
}

int main(int argc, char **argv)
{
    const char *keygated = "keygated";
    int n = 20000, depth = 64;
    char path[400], conf[400], pepper[400], sock[400];
    FILE *f;
    json_t *r, **keys;
    bctx b;

    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--keygated")) keygated = argv[i + 1];
        else if (!strcmp(argv[i], "--n")) n = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--depth")) depth = atoi(argv[i + 1]);
    }
    snprintf(dir, sizeof dir, "/tmp/kgbench.XXXXXX");
    if (mkdtemp(dir) == NULL)
        return 1;
    atexit(cleanup);
    snprintf(sock, sizeof sock, "%s/redis.sock", dir);
    snprintf(pepper, sizeof pepper, "%s/pepper", dir);
    f = fopen(pepper, "w");
    srand((unsigned)time(NULL));
    for (int i = 0; i < 64; i++)
        fputc("0123456789abcdef"[rand() % 16], f);
    fclose(f);
    chmod(pepper, 0600);
    snprintf(conf, sizeof conf, "%s/kg.conf", dir);
    f = fopen(conf, "w");
    fprintf(f, "socket %s/kg.sock\ncatalog %s\nredis unix:%s\npepper_file %s\n", dir,
            CATALOG_PATH, sock, pepper);
    fclose(f);
    {
        char *rargv[] = {"redis-server", "--port", "0", "--unixsocket", sock, "--save", "",
                         "--appendonly", "no", NULL};
        snprintf(path, sizeof path, "%s/redis.log", dir);
        redis_pid = spawn(rargv, path);
        close(wait_socket(sock));
    }
    {
        char *dargv[] = {(char *)keygated, "--config", conf, NULL};
        snprintf(path, sizeof path, "%s/keygated.log", dir);
        daemon_pid = spawn(dargv, path);
        snprintf(path, sizeof path, "%s/kg.sock", dir);
        fd = wait_socket(path);
        if (fd < 0) {
            fprintf(stderr, "keygated did not start (see %s/keygated.log)\n", dir);
            return 1;
        }
        usleep(100000);   /* let it connect to Redis */
        in = fdopen(dup(fd), "r");
    }
    send_line("{\"cmd\":\"user.signup\",\"email\":\"bench@example.com\",\"name\":\"Bench\"}\n");
    r = read_reply();
    b.actor = strdup(json_string_value(json_object_get(json_object_get(r, "result"), "user_id")));
    b.team = strdup(json_string_value(json_object_get(json_object_get(r, "result"), "team_id")));
    json_decref(r);

    keys = calloc((size_t)n * 2, sizeof *keys);
    run(2000, depth, make_ping, NULL, NULL);                     /* warm-up */
    double ping1 = run(n, 1, make_ping, NULL, NULL);
    double pingp = run(n, depth, make_ping, NULL, NULL);
    double kc1 = run(n / 4, 1, make_create, &b, keys);
    double kcp = run(n, depth, make_create, &b, keys + n / 4);
    b.keys = keys;
    double tg1 = run(n / 4, 1, make_token, &b, NULL);
    b.keys = keys + n / 4;
    double tgp = run(n, depth, make_token, &b, NULL);

    printf("keygated admin throughput (2 cores, Redis on a Unix socket, pipeline depth %d)\n", depth);
    printf("%-34s %12s %10s\n", "command", "ops/s", "vs ping");
    printf("%-34s %12.0f %10.2f\n", "ping, one at a time (baseline)", ping1, 1.0);
    printf("%-34s %12.0f %10.2f\n", "ping, pipelined", pingp, pingp / ping1);
    printf("%-34s %12.0f %10.2f\n", "key.create, one at a time", kc1, kc1 / ping1);
    printf("%-34s %12.0f %10.2f\n", "key.create, pipelined", kcp, kcp / ping1);
    printf("%-34s %12.0f %10.2f\n", "token.generate, one at a time", tg1, tg1 / ping1);
    printf("%-34s %12.0f %10.2f\n", "token.generate, pipelined", tgp, tgp / ping1);
    printf("goal: key.create pipelined >= 10000/s: %s\n", kcp >= 10000 ? "met" : "NOT met");
    return 0;
}
