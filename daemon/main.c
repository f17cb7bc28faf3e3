/*
 * main.c - keygated: the admin daemon.
 *
 *   keygated --config FILE
 *
 * Runs in the foreground, logs to stderr, stops cleanly on SIGTERM/SIGINT,
 * reloads the catalog on SIGHUP (a bad catalog is refused, the old one keeps
 * serving). Under systemd (Type=notify) it reports READY/RELOADING/STOPPING
 * (sdnotify.h).
 */
#include "app.h"
#include "archive.h"
#include "cmd.h"
#include "http.h"
#include "lease.h"
#include "log.h"
#include "sdnotify.h"
#include "server.h"
#include "webhook.h"

#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void on_stop(evutil_socket_t sig, short what, void *arg)
{
    app *a = arg;
    (void)what;
    log_info("signal %d: stopping", (int)sig);
    sdnotify("STOPPING=1");
    event_base_loopbreak(a->base);
}

static void on_hup(evutil_socket_t sig, short what, void *arg)
{
    app *a = arg;
    char err[512];
    (void)sig;
    (void)what;
    sdnotify_reloading();
    if (catalog_reload(a, err, sizeof err) != 0)
        log_err("catalog reload refused, keeping the old catalog: %s", err);
    else
        log_info("catalog reloaded from %s", a->cfg.catalog_path);
    sdnotify("READY=1");        /* taken or refused, the daemon serves */
}

static void on_connected(void *arg)
{
    lease_renew(arg);
    catalog_publish(arg);
    job_limbo_resolve(arg);
}

static int usage(void)
{
    fprintf(stderr, "usage: keygated --config FILE\n");
    return 2;
}

int main(int argc, char **argv)
{
    app a;
    char err[512];
    server *srv;
    http_srv *web = NULL, *mx = NULL;
    struct event *sigs[4];
    int rc = 0;

    memset(&a, 0, sizeof a);
    if (argc != 3 || strcmp(argv[1], "--config") != 0)
        return usage();
    snprintf(a.config_path, sizeof a.config_path, "%s", argv[2]);
    if (sodium_init() < 0) {
        fprintf(stderr, "keygated: libsodium failed to initialise\n");
        return 1;
    }
    if (kgc_config_load(a.config_path, &a.cfg, err, sizeof err) != 0 ||
        kgc_pepper_load(a.cfg.pepper_file, &a.pepper, err, sizeof err) != 0) {
        fprintf(stderr, "keygated: %s\n", err);
        return 1;
    }
    if (a.cfg.catalog_path[0] == '\0' ||
        (a.cat = kgc_catalog_load(a.cfg.catalog_path, err, sizeof err)) == NULL) {
        fprintf(stderr, "keygated: %s\n", a.cfg.catalog_path[0] ? err : "no 'catalog' in the config");
        sodium_free(a.pepper);
        return 1;
    }
    log_set_json(a.cfg.log_format == KGC_LOG_JSON);
    signal(SIGPIPE, SIG_IGN);
    a.base = event_base_new();
    if (a.base == NULL)
        oom("event_base_new");
    a.st = store_new(a.base, &a.cfg);
    a.wk = worker_new(a.base);
    store_on_connect(a.st, on_connected, &a);
    srv = server_new(a.base, &a.cfg, job_dispatch, &a, err, sizeof err);
    if (srv == NULL) {
        fprintf(stderr, "keygated: %s\n", err);
        rc = 1;
        goto out;
    }
    if (a.cfg.http_listen[0] != '\0' && (web = http_new(&a, err, sizeof err)) == NULL) {
        fprintf(stderr, "keygated: %s\n", err);
        rc = 1;
        goto out;
    }
    if (a.cfg.metrics_listen[0] != '\0' && (mx = http_metrics_new(&a, err, sizeof err)) == NULL) {
        fprintf(stderr, "keygated: %s\n", err);
        rc = 1;
        goto out;
    }
    sigs[0] = evsignal_new(a.base, SIGTERM, on_stop, &a);
    sigs[1] = evsignal_new(a.base, SIGINT, on_stop, &a);
    sigs[2] = evsignal_new(a.base, SIGHUP, on_hup, &a);
    sigs[3] = NULL;
    for (int i = 0; sigs[i]; i++)
        evsignal_add(sigs[i], NULL);
    lease_start(&a);
    webhook_start(&a);      /* low-balance alerts and webhooks: only while the lease is ours */
    archive_start(&a);      /* the ledger archive: only while the lease is ours */
    log_info("listening on %s", a.cfg.socket_path);
    /* READY=1 comes from lease.c: once this daemon knows who runs the background work. */
    event_base_dispatch(a.base);
    for (int i = 0; sigs[i]; i++)
        event_free(sigs[i]);
out:
    lease_stop(&a);
    job_abort_all(&a);       /* also answers commands still in limbo */
    archive_quiesce(&a);    /* joins the archiver threads (a batch in flight ends) */
    worker_free(a.wk);      /* finishes password checks in flight */
    store_free(a.st);       /* fails commands in flight: they answer unavailable */
    a.st = NULL;
    webhook_stop(&a);       /* after store_free: its failed batches call back into it */
    archive_free(&a);       /* likewise */
    job_abort_all(&a);
    server_free(srv);
    http_free(mx);
    http_free(web);         /* last: the jobs above answered to its requests */
    json_decref(a.written);
    kgc_catalog_free(a.cat);
    sodium_free(a.pepper);
    event_base_free(a.base);
    log_info("stopped");
    return rc;
}
