/*
 * kgc_price.c - catalog validation and pricing (SPEC §7).
 */
#include "kgc_price.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Catalog ids travel in Redis key names and log lines: keep them plain. */
static int valid_id(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 63)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.'))
            return 0;
    }
    return 1;
}

/* strdup/calloc that report out of memory in err (the module parses the
 * catalog inside a gateway: no abort there). */
static char *dup_or_fail(const char *v, char *err, size_t errlen)
{
    char *p = strdup(v);
    if (p == NULL)
        snprintf(err, errlen, "out of memory while reading the catalog");
    return p;
}

static void *zalloc_or_fail(size_t n, size_t size, char *err, size_t errlen)
{
    void *p = calloc(n ? n : 1, size);
    if (p == NULL)
        snprintf(err, errlen, "out of memory while reading the catalog");
    return p;
}

static int get_int(json_t *obj, const char *field, int64_t min, int required,
                   int64_t *out)
{
    json_t *v = json_object_get(obj, field);
    if (v == NULL)
        return required ? -1 : 0;
    if (!json_is_integer(v) || json_integer_value(v) < min)
        return -1;
    *out = json_integer_value(v);
    return 0;
}

static int parse_model(json_t *jm, kgc_model *m, int free, int settle, const char *where,
                       char *err, size_t errlen)
{
    json_t *jid = json_object_get(jm, "id"), *price, *per;
    size_t i;

    if (!json_is_string(jid) || !valid_id(json_string_value(jid))) {
        snprintf(err, errlen, "%s: 'id' must be a string of letters, digits, '-', '_', '.'", where);
        return -1;
    }
    if ((m->id = dup_or_fail(json_string_value(jid), err, errlen)) == NULL)
        return -1;
    price = json_object_get(jm, "price");
    if (!json_is_object(price)) {
        snprintf(err, errlen, "%s model '%s': 'price' must be an object", where, m->id);
        return -1;
    }
    if (get_int(price, "base_micros", 0, 0, &m->base_micros) != 0) {
        snprintf(err, errlen, "%s model '%s': 'price.base_micros' must be an integer >= 0", where, m->id);
        return -1;
    }
    /* A paid model never prices a request at 0 unless the catalog says so
     * (issue 10): a 0-micro debit would serve a wallet at 0 without end. */
    m->min_micros = free ? 0 : 1;
    if (get_int(price, "min_micros", 0, 0, &m->min_micros) != 0) {
        snprintf(err, errlen, "%s model '%s': 'price.min_micros' must be an integer >= 0", where, m->id);
        return -1;
    }
    per = json_object_get(price, "per");
    if (per == NULL)
        return 0;
    if (!json_is_array(per)) {
        snprintf(err, errlen, "%s model '%s': 'price.per' must be an array", where, m->id);
        return -1;
    }
    if ((m->per = zalloc_or_fail(json_array_size(per) + 1, sizeof *m->per, err, errlen)) == NULL)
        return -1;
    for (i = 0; i < json_array_size(per); i++) {
        json_t *r = json_array_get(per, i), *p = json_object_get(r, "param"), *jreq;
        kgc_rate *rate = &m->per[i];

        if (!json_is_string(p) || !valid_id(json_string_value(p))) {
            snprintf(err, errlen, "%s model '%s': 'price.per[%zu].param' must be a plain name", where, m->id, i);
            return -1;
        }
        for (size_t j = 0; j < i; j++)
            if (strcmp(m->per[j].param, json_string_value(p)) == 0) {
                snprintf(err, errlen, "%s model '%s': param '%s' priced twice", where, m->id, json_string_value(p));
                return -1;
            }
        if ((rate->param = dup_or_fail(json_string_value(p), err, errlen)) == NULL)
            return -1;
        m->nper++;
        if (get_int(r, "micros", 0, 1, &rate->micros) != 0) {
            snprintf(err, errlen, "%s model '%s': 'price.per[%zu].micros' must be an integer >= 0", where, m->id, i);
            return -1;
        }
        if (get_int(r, "units", 1, 1, &rate->units) != 0) {
            snprintf(err, errlen, "%s model '%s': 'price.per[%zu].units' must be an integer > 0", where, m->id, i);
            return -1;
        }
        jreq = json_object_get(r, "required");
        if (jreq != NULL && !json_is_boolean(jreq)) {
            snprintf(err, errlen, "%s model '%s': 'price.per[%zu].required' must be true or false", where, m->id, i);
            return -1;
        }
        rate->required = json_is_true(jreq);
        jreq = json_object_get(r, "measured");
        if (jreq != NULL && (!json_is_boolean(jreq) || (json_is_true(jreq) && !settle))) {
            snprintf(err, errlen, "%s model '%s': 'price.per[%zu].measured' must be true or false, "
                     "and true only in a service with \"settle\": true", where, m->id, i);
            return -1;
        }
        rate->measured = json_is_true(jreq);
        rate->max = -1;
        if (json_object_get(r, "max") != NULL &&
            (!rate->measured || get_int(r, "max", 0, 1, &rate->max) != 0)) {
            snprintf(err, errlen, "%s model '%s': 'price.per[%zu].max' must be an integer >= 0, "
                     "on a measured param", where, m->id, i);
            return -1;
        }
    }
    return 0;
}

