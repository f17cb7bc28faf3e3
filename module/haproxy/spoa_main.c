/*
 * spoa_main.c - keygate-spoa: options, the listening socket, signals.
 *
 *   keygate-spoa --config FILE --listen ADDRESS [--max-frame-size N]
 *                [--max-conns N] [--socket-mode MODE] [--verbose]
 *
 * ADDRESS is HOST:PORT (an IPv4 address, or [IPv6]:PORT) or unix:PATH.
 * Runs in the foreground and logs to stderr. SIGTERM/SIGINT: stop
 * accepting, let the requests waiting for Redis answer, say
 * AGENT-DISCONNECT on every connection, exit 0 (at most 5 s later).
 */
#include "spoa.h"

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/listener.h>

#define SPOA_STOP_GRACE_S 5

spoa_agent spoa;

static char *unix_path;                 /* to unlink at exit */
static int listener_paused;
static struct event *grace_timer;

void spoa_log(const char *level, const char *fmt, ...)
{
    char line[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "keygate-spoa: %s: %s\n", level, line);
}

void spoa_conn_gone(void)
{
    if (spoa.stopping) {
        if (spoa.nconns == 0)
            event_base_loopbreak(spoa.base);
        return;
    }
    if (listener_paused && spoa.nconns < spoa.max_conns) {
        evconnlistener_enable(spoa.listener);
        listener_paused = 0;
    }
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                      int salen, void *arg)
{
    char peer[64] = "unix";
    char host[INET6_ADDRSTRLEN];

    (void)l;
    (void)salen;
    (void)arg;
    if (sa->sa_family == AF_INET &&
        inet_ntop(AF_INET, &((struct sockaddr_in *)sa)->sin_addr, host, sizeof host) != NULL)
        snprintf(peer, sizeof peer, "%s:%u", host, ntohs(((struct sockaddr_in *)sa)->sin_port));
    else if (sa->sa_family == AF_INET6 &&
             inet_ntop(AF_INET6, &((struct sockaddr_in6 *)sa)->sin6_addr, host, sizeof host) != NULL)
        snprintf(peer, sizeof peer, "[%s]:%u", host, ntohs(((struct sockaddr_in6 *)sa)->sin6_port));
    if (spoa_conn_new(fd, peer) != 0)
        spoa_log("error", "%s: out of memory for a new connection", peer);
    if (spoa.nconns >= spoa.max_conns && !listener_paused) {
        spoa_log("warning", "%u connections: not accepting more until one closes", spoa.nconns);
        evconnlistener_disable(spoa.listener);
        listener_paused = 1;
    }
}

static void on_accept_error(struct evconnlistener *l, void *arg)
{
    (void)l;
    (void)arg;
    /* EMFILE & co.: logged; the listener retries on the next event */
    spoa_log("error", "accept: %s", strerror(errno));
}

static void on_grace(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    spoa_log("warning", "requests still waiting after %d s: closing anyway", SPOA_STOP_GRACE_S);
    event_base_loopbreak(spoa.base);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    static const struct timeval grace = {SPOA_STOP_GRACE_S, 0};

    (void)what;
    (void)arg;
    if (spoa.stopping)
        return;
    spoa_log("info", "signal %d: stopping", (int)sig);
    spoa.stopping = 1;
    evconnlistener_disable(spoa.listener);
    if (spoa.nconns == 0) {
        event_base_loopbreak(spoa.base);
        return;
    }
    grace_timer = evtimer_new(spoa.base, on_grace, NULL);
    if (grace_timer != NULL)
        evtimer_add(grace_timer, &grace);
    spoa_conn_stop_all();
}

/* Binds ADDRESS; returns the listener or NULL (err says why). */
static struct evconnlistener *listen_on(const char *addr, mode_t mode, char *err, size_t errlen)
{
    const unsigned flags = LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC;
    struct sockaddr_storage ss;
    int sslen = sizeof ss;
    struct evconnlistener *l;

    memset(&ss, 0, sizeof ss);
    if (strncmp(addr, "unix:", 5) == 0) {
        struct sockaddr_un *sun = (struct sockaddr_un *)&ss;
        const char *path = addr + 5;
        struct stat st;

        if (*path == '\0' || strlen(path) >= sizeof sun->sun_path) {
            snprintf(err, errlen, "bad Unix socket path in \"%s\"", addr);
            return NULL;
        }
        /* a socket left by a previous run; never another kind of file */
        if (lstat(path, &st) == 0) {
            if (!S_ISSOCK(st.st_mode)) {
                snprintf(err, errlen, "%s exists and is not a socket", path);
                return NULL;
            }
            unlink(path);
        }
        sun->sun_family = AF_UNIX;
        memcpy(sun->sun_path, path, strlen(path) + 1);
        l = evconnlistener_new_bind(spoa.base, on_accept, NULL, flags, 1024,
                                    (struct sockaddr *)sun, (int)sizeof *sun);
        if (l == NULL) {
            snprintf(err, errlen, "cannot listen on %s: %s", addr, strerror(errno));
            return NULL;
        }
        if (chmod(path, mode) != 0) {
            snprintf(err, errlen, "chmod %s: %s", path, strerror(errno));
            evconnlistener_free(l);
            unlink(path);
            return NULL;
        }
        unix_path = strdup(path);
        return l;
    }
    if (evutil_parse_sockaddr_port(addr, (struct sockaddr *)&ss, &sslen) != 0 ||
        (ss.ss_family != AF_INET && ss.ss_family != AF_INET6) ||
        ((struct sockaddr_in *)&ss)->sin_port == 0) {
        snprintf(err, errlen, "bad address \"%s\" (HOST:PORT, [IPV6]:PORT or unix:PATH)", addr);
        return NULL;
    }
    l = evconnlistener_new_bind(spoa.base, on_accept, NULL, flags, 1024,
                                (struct sockaddr *)&ss, sslen);
    if (l == NULL)
        snprintf(err, errlen, "cannot listen on %s: %s", addr, strerror(errno));
    return l;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: keygate-spoa --config FILE --listen ADDRESS [options]\n"
            "  -c, --config FILE        keygate config file (the format of keygate.conf(5))\n"
            "  -l, --listen ADDRESS     HOST:PORT, [IPV6]:PORT or unix:PATH\n"
            "  -f, --max-frame-size N   largest SPOP frame accepted (256..%u, default %u)\n"
            "  -m, --max-conns N        connections from haproxy at once (default 1024)\n"
            "  -s, --socket-mode MODE   mode of a Unix socket (octal, default 0660)\n"
            "  -v, --verbose            log connections and handshakes\n"
            "  -h, --help\n",
            (unsigned)(1u << 24), (unsigned)SPOA_DEFAULT_FRAME);
}

