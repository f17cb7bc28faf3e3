/*
 * kgc_price.h - the service catalog and the one pricing function.
 *
 * Cost of a request = max(min_micros, base_micros + sum over the model's
 * "per" entries of ceil(quantity * micros / units)), a missing optional
 * param counting 0 and a missing required one refused (SPEC §7). min_micros
 * ("price.min_micros") defaults to 1 for a service the catalog does not mark
 * free, so a paid model never prices a request at 0 unless the catalog says
 * "min_micros": 0 explicitly; it defaults to 0 for a free service.
 * price.estimate in the daemon and the charge in libkeygate both call
 * kgc_price(), so the two agree to the micro.
 */
#ifndef KGC_PRICE_H
#define KGC_PRICE_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "keygate.h"

typedef struct kgc_rate {
    char *param;                  /* owned */
    int64_t micros;               /* price of `units` units, >= 0 */
    int64_t units;                /* > 0 */
    int required;                 /* a request must name this param */
    int measured;                 /* settle services: known only after the
                                     response, given again to kg_settle */
    int64_t max;                  /* measured: the quantity held when the
                                     request names none; -1 = none declared
                                     (the request must then name it) */
} kgc_rate;

typedef struct kgc_model {
    char *id;                     /* owned */
    int64_t base_micros;          /* >= 0 */
    int64_t min_micros;           /* floor of the cost, >= 0 (see above) */
    kgc_rate *per;                /* owned, nper entries */
    size_t nper;
} kgc_model;

typedef struct kgc_service {
    char *id, *name;              /* owned */
    int free;                     /* part of the free tier */
    int settle;                   /* "settle": true: payg requests hold the
                                     worst-case price, kg_settle charges the
                                     measured one (docs/module.md) */
    int64_t requests_per_day;     /* free quota per team per UTC day; 0 = none */
    int debit;                    /* "debit": KGC_SVC_DEBIT_* (the config's
                                     mode unless the catalog names one) */
    kgc_model *models;            /* owned */
    size_t nmodels;
} kgc_service;

/* kgc_service.debit */
#define KGC_SVC_DEBIT_CONFIG 0    /* absent: the gateway's 'debit' decides */
#define KGC_SVC_DEBIT_EXACT  1    /* "exact": one script per request, always */
#define KGC_SVC_DEBIT_LEASED 2    /* "leased": against a lease wherever the
                                     gateway has a lease_journal */

typedef struct kgc_catalog {
    char *currency;               /* owned */
    kgc_service *services;        /* owned */
    size_t nservices;
    json_t *json;                 /* the validated document (one reference owned) */
} kgc_catalog;

typedef struct kgc_line {
    const char *param;            /* borrowed from the model */
    int64_t quantity;
    int64_t subtotal_micros;
} kgc_line;

/* Validates and parses a catalog document. name is used in messages (the
 * file path). On error returns NULL and names the service, model and field
 * in err. The caller frees the result with kgc_catalog_free. */
kgc_catalog *kgc_catalog_parse(const char *text, size_t len, const char *name,
                               char *err, size_t errlen);
kgc_catalog *kgc_catalog_load(const char *path, char *err, size_t errlen);
void kgc_catalog_free(kgc_catalog *cat);   /* accepts NULL */

/* Borrowed pointers into cat, or NULL. */
const kgc_service *kgc_catalog_service(const kgc_catalog *cat, const char *id);
/* A NULL id picks the service's only model when it has exactly one. */
const kgc_model *kgc_service_model(const kgc_service *svc, const char *id);

/* Prices one request. lines, when not NULL, receives m->nper entries (one per
 * priced param, in catalog order; their subtotals plus base_micros may be
 * below *cost when min_micros lifts it). Returns 0, or -1 with a reason in
 * err for an unpriced or repeated param, a missing required param, a
 * negative quantity or an overflow. */
int kgc_price(const kgc_model *m, const kg_param *params, size_t nparams,
              int64_t *cost, kgc_line *lines, char *err, size_t errlen);

/* The worst-case price a settle service holds for a request: kgc_price()
 * over the request's params where every measured param the request leaves
 * out counts at its catalog "max" (a measured param with neither is
 * refused, as a missing required one is). The same code prices the hold
 * and the settle, so an actual use within the declared maximum never
 * costs more than the hold. Returns 0 or -1 with a reason in err. */
int kgc_price_hold(const kgc_model *m, const kg_param *params, size_t nparams,
                   int64_t *cost, char *err, size_t errlen);

#endif