static int parse_service(json_t *js, size_t idx, kgc_service *s, const char *name,
                         char *err, size_t errlen)
{
    json_t *jid = json_object_get(js, "id"), *jname, *jfree, *quota, *models;
    char where[160];

    if (!json_is_object(js)) {
        snprintf(err, errlen, "%s: services[%zu] must be an object", name, idx);
        return -1;
    }
    if (!json_is_string(jid) || !valid_id(json_string_value(jid))) {
        snprintf(err, errlen, "%s: services[%zu]: 'id' must be a string of letters, digits, '-', '_', '.'", name, idx);
        return -1;
    }
    if ((s->id = dup_or_fail(json_string_value(jid), err, errlen)) == NULL)
        return -1;
    snprintf(where, sizeof where, "%s: service '%s'", name, s->id);
    jname = json_object_get(js, "name");
    if (!json_is_string(jname)) {
        snprintf(err, errlen, "%s: 'name' must be a string", where);
        return -1;
    }
    if ((s->name = dup_or_fail(json_string_value(jname), err, errlen)) == NULL)
        return -1;
    jfree = json_object_get(js, "free");
    if (!json_is_boolean(jfree)) {
        snprintf(err, errlen, "%s: 'free' must be true or false", where);
        return -1;
    }
    s->free = json_is_true(jfree);
    jfree = json_object_get(js, "settle");
    if (jfree != NULL && !json_is_boolean(jfree)) {
        snprintf(err, errlen, "%s: 'settle' must be true or false", where);
        return -1;
    }
    s->settle = json_is_true(jfree);
    jfree = json_object_get(js, "debit");
    if (jfree != NULL) {
        const char *d = json_is_string(jfree) ? json_string_value(jfree) : "";
        if (strcmp(d, "exact") == 0)
            s->debit = KGC_SVC_DEBIT_EXACT;
        else if (strcmp(d, "leased") == 0)
            s->debit = KGC_SVC_DEBIT_LEASED;
        else {
            snprintf(err, errlen, "%s: 'debit' must be \"exact\" or \"leased\"", where);
            return -1;
        }
        if (s->settle && s->debit == KGC_SVC_DEBIT_LEASED) {
            snprintf(err, errlen, "%s: 'debit' \"leased\" is for services charged before the "
                     "response, not with 'settle' (a hold is always exact)", where);
            return -1;
        }
    }
    quota = json_object_get(js, "free_quota");
    if (quota != NULL) {
        if (!s->free) {
            snprintf(err, errlen, "%s: 'free_quota' is only for free services", where);
            return -1;
        }
        if (!json_is_object(quota) ||
            get_int(quota, "requests_per_day", 1, 1, &s->requests_per_day) != 0) {
            snprintf(err, errlen, "%s: 'free_quota.requests_per_day' must be an integer > 0", where);
            return -1;
        }
    }
    models = json_object_get(js, "models");
    if (!json_is_array(models) || json_array_size(models) == 0) {
        snprintf(err, errlen, "%s: 'models' must be a non-empty array", where);
        return -1;
    }
    if ((s->models = zalloc_or_fail(json_array_size(models), sizeof *s->models, err, errlen)) == NULL)
        return -1;
    for (size_t i = 0; i < json_array_size(models); i++) {
        json_t *jm = json_array_get(models, i);
        if (!json_is_object(jm)) {
            snprintf(err, errlen, "%s: models[%zu] must be an object", where, i);
            return -1;
        }
        s->nmodels++;
        if (parse_model(jm, &s->models[i], s->free, s->settle, where, err, errlen) != 0)
            return -1;
        for (size_t j = 0; j < i; j++)
            if (strcmp(s->models[j].id, s->models[i].id) == 0) {
                snprintf(err, errlen, "%s: model '%s' listed twice", where, s->models[i].id);
                return -1;
            }
    }
    return 0;
}

