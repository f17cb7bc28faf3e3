/*
 * sdnotify.c - the sd_notify(3) protocol, by hand: one datagram of
 * "NAME=value\n..." to the AF_UNIX socket named by $NOTIFY_SOCKET, a path
 * ("/run/systemd/notify") or, with a leading '@', an abstract name.
 * systemd accepts it from the main PID (NotifyAccess=main, the default),
 * which is us: keygated does not fork.
 */
#include "sdnotify.h"
#include "log.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

int sdnotify(const char *state)
{
    const char *path = getenv("NOTIFY_SOCKET");
    struct sockaddr_un sa;
    size_t n;
    socklen_t salen;
    ssize_t sent;
    int fd, e;

    if (path == NULL || path[0] == '\0')
        return 0;
    n = strlen(path);
    if ((path[0] != '/' && path[0] != '@') || n >= sizeof sa.sun_path) {
        log_err("NOTIFY_SOCKET: not a Unix socket path or abstract name, '%s' not sent", state);
        return -1;
    }
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, n);
    if (path[0] == '@')
        sa.sun_path[0] = '\0';     /* abstract: no terminating NUL counted */
    salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (path[0] == '/'));
    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        log_err("NOTIFY_SOCKET: socket: %s", strerror(errno));
        return -1;
    }
    sent = sendto(fd, state, strlen(state), MSG_NOSIGNAL | MSG_DONTWAIT,
                  (struct sockaddr *)&sa, salen);
    e = errno;
    close(fd);
    if (sent < 0) {
        log_err("NOTIFY_SOCKET %s: '%s' not sent: %s", path, state, strerror(e));
        return -1;
    }
    return 0;
}

int sdnotify_reloading(void)
{
    struct timespec ts;
    char msg[64];

    clock_gettime(CLOCK_MONOTONIC, &ts);
    snprintf(msg, sizeof msg, "RELOADING=1\nMONOTONIC_USEC=%llu",
             (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000ULL);
    return sdnotify(msg);
}
