/*
 * test_dlopen.c - loads a built or installed libkeygate.so with dlopen(),
 * as a gateway would: the ABI version handshake, every symbol of
 * include/keygate.h present, internal symbols absent, and one request
 * (a malformed token, answered without a store) through the loaded code.
 * Usage: test_module_dlopen /path/to/libkeygate.so
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "keygate.h"

#define FAIL(...) do { fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); return 1; } while (0)

static const char *const abi[] = {
    "kg_open", "kg_authorize", "kg_close", "kg_strerror", "kg_http_status",
    "kg_status_code", "kg_abi_version", "kg_loop_attach", "kg_loop_ready",
    "kg_loop_next_timeout_ms", "kg_loop_timeout", "kg_authorize_start",
    "kg_authorize_cancel", "kg_estimate", "kg_stats_get", "kg_authorize_hold",
    "kg_authorize_hold_start", "kg_settle", "kg_settle_start"};

/* Internal names that must stay hidden (core, module internals). */
static const char *const hidden[] = {
    "kgc_token_wellformed", "kgc_price", "kgc_config_load", "kg_flow_start",
    "kg_cache_get", "kg_link_main", "kg_script_text", "kg_entry_build"};

int main(int argc, char **argv)
{
    void *h;
    char dir[] = "/tmp/kgdl.XXXXXX", conf[128], pep[128], err[256];
    FILE *f;

    if (argc != 2)
        FAIL("usage: %s LIBKEYGATE.so", argv[0]);
    h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (h == NULL)
        FAIL("dlopen: %s", dlerror());
    for (size_t i = 0; i < sizeof abi / sizeof abi[0]; i++)
        if (dlsym(h, abi[i]) == NULL)
            FAIL("missing symbol %s", abi[i]);
    for (size_t i = 0; i < sizeof hidden / sizeof hidden[0]; i++)
        if (dlsym(h, hidden[i]) != NULL)
            FAIL("internal symbol %s is exported", hidden[i]);

    int (*abi_version)(void) = (int (*)(void))dlsym(h, "kg_abi_version");
    if (abi_version() != KG_ABI_VERSION)
        FAIL("ABI version %d, this host expects %d", abi_version(), KG_ABI_VERSION);

    kg_ctx *(*open_fn)(const char *, char *, size_t) =
        (kg_ctx * (*)(const char *, char *, size_t)) dlsym(h, "kg_open");
    kg_status (*authorize)(kg_ctx *, const kg_request *, kg_result *) =
        (kg_status(*)(kg_ctx *, const kg_request *, kg_result *))dlsym(h, "kg_authorize");
    void (*close_fn)(kg_ctx *) = (void (*)(kg_ctx *))dlsym(h, "kg_close");
    int (*http)(kg_status) = (int (*)(kg_status))dlsym(h, "kg_http_status");
    const char *(*code)(kg_status) = (const char *(*)(kg_status))dlsym(h, "kg_status_code");

    if (mkdtemp(dir) == NULL)
        FAIL("mkdtemp");
    snprintf(pep, sizeof pep, "%s/pepper", dir);
    snprintf(conf, sizeof conf, "%s/keygate.conf", dir);
    f = fopen(pep, "w");
    fprintf(f, "%064d\n", 7);
    fclose(f);
    if (chmod(pep, 0600) != 0)
        FAIL("chmod");
    f = fopen(conf, "w");
    fprintf(f, "redis unix:%s/no-redis.sock\npepper_file %s\n", dir, pep);
    fclose(f);
    kg_ctx *ctx = open_fn(conf, err, sizeof err);
    if (ctx == NULL)
        FAIL("kg_open: %s", err);
    kg_request req = {.token = "kg_nope", .token_len = 7, .service = "text-generation"};
    kg_result res;
    if (authorize(ctx, &req, &res) != KG_TOKEN_MALFORMED || http(res.status) != 401 ||
        strcmp(code(res.status), "token_malformed") != 0)
        FAIL("a malformed token was not refused as such");
    close_fn(ctx);
    unlink(conf);
    unlink(pep);
    rmdir(dir);
    if (dlclose(h) != 0)
        FAIL("dlclose: %s", dlerror());
    printf("ok: %s loads, ABI %d, %zu symbols\n", argv[1], KG_ABI_VERSION, sizeof abi / sizeof abi[0]);
    return 0;
}
