/*
 * libFuzzer target: an admin request line through the daemon's parser,
 * the command table's argument checks, the role rules and every handler,
 * against a stub store (stub_store.c).
 */
#include "app.h"
#include "cmd.h"

#include <sodium.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

void stub_store_drain(void);

static app the_app;
static int answered;

static void on_answer(void *ctx, json_t *response, int secret)
{
    (void)ctx;
    (void)secret;
    if (!json_is_boolean(json_object_get(response, "ok")))
        __builtin_trap();
    answered++;
    json_decref(response);
}

static void setup(void)
{
    char err[256];
    static unsigned char pepper[32];

    if (sodium_init() < 0)
        abort();
    kgc_config_defaults(&the_app.cfg);
    the_app.cat = kgc_catalog_load(CATALOG_PATH, err, sizeof err);
    if (the_app.cat == NULL)
        abort();
    the_app.pepper = pepper;
    the_app.st = store_new(NULL, &the_app.cfg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    peer_info peer = {1000, 4242, ""};
    json_t *req;

    if (!ready) {
        setup();
        ready = 1;
    }
    if (size > 65536)
        return 0;
    req = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, NULL);
    if (req == NULL)
        return 0;
    answered = 0;
    job_submit(&the_app, req, &peer, on_answer, NULL);
    stub_store_drain();
    if (answered != 1)
        __builtin_trap();   /* every request is answered exactly once */
    return 0;
}
