/*
 * A stand-in for daemon/store.c in the admin fuzz target: no Redis. It
 * answers every batch from a queue the target drains: the actor's user
 * document and a team document naming the actor owner exist, every other
 * read finds nothing, every transaction succeeds.
 */
#include "store.h"
#include "worker.h"

#include <stdlib.h>
#include <string.h>

typedef struct pending {
    store_done_fn done;
    void *arg;
    json_t *replies;
    struct pending *next;
} pending;

struct store { int up; };

static pending *head, *tail;
static store the_store = {1};

store *store_new(struct event_base *base, const kgc_config *cfg)
{
    (void)base;
    (void)cfg;
    return &the_store;
}

void store_free(store *s) { (void)s; }
int store_connected(const store *s) { return s->up; }
void store_on_connect(store *s, void (*fn)(void *), void *arg) { (void)s; (void)fn; (void)arg; }

int store_is_error(const json_t *j)
{
    return json_is_object(j) && json_object_get(j, "$err") != NULL;
}

/* The fuzz targets never run the background passes that load scripts. */
void store_script_sha(int ok, json_t *replies, char *sha, size_t n, const char *what)
{
    (void)ok;
    (void)sha;
    (void)n;
    (void)what;
    json_decref(replies);
}

static json_t *answer(json_t *cmd)
{
    const char *name = json_string_value(json_array_get(cmd, 0));
    const char *key = json_string_value(json_array_get(cmd, 1));

    if (strcmp(name, "GET") == 0 && key && strstr(key, "user:u_"))
        return json_string("{\"user_id\":\"u_fuzzactor00001\",\"email\":\"f@z\",\"name\":\"F\"}");
    if (strcmp(name, "GET") == 0 && key && strstr(key, "}:team"))
        return json_string("{\"team_id\":\"t_fuzzteam0001\",\"name\":\"T\","
                           "\"members\":{\"u_fuzzactor00001\":\"owner\",\"u_other\":\"user\"},"
                           "\"free_key_id\":\"k_fuzzteam0001free0001\"}");
    if (strcmp(name, "MGET") == 0 || strcmp(name, "ZRANGE") == 0 || strcmp(name, "LRANGE") == 0 ||
        strcmp(name, "HGETALL") == 0)
        return json_array();
    if (strcmp(name, "EXISTS") == 0)
        return json_integer(1);
    return json_null();
}

int store_exec(store *s, json_t *cmds, int transaction, store_done_fn done, void *arg)
{
    pending *p;
    size_t i;
    json_t *c;

    if (!s->up || json_array_size(cmds) == 0)
        return -1;
    p = calloc(1, sizeof *p);
    p->done = done;
    p->arg = arg;
    p->replies = json_array();
    json_array_foreach(cmds, i, c)
        json_array_append_new(p->replies, transaction ? json_string("OK") : answer(c));
    if (tail)
        tail->next = p;
    else
        head = p;
    tail = p;
    return 0;
}

/* The worker thread's stand-in: items run when the target drains. */
typedef struct witem {
    void (*work)(void *);
    void (*done)(void *);
    void *arg;
    struct witem *next;
} witem;

static witem *whead;

worker *worker_new(struct event_base *base)
{
    (void)base;
    return NULL;
}

int worker_submit(worker *w, void (*work)(void *), void (*done)(void *), void *arg)
{
    witem *it = calloc(1, sizeof *it), **pp = &whead;

    (void)w;
    it->work = work;
    it->done = done;
    it->arg = arg;
    while (*pp)
        pp = &(*pp)->next;
    *pp = it;
    return 0;
}

void worker_free(worker *w) { (void)w; }

/* Answers every batch and runs every offloaded step queued so far (and
 * those they queue in turn). */
void stub_store_drain(void)
{
    while (head != NULL || whead != NULL) {
        if (head != NULL) {
            pending *p = head;
            head = p->next;
            if (head == NULL)
                tail = NULL;
            p->done(p->arg, 1, p->replies);
            free(p);
        } else {
            witem *it = whead;
            whead = it->next;
            it->work(it->arg);
            it->done(it->arg);
            free(it);
        }
    }
}

/* No replicas here: acknowledged as soon as applied (min_replicas_ack 0). */
int store_exec_acked(store *s, json_t *cmds, int transaction, store_done_fn done, void *arg)
{
    return store_exec(s, cmds, transaction, done, arg);
}
