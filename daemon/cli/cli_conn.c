/*
 * cli_conn.c - the admin socket transport of the keygate CLI.
 */
#include "cli_conn.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sodium.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* An answer can be large (a ledger of 1000 entries, a team's keys), but a
 * line beyond this is a broken peer, not an answer. */
#define CONN_MAX_ANSWER (64u * 1024 * 1024)

struct cli_conn {
    int fd;                       /* non-blocking stream socket */
    int timeout_ms;               /* per wait for the connect, a write, an answer */
    long long next_id;            /* id of the next request */
    char *buf;                    /* received bytes not consumed yet; owned */
    size_t len, cap;
};

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits until fd is ready for events or the deadline passes. 1 ready,
 * 0 timed out, -1 error (errno). */
static int wait_fd(int fd, short events, long long deadline)
{
    for (;;) {
        long long left = deadline - now_ms();
        struct pollfd p = {.fd = fd, .events = events};
        int rc;

        if (left <= 0)
            return 0;
        rc = poll(&p, 1, left > INT32_MAX ? INT32_MAX : (int)left);
        if (rc < 0 && errno == EINTR)
            continue;
        return rc < 0 ? -1 : (rc > 0 ? 1 : 0);
    }
}

cli_conn *cli_conn_open(const char *path, int timeout_ms, char *err, size_t errlen)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    long long deadline = now_ms() + timeout_ms;
    cli_conn *c;
    int fd, rc;

    if (strlen(path) >= sizeof sa.sun_path) {
        snprintf(err, errlen, "socket path too long: %s", path);
        return NULL;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);

    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return NULL;
    }
    /* A Unix stream connect either completes at once or, with a full
     * backlog, fails with EAGAIN: retry until the deadline then. */
    for (;;) {
        rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
        if (rc == 0 || errno == EISCONN)
            break;
        if (errno == EINTR)
            continue;
        if (errno == EINPROGRESS) {
            int soerr = 0;
            socklen_t sl = sizeof soerr;
            if (wait_fd(fd, POLLOUT, deadline) <= 0) {
                snprintf(err, errlen, "cannot connect to %s: timed out", path);
                goto fail;
            }
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
            if (soerr == 0)
                break;
            errno = soerr;
        }
        if (errno == EAGAIN && now_ms() < deadline) {
            usleep(10000);
            continue;
        }
        snprintf(err, errlen, "cannot connect to %s: %s", path,
                 errno == EAGAIN ? "daemon busy (timed out)" : strerror(errno));
        goto fail;
    }

    c = calloc(1, sizeof *c);
    if (c == NULL) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    c->fd = fd;
    c->timeout_ms = timeout_ms;
    c->next_id = 1;
    return c;

fail:
    close(fd);
    return NULL;
}

static int send_all(cli_conn *c, const char *p, size_t n, char *err, size_t errlen)
{
    long long deadline = now_ms() + c->timeout_ms;

    while (n > 0) {
        ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int rc = wait_fd(c->fd, POLLOUT, deadline);
            if (rc > 0)
                continue;
            snprintf(err, errlen, "sending to the daemon: %s",
                     rc == 0 ? "timed out" : strerror(errno));
            return -1;
        }
        snprintf(err, errlen, "sending to the daemon: %s",
                 errno == EPIPE ? "connection closed by the daemon" : strerror(errno));
        return -1;
    }
    return 0;
}

/* Grows the buffer, wiping the old copy: it may hold an earlier answer. */
static int grow(cli_conn *c, size_t need)
{
    size_t cap = c->cap ? c->cap : 4096;
    char *nb;

    while (cap < need)
        cap *= 2;
    if (cap == c->cap)
        return 0;
    nb = malloc(cap);
    if (nb == NULL)
        return -1;
    if (c->buf) {
        memcpy(nb, c->buf, c->len);
        sodium_memzero(c->buf, c->cap);
        free(c->buf);
    }
    c->buf = nb;
    c->cap = cap;
    return 0;
}

/* Reads until buf holds a full line; returns its length (without '\n'),
 * or -1 with err set. */
