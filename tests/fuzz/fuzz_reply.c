/*
 * libFuzzer target: whole requests through to the encoded reply, as the
 * admin socket and the console send them. The first byte picks the front
 * end:
 *   even: the rest is an admin line, parsed and run by job_line;
 *   odd:  the rest is a console body for /api/<cmd> (cmd picked by the
 *         byte from the command table), parsed as http.c does, its "cmd"
 *         set from the path.
 * Every request must be answered exactly once, and every answer must
 * serialize (json_dumps) to text that parses back: an error message that
 * quotes part of a character (a cut argument, jansson's parse error) once
 * made json_pack fail and the daemon abort. Against the stub store.
 */
#include "app.h"
#include "cmd.h"
#include "proto.h"

#include <sodium.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

void stub_store_drain(void);

static app the_app;
static int answered;

static void on_answer(void *ctx, json_t *response, int secret)
{
    char *text;
    json_t *back;

    (void)ctx;
    (void)secret;
    if (response == NULL || !json_is_boolean(json_object_get(response, "ok")))
        __builtin_trap();
    text = json_dumps(response, JSON_COMPACT);
    if (text == NULL)
        __builtin_trap();                 /* the answer could not be encoded */
    back = json_loads(text, 0, NULL);
    if (back == NULL)
        __builtin_trap();                 /* it was, but not as valid JSON/UTF-8 */
    json_decref(back);
    free(text);
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

/* The console's body path (http.c read_body + api_request, less the
 * session): an object is a command's arguments, anything else an error. */
static void console_body(const char *cmd, const char *data, size_t size, const peer_info *peer)
{
    json_error_t je;
    json_t *body = json_loadb(data, size, JSON_REJECT_DUPLICATES, &je);

    if (body == NULL) {
        on_answer(NULL, proto_error(NULL, "bad_request", "malformed JSON: %s", je.text), 0);
        return;
    }
    if (!json_is_object(body)) {
        json_decref(body);
        on_answer(NULL, proto_error(NULL, "bad_request", "%s", "the body must be a JSON object"), 0);
        return;
    }
    json_object_set_new(body, "cmd", json_string(cmd));
    job_submit(&the_app, body, peer, on_answer, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    static size_t ncmds;
    peer_info peer = {1000, 4242, ""};

    if (!ready) {
        setup();
        while (cmd_table[ncmds].name != NULL)
            ncmds++;
        ready = 1;
    }
    if (size < 1 || size > 65536)
        return 0;
    answered = 0;
    if (data[0] % 2 == 0) {
        job_line(&the_app, (const char *)data + 1, size - 1, &peer, on_answer, NULL);
    } else {
        snprintf(peer.addr, sizeof peer.addr, "127.0.0.1");
        console_body(cmd_table[(data[0] / 2) % ncmds].name, (const char *)data + 1, size - 1, &peer);
    }
    stub_store_drain();
    if (answered != 1)
        __builtin_trap();   /* every request is answered exactly once */
    return 0;
}
