/*
 * webhook.h - low-balance alerts and their webhook deliveries.
 *
 *   wallet.alert.set ──► wallet hash: alert_threshold_micros, alert_below
 *                        P alertwallets (set of watched wallet ids)
 *
 *   every ALERT_TICK_MS (lease held)                   alert.c
 *     SSCAN P alertwallets, ALERT_BATCH at a time
 *       └► ALERT_LUA per wallet (its team's slot): crossed from >= threshold
 *          to < threshold? set alert_below=1 and alert_event=<event JSON>;
 *          back >= threshold? alert_below=0 (re-armed)
 *       └► an alert_event (new, or left over by a crash) is fanned out in
 *          one MULTI: a notification per owner/admin, the delivery record
 *          and its place in P whpending, HDEL alert_event. Exactly once:
 *          the MULTI runs whole or not at all, and until it has run the
 *          event stays on the wallet for the next pass.
 *
 *   every ALERT_TICK_MS, and after a fan-out                webhook.c
 *     ZRANGEBYSCORE P whpending -inf now: due deliveries, WEBHOOK_INFLIGHT
 *     at most at once; each an HTTP POST (libevent evhttp, never blocking
 *     the loop) signed with the team's secret; 2xx: delivered; otherwise
 *     retried after 1 s, 2 s, 4 s, ... (WEBHOOK_MAX_ATTEMPTS in all), with
 *     the same body and delivery id every time (receivers dedupe on it).
 *
 * Why the daemon polls instead of the debit script raising the alert: the
 * money scripts belong to libkeygate and run in every gateway; keeping them
 * one slot and one round trip (SPEC §5) leaves no room for a notification
 * fan-out to users' lists in other slots, nor for HTTP. So a crossing is
 * seen at the next pass, within ~ALERT_TICK_MS of the debit (longer only
 * when more than ALERT_BATCH wallets are watched: a pass then takes
 * several round trips, back to back).
 *
 * Only the daemon holding the lease (lease.h) detects and delivers.
 * Pending deliveries live in Redis, so a restart resumes them; a delivery
 * in flight when the daemon died is sent again with the same id.
 */
#ifndef KG_WEBHOOK_H
#define KG_WEBHOOK_H

#include <stddef.h>

#include "app.h"

/* Redis key shapes (prefix first), docs/redis-schema.md. */
#define WH_RK_ALERTWALLETS "alertwallets"     /* set: wallet ids with a threshold */
#define WH_RK_PENDING      "whpending"        /* zset: "<team> <delivery>" by next attempt ms */
#define WH_RK_HOOK         "{t:%s}:webhook"   /* hash: url, secret, created_at, updated_at */
#define WH_RK_DELIVERY     "{t:%s}:whd:%s"    /* hash: one delivery (below) */
#define WH_RK_DELIVERIES   "{t:%s}:whds"      /* zset: delivery ids by created_at */

#define ALERT_TICK_MS 1000
#define ALERT_BATCH 500                /* wallets checked per round trip */
#define WEBHOOK_INFLIGHT 16            /* HTTP requests at once */
#define WEBHOOK_MAX_ATTEMPTS 8         /* 1 s, 2 s, ... 64 s between them */
#define WEBHOOK_BACKOFF_MAX_MS 300000
#define WEBHOOK_TIMEOUT_S 10           /* per attempt */
#define WEBHOOK_KEEP_DELIVERIES 1000   /* listed per team; records expire after 30 days */
#define WEBHOOK_RECORD_TTL_MS "2592000000"
#define WEBHOOK_SECRET_PREFIX "whsec_"
#define WEBHOOK_SECRET_BYTES 32
#define WEBHOOK_SECRET_LEN (sizeof WEBHOOK_SECRET_PREFIX - 1 + 2 * WEBHOOK_SECRET_BYTES)
#define WEBHOOK_URL_MAX 2000

/* Starts the alert watcher and the deliverer (a timer on a->base). */
void webhook_start(app *a);
/* Stops both; requests in flight are dropped (resent after a restart). Accepts a->wh NULL. */
void webhook_stop(app *a);
/* Runs a delivery pass now (after a fan-out queued a delivery). */
void webhook_kick(app *a);

/* alert.c: one detection pass step, called by the timer (webhook.c). */
void alert_tick(app *a);
void alert_free(app *a);

/* "v1=" + hex HMAC-SHA256 of "<ts>.<body>" keyed with the secret's bytes
 * as shown to the owner. out: at least WEBHOOK_SIG_MAX bytes. */
#define WEBHOOK_SIG_MAX (3 + 64 + 1)
void webhook_sign(const char *secret, const char *ts, const char *body, size_t body_len,
                  char *out);

/* 0 if url is an http:// URL keygated can deliver to, else -1 with the
 * reason in err. */
int webhook_url_check(const char *url, char *err, size_t errlen);

#endif
