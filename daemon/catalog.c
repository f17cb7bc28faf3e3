/*
 * catalog.c - the service catalog: loaded at start, reloaded on SIGHUP,
 * published to Redis for the gateway module.
 */
#include "metrics.h"
#include "app.h"
#include "kgc_keys.h"
#include "log.h"

#include <stdlib.h>

static void ignore(void *arg, int ok, json_t *replies)
{
    (void)arg;
    if (!ok)
        log_warn("could not publish the catalog; will retry on reconnect");
    json_decref(replies);
}

void catalog_publish(app *a)
{
    char key[KGC_RKEY_MAX], chan[KGC_RKEY_MAX];
    char *text;
    json_t *cmds;

    if (a->cat == NULL || !store_connected(a->st))
        return;
    kgc_rkey(key, a->cfg.key_prefix, KGC_RK_CATALOG);
    kgc_rkey(chan, a->cfg.key_prefix, KGC_RK_CHANNEL);
    text = json_dumps(a->cat->json, JSON_COMPACT);
    if (text == NULL)
        oom("json_dumps");
    cmds = json_pack("[[s,s,s],[s,s,s]]", "SET", key, text, "PUBLISH", chan, "catalog");
    store_exec(a->st, cmds, 1, ignore, NULL);
    json_decref(cmds);
    free(text);
}

int catalog_reload(app *a, char *err, size_t errlen)
{
    kgc_catalog *cat;

    if (a->cfg.catalog_path[0] == '\0') {
        snprintf(err, errlen, "no 'catalog' in the config");
        return -1;
    }
    cat = kgc_catalog_load(a->cfg.catalog_path, err, errlen);
    if (cat == NULL) {
        metrics_count(MX_CATALOG_RELOAD_FAILURES);
        return -1;
    }
    metrics_count(MX_CATALOG_RELOADS);
    kgc_catalog_free(a->cat);
    a->cat = cat;
    catalog_publish(a);
    return 0;
}