kgc_catalog *kgc_catalog_parse(const char *text, size_t len, const char *name,
                               char *err, size_t errlen)
{
    json_error_t je;
    kgc_catalog *cat = calloc(1, sizeof *cat);
    json_t *cur, *svcs;

    if (cat == NULL) {
        snprintf(err, errlen, "%s: out of memory", name);
        return NULL;
    }
    cat->json = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (cat->json == NULL) {
        snprintf(err, errlen, "%s:%d:%d: %s", name, je.line, je.column, je.text);
        goto err;
    }
    if (!json_is_object(cat->json)) {
        snprintf(err, errlen, "%s: the catalog must be a JSON object", name);
        goto err;
    }
    cur = json_object_get(cat->json, "currency");
    if (!json_is_string(cur) || json_string_length(cur) == 0) {
        snprintf(err, errlen, "%s: 'currency' must be a non-empty string", name);
        goto err;
    }
    if ((cat->currency = dup_or_fail(json_string_value(cur), err, errlen)) == NULL)
        goto err;
    svcs = json_object_get(cat->json, "services");
    if (!json_is_array(svcs) || json_array_size(svcs) == 0) {
        snprintf(err, errlen, "%s: 'services' must be a non-empty array", name);
        goto err;
    }
    if ((cat->services = zalloc_or_fail(json_array_size(svcs), sizeof *cat->services, err, errlen)) == NULL)
        goto err;
    for (size_t i = 0; i < json_array_size(svcs); i++) {
        cat->nservices++;
        if (parse_service(json_array_get(svcs, i), i, &cat->services[i], name, err, errlen) != 0)
            goto err;
        for (size_t j = 0; j < i; j++)
            if (strcmp(cat->services[j].id, cat->services[i].id) == 0) {
                snprintf(err, errlen, "%s: service '%s' listed twice", name, cat->services[i].id);
                goto err;
            }
    }
    return cat;
err:
    kgc_catalog_free(cat);
    return NULL;
}

