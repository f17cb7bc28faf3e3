/*
 * Pricing and catalog validation, data-driven:
 *   test_pricing cases FILE       tests/data/pricing/cases.json
 *   test_pricing invalid FILE     one tests/data/catalog_invalid/NAME.json:
 *                                 {"expect": TEXT, "catalog": {...} | "text": "..."}
 */
#include "check.h"
#include "kgc_price.h"

#include <jansson.h>
#include <libgen.h>
#include <string.h>

static int run_cases(const char *path)
{
    json_error_t je;
    json_t *doc = json_load_file(path, 0, &je), *c;
    char catpath[2048], err[512], dir[2048];
    kgc_catalog *cat;
    size_t i;

    if (doc == NULL) {
        fprintf(stderr, "%s: %s\n", path, je.text);
        return 2;
    }
    snprintf(dir, sizeof dir, "%s", path);
    snprintf(catpath, sizeof catpath, "%s/%s", dirname(dir),
             json_string_value(json_object_get(doc, "catalog")));
    cat = kgc_catalog_load(catpath, err, sizeof err);
    if (cat == NULL) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    json_array_foreach(json_object_get(doc, "cases"), i, c) {
        const char *name = json_string_value(json_object_get(c, "name"));
        const char *want_err = json_string_value(json_object_get(c, "error"));
        const kgc_service *s = kgc_catalog_service(cat, json_string_value(json_object_get(c, "service")));
        const kgc_model *m = kgc_service_model(s, json_string_value(json_object_get(c, "model")));
        json_t *params = json_object_get(c, "params"), *v;
        kg_param ps[16];
        size_t n = 0;
        const char *k;
        int64_t cost = -1;
        int rc;

        json_object_foreach(params, k, v) {
            ps[n].name = k;
            ps[n++].value = json_integer_value(v);
        }
        if (m == NULL) {
            snprintf(err, sizeof err, "unknown %s", s == NULL ? "service" : "model");
            rc = -1;
        } else {
            rc = kgc_price(m, ps, n, &cost, NULL, err, sizeof err);
        }
        if (want_err != NULL) {
            if (rc == 0 || strstr(err, want_err) == NULL) {
                fprintf(stderr, "case '%s': expected error containing '%s', got rc=%d '%s'\n",
                        name, want_err, rc, rc ? err : "");
                check_failures++;
            }
        } else if (rc != 0 || cost != (int64_t)json_integer_value(json_object_get(c, "cost"))) {
            fprintf(stderr, "case '%s': cost %lld (rc %d %s), expected %lld\n", name,
                    (long long)cost, rc, rc ? err : "",
                    (long long)json_integer_value(json_object_get(c, "cost")));
            check_failures++;
        }
    }
    printf("%zu pricing cases\n", json_array_size(json_object_get(doc, "cases")));
    kgc_catalog_free(cat);
    json_decref(doc);
    return CHECK_DONE();
}

static int run_invalid(const char *path)
{
    json_t *doc = json_load_file(path, 0, NULL);
    const char *expect = json_string_value(json_object_get(doc, "expect"));
    char *text, err[512];
    kgc_catalog *cat;

    if (doc == NULL || expect == NULL)
        return 2;
    if (json_is_string(json_object_get(doc, "text")))
        text = strdup(json_string_value(json_object_get(doc, "text")));
    else
        text = json_dumps(json_object_get(doc, "catalog"), 0);
    cat = kgc_catalog_parse(text, strlen(text), "catalog", err, sizeof err);
    CHECK(cat == NULL);
    if (cat == NULL && strstr(err, expect) == NULL) {
        fprintf(stderr, "message '%s' lacks '%s'\n", err, expect);
        check_failures++;
    }
    kgc_catalog_free(cat);
    free(text);
    json_decref(doc);
    return CHECK_DONE();
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "cases") == 0)
        return run_cases(argv[2]);
    if (argc == 3 && strcmp(argv[1], "invalid") == 0)
        return run_invalid(argv[2]);
    fprintf(stderr, "usage: test_pricing cases|invalid FILE\n");
    return 2;
}