static int parse_uint(const char *s, unsigned long min, unsigned long max, int base,
                      unsigned long *out)
{
    char *e;
    unsigned long v;

    errno = 0;
    v = strtoul(s, &e, base);
    if (errno != 0 || e == s || *e != '\0' || s[0] == '-' || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"listen", required_argument, NULL, 'l'},
        {"max-frame-size", required_argument, NULL, 'f'},
        {"max-conns", required_argument, NULL, 'm'},
        {"socket-mode", required_argument, NULL, 's'},
        {"verbose", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *config = NULL, *listen_addr = NULL;
    unsigned long v, mode = 0660;
    struct event *sigterm = NULL, *sigint = NULL;
    struct spoa_conn *c;
    char err[512];
    int opt, rc = 1;

    spoa.max_frame_size = SPOA_DEFAULT_FRAME;
    spoa.max_conns = 1024;
    TAILQ_INIT(&spoa.conns);

    while ((opt = getopt_long(argc, argv, "c:l:f:m:s:vh", opts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            config = optarg;
            break;
        case 'l':
            listen_addr = optarg;
            break;
        case 'f':
            if (parse_uint(optarg, SPOP_MIN_FRAME_SIZE, 1u << 24, 10, &v) != 0) {
                fprintf(stderr, "keygate-spoa: --max-frame-size: 256..16777216\n");
                return 2;
            }
            spoa.max_frame_size = (uint32_t)v;
            break;
        case 'm':
            if (parse_uint(optarg, 1, 1000000, 10, &v) != 0) {
                fprintf(stderr, "keygate-spoa: --max-conns: 1..1000000\n");
                return 2;
            }
            spoa.max_conns = (unsigned)v;
            break;
        case 's':
            if (parse_uint(optarg, 0, 0777, 8, &v) != 0) {
                fprintf(stderr, "keygate-spoa: --socket-mode: an octal mode, e.g. 0660\n");
                return 2;
            }
            mode = v;
            break;
        case 'v':
            spoa.verbose = 1;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (config == NULL || listen_addr == NULL || optind != argc) {
        usage(stderr);
        return 2;
    }
    if (kg_abi_version() != KG_ABI_VERSION) {
        fprintf(stderr, "keygate-spoa: libkeygate ABI %d, built for %d\n", kg_abi_version(),
                KG_ABI_VERSION);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);

    spoa.base = event_base_new();
    if (spoa.base == NULL) {
        fprintf(stderr, "keygate-spoa: event_base_new failed\n");
        return 1;
    }
    err[0] = '\0';
    spoa.kg = kg_open(config, err, sizeof err);
    if (spoa.kg == NULL) {
        spoa_log("error", "%s: %s", config, err);
        goto out;
    }
    if (spoa_loop_attach() != 0) {
        spoa_log("error", "cannot attach libkeygate to the event loop");
        goto out;
    }
    spoa.listener = listen_on(listen_addr, (mode_t)mode, err, sizeof err);
    if (spoa.listener == NULL) {
        spoa_log("error", "%s", err);
        goto out;
    }
    evconnlistener_set_error_cb(spoa.listener, on_accept_error);
    sigterm = evsignal_new(spoa.base, SIGTERM, on_signal, NULL);
    sigint = evsignal_new(spoa.base, SIGINT, on_signal, NULL);
    if (sigterm == NULL || sigint == NULL || evsignal_add(sigterm, NULL) != 0 ||
        evsignal_add(sigint, NULL) != 0) {
        spoa_log("error", "cannot install signal handlers");
        goto out;
    }
    spoa_log("info", "listening on %s (max-frame-size %u)", listen_addr,
             (unsigned)spoa.max_frame_size);

    event_base_dispatch(spoa.base);
    rc = 0;
    spoa_log("info", "stopped");

out:
    while ((c = TAILQ_FIRST(&spoa.conns)) != NULL)
        spoa_conn_free(c);
    if (spoa.listener != NULL)
        evconnlistener_free(spoa.listener);
    if (unix_path != NULL) {
        unlink(unix_path);
        free(unix_path);
    }
    kg_close(spoa.kg);                  /* calls the watch hook: before spoa_loop_free */
    spoa.kg = NULL;
    spoa_loop_free();
    if (grace_timer != NULL)
        event_free(grace_timer);
    if (sigterm != NULL)
        event_free(sigterm);
    if (sigint != NULL)
        event_free(sigint);
    event_base_free(spoa.base);
    return rc;
}