kgc_catalog *kgc_catalog_load(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t len = 0, cap = 0, n;
    kgc_catalog *cat;

    if (f == NULL) {
        snprintf(err, errlen, "%s: cannot open", path);
        return NULL;
    }
    do {
        if (len + 4096 > cap) {
            char *nb;
            cap = cap ? cap * 2 : 8192;
            if (cap > (64u << 20) || (nb = realloc(buf, cap)) == NULL) {
                snprintf(err, errlen, "%s: too large", path);
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = nb;
        }
        n = fread(buf + len, 1, cap - len, f);
        len += n;
    } while (n > 0);
    fclose(f);
    cat = kgc_catalog_parse(buf, len, path, err, errlen);
    free(buf);
    return cat;
}

void kgc_catalog_free(kgc_catalog *cat)
{
    if (cat == NULL)
        return;
    for (size_t i = 0; i < cat->nservices; i++) {
        kgc_service *s = &cat->services[i];
        for (size_t j = 0; j < s->nmodels; j++) {
            for (size_t k = 0; k < s->models[j].nper; k++)
                free(s->models[j].per[k].param);
            free(s->models[j].per);
            free(s->models[j].id);
        }
        free(s->models);
        free(s->id);
        free(s->name);
    }
    free(cat->services);
    free(cat->currency);
    json_decref(cat->json);
    free(cat);
}

const kgc_service *kgc_catalog_service(const kgc_catalog *cat, const char *id)
{
    if (cat == NULL || id == NULL)
        return NULL;
    for (size_t i = 0; i < cat->nservices; i++)
        if (strcmp(cat->services[i].id, id) == 0)
            return &cat->services[i];
    return NULL;
}

const kgc_model *kgc_service_model(const kgc_service *svc, const char *id)
{
    if (svc == NULL)
        return NULL;
    if (id == NULL)
        return svc->nmodels == 1 ? &svc->models[0] : NULL;
    for (size_t i = 0; i < svc->nmodels; i++)
        if (strcmp(svc->models[i].id, id) == 0)
            return &svc->models[i];
    return NULL;
}

int kgc_price(const kgc_model *m, const kg_param *params, size_t nparams,
              int64_t *cost, kgc_line *lines, char *err, size_t errlen)
{
    int64_t total = m->base_micros;

    for (size_t i = 0; i < nparams; i++) {
        size_t k;
        if (params[i].name == NULL) {
            snprintf(err, errlen, "a param has no name");
            return -1;
        }
        for (k = 0; k < m->nper; k++)
            if (strcmp(m->per[k].param, params[i].name) == 0)
                break;
        if (k == m->nper) {
            snprintf(err, errlen, "model '%s' has no param '%.64s'", m->id, params[i].name);
            return -1;
        }
        for (size_t j = 0; j < i; j++)
            if (strcmp(params[j].name, params[i].name) == 0) {
                snprintf(err, errlen, "param '%s' given twice", m->per[k].param);
                return -1;
            }
        if (params[i].value < 0) {
            snprintf(err, errlen, "param '%s' is negative", m->per[k].param);
            return -1;
        }
    }
    for (size_t k = 0; k < m->nper; k++) {
        const kgc_rate *r = &m->per[k];
        int64_t q = 0, sub;
        int given = 0;
        __int128 x;

        for (size_t i = 0; i < nparams; i++)
            if (strcmp(params[i].name, r->param) == 0) {
                q = params[i].value;
                given = 1;
            }
        if (r->required && !given) {
            snprintf(err, errlen, "model '%s' requires param '%s'", m->id, r->param);
            return -1;
        }
        /* ceil(q * micros / units) in 128 bits: q and micros are < 2^63. */
        x = ((__int128)q * r->micros + r->units - 1) / r->units;
        if (x > INT64_MAX || __builtin_add_overflow(total, (int64_t)x, &total)) {
            snprintf(err, errlen, "cost overflows at param '%s'", r->param);
            return -1;
        }
        sub = (int64_t)x;
        if (lines != NULL) {
            lines[k].param = r->param;
            lines[k].quantity = q;
            lines[k].subtotal_micros = sub;
        }
    }
    *cost = total > m->min_micros ? total : m->min_micros;
    return 0;
}

int kgc_price_hold(const kgc_model *m, const kg_param *params, size_t nparams,
                   int64_t *cost, char *err, size_t errlen)
{
    kg_param all[128];
    size_t n = 0;

    /* kgc_price refuses repeats and unpriced names; only the measured
     * params the request leaves out are added, so nothing is lost here. */
    if (nparams + m->nper > sizeof all / sizeof all[0]) {
        snprintf(err, errlen, "too many params");
        return -1;
    }
    for (size_t i = 0; i < nparams; i++)
        all[n++] = params[i];
    for (size_t k = 0; k < m->nper; k++) {
        const kgc_rate *r = &m->per[k];
        size_t i;
        if (!r->measured)
            continue;
        for (i = 0; i < nparams; i++)
            if (params[i].name != NULL && strcmp(params[i].name, r->param) == 0)
                break;
        if (i < nparams)
            continue;                       /* the request's own maximum */
        if (r->max < 0) {
            snprintf(err, errlen, "model '%s': measured param '%s' has no declared maximum: "
                     "the request must give the most it may use", m->id, r->param);
            return -1;
        }
        all[n].name = r->param;
        all[n++].value = r->max;
    }
    return kgc_price(m, all, n, cost, NULL, err, errlen);
}