static long read_line(cli_conn *c, char *err, size_t errlen)
{
    char scratch[8];

    if (err == NULL) {          /* the caller already has its error */
        err = scratch;
        errlen = sizeof scratch;
    }
    long long deadline = now_ms() + c->timeout_ms;
    size_t scanned = 0;

    for (;;) {
        char *nl = c->len > scanned ? memchr(c->buf + scanned, '\n', c->len - scanned) : NULL;
        ssize_t r;

        if (nl != NULL)
            return (long)(nl - c->buf);
        scanned = c->len;
        if (c->len >= CONN_MAX_ANSWER) {
            snprintf(err, errlen, "answer from the daemon is over %u bytes", CONN_MAX_ANSWER);
            return -1;
        }
        if (c->cap - c->len < 4096 && grow(c, c->len + 4096) < 0) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        r = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
        if (r > 0) {
            c->len += (size_t)r;
            continue;
        }
        if (r == 0) {
            snprintf(err, errlen, "the daemon closed the connection without answering");
            return -1;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            int rc = wait_fd(c->fd, POLLIN, deadline);
            if (rc > 0)
                continue;
            if (rc == 0)
                snprintf(err, errlen, "no answer from the daemon within %d ms", c->timeout_ms);
            else
                snprintf(err, errlen, "waiting for the daemon: %s", strerror(errno));
            return -1;
        }
        snprintf(err, errlen, "reading from the daemon: %s", strerror(errno));
        return -1;
    }
}

json_t *cli_conn_roundtrip(cli_conn *c, json_t *req, char *err, size_t errlen)
{
    long long id = c->next_id++;
    json_t *ans = NULL, *aid;
    json_error_t jerr;
    char *line;
    long n;
    int rc;

    if (json_object_set_new(req, "id", json_integer(id)) < 0 ||
        (line = json_dumps(req, JSON_COMPACT)) == NULL) {
        snprintf(err, errlen, "cannot encode the request");
        return NULL;
    }
    /* json_dumps never emits a raw newline (strings are escaped), so the
     * request is exactly one line. */
    rc = send_all(c, line, strlen(line), err, errlen);
    free(line);
    if (rc == 0)
        rc = send_all(c, "\n", 1, err, errlen);
    n = read_line(c, rc == 0 ? err : NULL, rc == 0 ? errlen : 0);
    /* A daemon that refuses a request (say, a line over its limit) may
     * answer and hang up before reading all of it: its answer beats our
     * "broken pipe". */
    if (n < 0)
        return NULL;
    ans = json_loadb(c->buf, (size_t)n, JSON_DISABLE_EOF_CHECK, &jerr);
    /* Consume the line and wipe it: it may have carried a token. */
    sodium_memzero(c->buf, (size_t)n + 1);
    memmove(c->buf, c->buf + n + 1, c->len - (size_t)n - 1);
    sodium_memzero(c->buf + c->len - (size_t)n - 1, (size_t)n + 1);
    c->len -= (size_t)n + 1;

    if (ans == NULL || !json_is_object(ans)) {
        snprintf(err, errlen, "the daemon's answer is not a JSON object%s%s",
                 ans == NULL ? ": " : "", ans == NULL ? jerr.text : "");
        json_decref(ans);
        return NULL;
    }
    aid = json_object_get(ans, "id");
    if (aid != NULL && !json_is_null(aid) &&
        !(json_is_integer(aid) && json_integer_value(aid) == id)) {
        snprintf(err, errlen, "the daemon answered another request (id mismatch)");
        json_decref(ans);
        return NULL;
    }
    if (!json_is_boolean(json_object_get(ans, "ok"))) {
        snprintf(err, errlen, "the daemon's answer has no \"ok\" field");
        json_decref(ans);
        return NULL;
    }
    return ans;
}

void cli_conn_close(cli_conn *c)
{
    if (c == NULL)
        return;
    if (c->fd >= 0)
        close(c->fd);
    if (c->buf) {
        sodium_memzero(c->buf, c->cap);
        free(c->buf);
    }
    free(c);
}
