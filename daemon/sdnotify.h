/*
 * sdnotify.h - service readiness for systemd's Type=notify, without
 * libsystemd (the protocol is one datagram per message: sd_notify(3)).
 *
 * The daemon says READY=1 once its admin socket listens, RELOADING=1 when a
 * SIGHUP reload begins (then READY=1 when it is over, taken or refused) and
 * STOPPING=1 when a stop signal arrives. Outside systemd ($NOTIFY_SOCKET
 * unset) every call does nothing.
 *
 * A failed send is logged and otherwise ignored: a lost notification is
 * systemd's start timeout to handle, never a reason to stop serving.
 */
#ifndef KG_SDNOTIFY_H
#define KG_SDNOTIFY_H

/* Sends state (e.g. "READY=1", newline-separated assignments) to
 * $NOTIFY_SOCKET. Returns 0 when sent or when there is no socket, -1 on
 * an error (logged). Called on the loop's thread only; never blocks: the
 * socket is a datagram socket sent to with MSG_DONTWAIT. */
int sdnotify(const char *state);

/* "RELOADING=1" with MONOTONIC_USEC=<now> (what systemd >= 253 asks of
 * Type=notify-reload services; older ones ignore the extra field). */
int sdnotify_reloading(void);

#endif
