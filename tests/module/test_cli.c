/*
 * test_cli.c - `keygate authorize` (daemon/cli/cli_authorize.c) against a
 * real Redis: decision, cost and balance in text and JSON, exit statuses
 * 0/1/2/3, the token read from a file and never printed.
 */
#include "kgt.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli_authorize.h"

static kgt_env env;
static char out[8192];

/* Runs cli_authorize with stdout captured into out[]. */
static int run(int argc, const char **argv)
{
    char path[400];
    int fd, saved, rc;
    ssize_t n;

    snprintf(path, sizeof path, "%s/cli.out", env.dir);
    fflush(stdout);
    fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    saved = dup(1);
    dup2(fd, 1);
    rc = cli_authorize(argc, (char **)argv);
    fflush(stdout);
    dup2(saved, 1);
    close(saved);
    lseek(fd, 0, SEEK_SET);
    n = read(fd, out, sizeof out - 1);
    out[n > 0 ? n : 0] = '\0';
    close(fd);
    return rc;
}

int main(void)
{
    kgt_world w;
    char tokfile[400], unknown[KGC_TOKEN_LEN + 1], tokarg[KGC_TOKEN_LEN + 1];
    json_t *j;
    int rc;

    kgt_setup(&env, NULL);
    kgt_catalog(&env, NULL);
    kgt_world_make(&env, &w, 1000000);
    snprintf(tokfile, sizeof tokfile, "%s/token", env.dir);
    FILE *f = fopen(tokfile, "w");
    fprintf(f, "%s\n", w.tok);
    fclose(f);

    /* Authorized, text. */
    const char *a1[] = {"authorize", "--config", env.conf, "--token-file", tokfile,
                        "--service", "text-generation", "--model", "small",
                        "--param", "input_tokens=2000", "--param=output_tokens=500", NULL};
    rc = run(12, a1);
    KGT_CHECK(rc == 0, "rc %d, output:\n%s", rc, out);
    KGT_CHECK(strstr(out, "decision: ok (HTTP 200)") != NULL, "%s", out);
    KGT_CHECK(strstr(out, "cost:     0.000600 (600 micros)") != NULL, "%s", out);
    KGT_CHECK(strstr(out, "balance:  0.999400 (999400 micros)") != NULL, "%s", out);
    KGT_CHECK(strstr(out, w.key) != NULL && strstr(out, w.wallet) != NULL, "%s", out);
    KGT_CHECK(strstr(out, w.tok) == NULL, "the token was printed");

    /* JSON, with a request id: the retry is a replay. */
    const char *a2[] = {"authorize", "--config", env.conf, "--token", w.tok,
                        "--service", "text-generation", "--model", "small",
                        "--param", "input_tokens=1000", "--request-id", "cli-1", "--json", NULL};
    for (int i = 0; i < 2; i++) {
        snprintf(tokarg, sizeof tokarg, "%s", w.tok);
        a2[4] = tokarg;
        rc = run(14, a2);
        KGT_CHECK(rc == 0, "rc %d: %s", rc, out);
        j = json_loads(out, 0, NULL);
        KGT_CHECK(j != NULL, "not JSON: %s", out);
        KGT_CHECK(strcmp(json_string_value(json_object_get(j, "status")), "ok") == 0, "%s", out);
        KGT_CHECK(json_integer_value(json_object_get(j, "cost_micros")) == (i == 0 ? 150 : 0), "%s", out);
        KGT_CHECK(json_integer_value(json_object_get(j, "balance_micros")) == 999400 - 150, "%s", out);
        KGT_CHECK(json_is_true(json_object_get(j, "replayed")) == (i == 1), "%s", out);
        json_decref(j);
    }

    /* Free service: no wallet. */
    const char *a3[] = {"authorize", "--config", env.conf, "--token-file", tokfile,
                        "--service", "speech-to-text", "--json", NULL};
    rc = run(8, a3);
    j = json_loads(out, 0, NULL);
    KGT_CHECK(rc == 0 && j != NULL && json_is_null(json_object_get(j, "balance_micros")) &&
              json_is_null(json_object_get(j, "wallet_id")), "free: rc %d %s", rc, out);
    json_decref(j);

    /* Refused: exit 1. */
    kgc_token_generate(w.team, unknown);
    const char *a4[] = {"authorize", "--config", env.conf, "--token", unknown,
                        "--service", "text-generation", "--model", "small", NULL};
    rc = run(9, a4);
    KGT_CHECK(rc == 1 && strstr(out, "token_unknown (HTTP 401)") != NULL, "rc %d: %s", rc, out);
    const char *a5[] = {"authorize", "--config", env.conf, "--token-file", tokfile,
                        "--service", "text-generation", "--model", "large", NULL};
    rc = run(9, a5);
    KGT_CHECK(rc == 1 && strstr(out, "model_denied (HTTP 403)") != NULL, "rc %d: %s", rc, out);

    /* Bad usage: exit 2, nothing asked. */
    const char *u1[] = {"authorize", "--config", env.conf, "--token-file", tokfile, NULL};
    KGT_CHECK(run(5, u1) == 2, "no service");
    const char *u2[] = {"authorize", "--config", env.conf, "--token-file", tokfile,
                        "--service", "x", "--param", "input_tokens", NULL};
    KGT_CHECK(run(9, u2) == 2, "bad param");
    const char *u3[] = {"authorize", "--config", env.conf, "--token", "a", "--token-file", tokfile,
                        "--service", "x", NULL};
    KGT_CHECK(run(9, u3) == 2, "two tokens");
    const char *u4[] = {"authorize", "--config", "/nonexistent.conf", "--token", "a", "--service", "x", NULL};
    KGT_CHECK(run(7, u4) == 2, "missing config");
    const char *u5[] = {"authorize", "--help", NULL};
    KGT_CHECK(run(2, u5) == 0 && strstr(out, "usage: keygate authorize") != NULL, "help");

    /* --settle: text-generation becomes a settle service (output_tokens
     * measured, at most 1000): hold 150 + 600, settle 150 + 300. */
    {
        FILE *cf = fopen(KGT_DATA_DIR "/catalog.json", "r");
        json_t *cat = json_loadf(cf, 0, NULL), *s, *m, *r;
        size_t i, k;
        char *text;
        fclose(cf);
        json_array_foreach(json_object_get(cat, "services"), i, s) {
            if (strcmp(json_string_value(json_object_get(s, "id")), "text-generation") != 0)
                continue;
            json_object_set_new(s, "settle", json_true());
            m = json_array_get(json_object_get(s, "models"), 0);
            json_array_foreach(json_object_get(json_object_get(m, "price"), "per"), k, r)
                if (strcmp(json_string_value(json_object_get(r, "param")), "output_tokens") == 0) {
                    json_object_set_new(r, "measured", json_true());
                    json_object_set_new(r, "max", json_integer(1000));
                }
        }
        text = json_dumps(cat, JSON_COMPACT);
        kgt_catalog(&env, text);
        free(text);
        json_decref(cat);
    }
    const char *s1[] = {"authorize", "--config", env.conf, "--token-file", tokfile,
                        "--service", "text-generation", "--model", "small",
                        "--param", "input_tokens=1000", "--settle", "output_tokens=500",
                        "--request-id", "cli-s1", "--json", NULL};
    for (int i = 0; i < 2; i++) {
        rc = run(16, s1);
        j = json_loads(out, 0, NULL);
        KGT_CHECK(rc == 0 && j != NULL, "settle rc %d: %s", rc, out);
        json_t *st = json_object_get(j, "settle");
        KGT_CHECK(json_integer_value(json_object_get(j, "hold_micros")) == 750 &&
                  json_integer_value(json_object_get(j, "cost_micros")) == 0 &&
                  strcmp(json_string_value(json_object_get(st, "status")), "ok") == 0 &&
                  json_integer_value(json_object_get(st, "cost_micros")) == (i == 0 ? 450 : 0) &&
                  json_integer_value(json_object_get(st, "balance_micros")) == 999250 - 450 &&
                  json_is_true(json_object_get(st, "replayed")) == (i == 1), "settle %d: %s", i, out);
        json_decref(j);
    }
    KGT_CHECK(kgt_int(&env, "HGET " KGT_PREFIX "{t:%s}:wallet:%s held_micros", w.team, w.wallet) == 0,
              "held after settle");
    /* Text, no request id: one is made up. */
    const char *s2[] = {"authorize", "--config", env.conf, "--token-file", tokfile,
                        "--service", "text-generation", "--model", "small", "--param",
                        "input_tokens=0", "--settle", "output_tokens=2000", NULL};
    rc = run(13, s2);
    KGT_CHECK(rc == 0 && strstr(out, "held:     0.000600") != NULL &&
              strstr(out, "settle:   ok (HTTP 200)") != NULL &&
              strstr(out, "charged:  0.000600 (600 micros)") != NULL, "capped text: rc %d %s", rc, out);
    const char *u6[] = {"authorize", "--config", env.conf, "--token-file", tokfile,
                        "--service", "x", "--settle", "output_tokens", NULL};
    KGT_CHECK(run(9, u6) == 2, "bad --settle");

    /* Store down: exit 3. */
    kgt_redis_stop(&env);
    rc = run(12, a1);
    KGT_CHECK(rc == 3 && strstr(out, "backend_error (HTTP 503)") != NULL, "rc %d: %s", rc, out);
    kgt_teardown(&env);
    printf("ok: keygate authorize\n");
    return 0;
}
