/* libFuzzer target: the catalog parser, then pricing every model with
 * quantities taken from the input. */
#include "kgc_price.h"

#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512];
    kgc_catalog *cat = kgc_catalog_parse((const char *)data, size, "fuzz", err, sizeof err);

    if (cat == NULL)
        return 0;
    for (size_t i = 0; i < cat->nservices; i++)
        for (size_t k = 0; k < cat->services[i].nmodels; k++) {
            const kgc_model *m = &cat->services[i].models[k];
            kg_param ps[4];
            kgc_line lines[64];
            int64_t cost;
            size_t n = m->nper < 4 ? m->nper : 4;

            for (size_t p = 0; p < n; p++) {
                ps[p].name = m->per[p].param;
                ps[p].value = (int64_t)(size * 7919u * (p + 1));
            }
            if (m->nper <= 64 && kgc_price(m, ps, n, &cost, lines, err, sizeof err) == 0 && cost < 0)
                __builtin_trap();
        }
    kgc_catalog_free(cat);
    return 0;
}
