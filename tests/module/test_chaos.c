/*
 * test_chaos.c - allocation failure on libkeygate's request path, in the
 * manner of jansson's test/suites/api/test_chaos.c: for every N, the Nth
 * allocation made during the call under test fails, until an N is reached
 * that the call no longer makes.
 *
 * How: this executable defines malloc, calloc, realloc and free (forwarding
 * to glibc's __libc_* functions). An executable's definitions win over
 * libc's for every shared object of the process, so the countdown sees the
 * allocations of libkeygate, hiredis (whose hi_malloc & co. call malloc),
 * jansson and libc alike. It counts only while the test is inside a kg_*
 * call (IN_LIB) and the countdown is armed, so Redis fixtures and printing
 * are never hit. Every allocation made inside a kg_* call is also recorded
 * until freed: after kg_close the record must be empty (no leak), and no
 * file descriptor may be left open, whatever failed.
 *
 * Each N runs in a forked child from a fresh context, so that a crash is
 * reported with the stack of the allocation that failed and the search
 * goes on. The scenarios, each in the blocking form (kg_authorize) and
 * the non-blocking one (kg_authorize_start + the loop calls, the window
 * spanning start to done):
 *   open    kg_open itself (blocking form only)
 *   cold    a fresh context's first payg request: connects, subscribes,
 *           reads token, key and catalog, loads the debit script, charges
 *   payg    a payg request on a warm context (cache hit, script known)
 *   free    a free-service request on a warm context
 *   replay  a payg request whose request id was charged before
 *   pair    two payg requests in flight at once (non-blocking form only)
 * A call under a failed allocation may only answer KG_OK (and then its
 * charge happened, exactly once) or KG_BACKEND_ERROR (charged or not, as a
 * timeout). Then, allocations allowed again, the same request id is sent:
 * it must succeed, charging only if the first did not; the balance moves
 * with the ledger, entry by entry; a replay never charges.
 *
 * Some allocations cannot fail without a crash in code that is not
 * libkeygate's (hiredis 0.14.1, jansson 2.14).
 * A run that dies of a signal is listed as known when both the failed
 * allocation's stack and the crash stack point into that code (see
 * known_site()); anything else failing fails the test.
 *
 * Options: --stride K (try N = 1, 1+K, 1+2K, ...; for valgrind),
 * --budget S (stop starting new N after S seconds), --only SCENARIO.
 * Diagnostics: CHAOS_KNOWN=1 prints the stacks of the known runs,
 * CHAOS_SLOW=MS those of runs slower than MS.
 */
#define _GNU_SOURCE
#include "kgt.h"

#include <dirent.h>
#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <execinfo.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define COST 150                      /* input_tokens 1000 on "small" */
#define MAX_FRAMES 40

/* ------------------------------------------------------------------ */
/* The allocator                                                        */

void *__libc_malloc(size_t n);
void *__libc_calloc(size_t n, size_t size);
void *__libc_realloc(void *p, size_t n);
void __libc_free(void *p);

/* What a child tells its parent, in memory shared across fork(). */
typedef struct shared {
    int fired;                        /* the countdown failed an allocation */
    long seen;                        /* allocations counted while armed */
    int nframes;
    void *frames[MAX_FRAMES];         /* the failed allocation's stack */
    int ncrash;
    void *crash[MAX_FRAMES];          /* the stack where the child died of a signal */
    char phase[64];                   /* what the child was doing */
} shared;

static shared *shm;

static struct {
    int tracking;                     /* > 0: inside a kg_* call */
    int armed;
    long fail_at;                     /* the armed allocation to fail, 1-based */
    int in_hook;                      /* inside backtrace(): pass through */
    long seq;                         /* allocations recorded so far */
    long tracked_total;               /* ever recorded (interposition works) */
} al;

/* Live allocations made inside kg_* calls: open addressing on the pointer. */
#define TAB_BITS 17
#define TAB_SIZE (1u << TAB_BITS)
#define TOMB ((void *)1)
static void *tab_ptr[TAB_SIZE];
static void *tab_site[TAB_SIZE];      /* who called malloc */
static long tab_seq[TAB_SIZE];
static size_t tab_live, tab_used;
static int tab_full;                  /* an allocation went unrecorded */

static size_t tab_slot(const void *p)
{
    return (size_t)(((uintptr_t)p >> 4) * 0x9E3779B97F4A7C15ull >> (64 - TAB_BITS));
}

static void tab_add(void *p, void *site)
{
    size_t i = tab_slot(p);

    if (tab_used >= TAB_SIZE - TAB_SIZE / 8) {
        tab_full = 1;                 /* checked with the leaks */
        return;
    }
    while (tab_ptr[i] != NULL && tab_ptr[i] != TOMB)
        i = (i + 1) & (TAB_SIZE - 1);
    if (tab_ptr[i] == NULL)
        tab_used++;
    tab_ptr[i] = p;
    tab_site[i] = site;
    tab_seq[i] = ++al.seq;
    tab_live++;
    al.tracked_total++;
}

/* Returns 1 if p was recorded (and forgets it). */
static int tab_del(void *p)
{
    size_t i = tab_slot(p);

    while (tab_ptr[i] != NULL) {
        if (tab_ptr[i] == p) {
            tab_ptr[i] = TOMB;
            tab_live--;
            return 1;
        }
        i = (i + 1) & (TAB_SIZE - 1);
    }
    return 0;
}

static void tab_reset(void)
{
    memset(tab_ptr, 0, sizeof tab_ptr);
    tab_live = tab_used = 0;
    tab_full = 0;
}

/* Counts one allocation; 1 = fail it. Keeps the stack of the one failed. */
static __attribute__((noinline)) int should_fail(void)
{
    if (!al.armed || al.tracking <= 0 || al.in_hook)
        return 0;
    if (++shm->seen != al.fail_at)
        return 0;
    al.in_hook = 1;
    shm->nframes = backtrace(shm->frames, MAX_FRAMES);
    al.in_hook = 0;
    shm->fired = 1;
    al.armed = 0;                     /* one failure per run, as in jansson */
    return 1;
}

static int recording(void)
{
    return al.tracking > 0 && !al.in_hook;
}

void *malloc(size_t n)
{
    void *p;

    if (should_fail()) {
        errno = ENOMEM;
        return NULL;
    }
    p = __libc_malloc(n);
    if (p != NULL && recording())
        tab_add(p, __builtin_return_address(0));
    return p;
}

void *calloc(size_t n, size_t size)
{
    void *p;

    if (should_fail()) {
        errno = ENOMEM;
        return NULL;
    }
    p = __libc_calloc(n, size);
    if (p != NULL && recording())
        tab_add(p, __builtin_return_address(0));
    return p;
}

void *realloc(void *old, size_t n)
{
    void *p;
    int was;

    if (old == NULL)
        return malloc(n);
    if (n == 0) {
        tab_del(old);
        return __libc_realloc(old, 0);
    }
    if (should_fail()) {
        errno = ENOMEM;
        return NULL;                  /* old stays valid, as realloc promises */
    }
    was = tab_del(old);
    p = __libc_realloc(old, n);
    if (p == NULL) {
        if (was)
            tab_add(old, __builtin_return_address(0));
        return NULL;
    }
    if (was || recording())
        tab_add(p, __builtin_return_address(0));
    return p;
}

void free(void *p)
{
    if (p == NULL)
        return;
    tab_del(p);
    __libc_free(p);
}

#define IN_LIB(stmt)        \
    do {                    \
        al.tracking++;      \
        stmt;               \
        al.tracking--;      \
    } while (0)

/* Arms the countdown for the call under test; 0 leaves it alone (the
 * same helpers serve warm-ups and retries). */
static void arm(long fail_at)
{
    if (fail_at <= 0)
        return;
    shm->seen = 0;
    shm->fired = 0;
    shm->nframes = 0;
    al.fail_at = fail_at;
    al.armed = 1;
}

static void disarm(void)
{
    al.armed = 0;
}

static void phase(const char *what)
{
    size_t n = strlen(what);
    if (n >= sizeof shm->phase)
        n = sizeof shm->phase - 1;
    memcpy(shm->phase, what, n);
    shm->phase[n] = '\0';
}

/* ------------------------------------------------------------------ */
/* Symbols: names for the stack of a failed allocation. dladdr() knows   */
/* exported symbols only; libkeygate's own functions are hidden, so the  */
/* ELF symbol table of the file is read as well.                         */

typedef struct symfile {
    char path[512];
    const unsigned char *map;
    const Elf64_Sym *syms;
    size_t nsyms;
    const char *str;
    int relative;                     /* ET_DYN: values are offsets from the load base */
} symfile;

static symfile symfiles[24];
static int nsymfiles;

static symfile *symfile_get(const char *path)
{
    symfile *sf;
    struct stat st;
    const Elf64_Ehdr *eh;
    const Elf64_Shdr *sh;
    int fd, pick = -1;

    for (int i = 0; i < nsymfiles; i++)
        if (strcmp(symfiles[i].path, path) == 0)
            return &symfiles[i];
    if (nsymfiles == (int)(sizeof symfiles / sizeof symfiles[0]))
        return NULL;
    sf = &symfiles[nsymfiles++];
    memset(sf, 0, sizeof *sf);
    snprintf(sf->path, sizeof sf->path, "%s", path);
    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
        return sf;
    if (fstat(fd, &st) == 0 && st.st_size > (off_t)sizeof *eh)
        sf->map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (sf->map == NULL || sf->map == MAP_FAILED) {
        sf->map = NULL;
        return sf;
    }
    eh = (const Elf64_Ehdr *)sf->map;
    if (memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0 || eh->e_ident[EI_CLASS] != ELFCLASS64 ||
        eh->e_shoff == 0 || eh->e_shoff + (size_t)eh->e_shnum * sizeof *sh > (size_t)st.st_size)
        return sf;
    sh = (const Elf64_Shdr *)(sf->map + eh->e_shoff);
    for (int i = 0; i < eh->e_shnum; i++)
        if (sh[i].sh_type == SHT_SYMTAB || (pick < 0 && sh[i].sh_type == SHT_DYNSYM))
            pick = i;
    if (pick < 0 || sh[pick].sh_link >= eh->e_shnum)
        return sf;
    sf->syms = (const Elf64_Sym *)(sf->map + sh[pick].sh_offset);
    sf->nsyms = sh[pick].sh_size / sizeof(Elf64_Sym);
    sf->str = (const char *)(sf->map + sh[sh[pick].sh_link].sh_offset);
    sf->relative = eh->e_type == ET_DYN;
    return sf;
}

/* The function containing a return address, e.g. "kg_entry_build" or
 * "libhiredis.so.0.14+0x5a3c" when the file has no name for it. */
static void sym_name(void *ret, char *out, size_t outlen)
{
    uintptr_t a = (uintptr_t)ret - 1, off;
    const char *path, *base;
    symfile *sf;
    Dl_info di;

    if (dladdr((void *)a, &di) == 0 || di.dli_fname == NULL) {
        snprintf(out, outlen, "%p", ret);
        return;
    }
    path = di.dli_fname;
    if (path[0] == '\0' || strcmp(path, program_invocation_name) == 0)
        path = "/proc/self/exe";
    sf = symfile_get(path);
    off = a - (uintptr_t)di.dli_fbase;
    if (sf != NULL && sf->syms != NULL) {
        uintptr_t v = sf->relative ? off : a;
        for (size_t i = 0; i < sf->nsyms; i++) {
            const Elf64_Sym *s = &sf->syms[i];
            if (ELF64_ST_TYPE(s->st_info) == STT_FUNC && s->st_value <= v &&
                v < s->st_value + s->st_size) {
                snprintf(out, outlen, "%s", sf->str + s->st_name);
                return;
            }
        }
    }
    base = strrchr(di.dli_fname, '/');
    snprintf(out, outlen, "%s+0x%lx", base != NULL ? base + 1 : di.dli_fname, (unsigned long)off);
}

/* The failed allocation's stack, from the allocator's caller outwards:
 * frames 0 and 1 are should_fail and malloc/calloc/realloc. */
#define FRAME0 2

static int stack_names(const shared *s, char names[][96], int max)
{
    int n = 0;
    for (int i = FRAME0; i < s->nframes && n < max; i++)
        sym_name(s->frames[i], names[n++], 96);
    return n;
}

static void print_stack(const shared *s)
{
    char names[MAX_FRAMES][96];
    int n = stack_names(s, names, 16);

    for (int i = 0; i < n; i++)
        fprintf(stderr, "      %s%s\n", i == 0 ? "alloc in " : "  from ", names[i]);
}

/* Where a child died: the innermost function of the crash stack that is
 * neither libc (abort, raise, strcmp ...; valgrind's strcmp lives in its
 * vgpreload object) nor this test (the handler). */
static void on_crash(int sig)
{
    (void)sig;
    shm->ncrash = backtrace(shm->crash, MAX_FRAMES);
}                                     /* SA_RESETHAND: the signal kills us next */

static void catch_crashes(void)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_crash;
    sa.sa_flags = SA_RESETHAND;
    sigaction(SIGSEGV, &sa, NULL);
    sigaction(SIGBUS, &sa, NULL);
    sigaction(SIGABRT, &sa, NULL);
}

static void crash_where(const shared *s, char *fn, size_t fnlen, char *obj, size_t objlen)
{
    snprintf(fn, fnlen, "?");
    snprintf(obj, objlen, "?");
    for (int i = 1; i < s->ncrash; i++) {
        Dl_info di;
        const char *base;
        if (dladdr((char *)s->crash[i] - 1, &di) == 0 || di.dli_fname == NULL)
            continue;
        base = strrchr(di.dli_fname, '/');
        base = base != NULL ? base + 1 : di.dli_fname;
        if (strncmp(base, "libc.so", 7) == 0 || strncmp(base, "vgpreload", 9) == 0 ||
            di.dli_fname[0] == '\0' ||
            strcmp(di.dli_fname, program_invocation_name) == 0)
            continue;
        sym_name(s->crash[i], fn, fnlen);
        snprintf(obj, objlen, "%s", base);
        return;
    }
}

/* Allocation sites whose failure crashes code that is not libkeygate's,
 * recognised by the failed allocation's stack, the signal the run died
 * of (0: none) and where it died. NULL: not a known one. Each was read in
 * the library's source. */
static const char *known_alloc(char f[][96], int n, int sig);

static const char *known_site(const shared *s, int sig)
{
    char f[12][96], cfn[96], cobj[96];
    int n = stack_names(s, f, 12);
    const char *why = known_alloc(f, n, sig);

    /* ... and the run must have died in the code blamed, not in ours. */
    crash_where(s, cfn, sizeof cfn, cobj, sizeof cobj);
    if (why == NULL)
        return NULL;
    if (strstr(why, "hiredis") == why)
        return strncmp(cobj, "libhiredis", 10) == 0 ? why : NULL;
    if (strstr(why, "jansson") == why)
        return why;                   /* a heap overflow: it may die anywhere later */
    return NULL;
}

/* The allocation half of known_site(). */
static const char *known_alloc(char f[][96], int n, int sig)
{

    /* hiredis 0.14.1 (alloc.c): hi_malloc, hi_calloc, hi_realloc and
     * hi_strdup abort() when malloc fails (HIREDIS_OOM_HANDLER). It uses
     * them for the socket path, its subscription dicts and their iterators. */
    for (int i = 0; i < n && i < 3; i++)
        if (sig == SIGABRT && strncmp(f[i], "hi_", 3) == 0)
            return "hiredis 0.14.1 aborts when hi_malloc & co. fail (by design)";
    /* hiredis 0.14.1 hiredis.c, redisBufferWrite: once the output buffer
     * is written out it is replaced by sdsempty(), unchecked, and read
     * (sdslen) at once. Every write of a whole buffer makes it. */
    if (sig == SIGSEGV && n >= 2 && strcmp(f[0], "sdsnewlen") == 0 &&
        strcmp(f[1], "redisBufferWrite") == 0)
        return "hiredis 0.14.1 dereferences a failed sdsempty() after a complete write";
    /* hiredis 0.14.1 async.c, __redisGetSubscribeCallback (inlined into
     * redisProcessCallbacks): the channel name of every reply on a
     * subscribed connection is copied with sdsnewlen and looked up
     * unchecked. */
    if (sig == SIGSEGV && n >= 2 && strcmp(f[0], "sdsnewlen") == 0 &&
        strcmp(f[1], "redisProcessCallbacks") == 0)
        return "hiredis 0.14.1 dereferences a failed sdsnewlen in its subscribe callback lookup";
    /* hiredis 0.14.1 async.c, __redisAsyncCommand for SUBSCRIBE: the
     * channel name (sdsnewlen) and the dict's table (dictExpand, calloc)
     * are used unchecked by dictReplace. Formatting the command
     * (redisvFormatCommand) and appending it are checked. */
    for (int i = 0; sig == SIGSEGV && i < n; i++) {
        if (strcmp(f[i], "redisvFormatCommand") == 0 || strcmp(f[i], "__redisAppendCommand") == 0)
            break;
        if (strcmp(f[i], "redisvAsyncCommand") == 0)
            return "hiredis 0.14.1 uses a failed allocation unchecked when it records a SUBSCRIBE";
    }
    /* jansson 2.14 load.c: lex_save() ignores a failed growth of the
     * token buffer (strbuffer_append_byte). When the byte lost is a
     * string's closing quote, lex_scan_string copies on past the end of
     * the token into a buffer sized for it: a heap overflow, which
     * asserts (load.c:442), faults, trips glibc's heap checks later, or
     * (under valgrind) is reported and survived. Any end but success. */
    if (n >= 1 && strncmp(f[0], "libjansson", 10) == 0)
        for (int i = 1; i < n; i++)
            if (strcmp(f[i], "json_loadb") == 0)
                return "jansson 2.14's lexer overflows the heap after a failed token buffer growth (load.c)";
    return NULL;
}

/* ------------------------------------------------------------------ */
/* A poll() host for the non-blocking form (it allocates nothing: it     */
/* runs inside kg_* calls).                                             */

#define MAXFD 8
static struct { int fd, events; } watched[MAXFD];
static int nwatched;

static void host_watch(void *host, int fd, int events)
{
    (void)host;
    for (int i = 0; i < nwatched; i++)
        if (watched[i].fd == fd) {
            if (events == 0)
                watched[i] = watched[--nwatched];
            else
                watched[i].events = events;
            return;
        }
    if (events != 0 && nwatched < MAXFD) {
        watched[nwatched].fd = fd;
        watched[nwatched].events = events;
        nwatched++;
    }
}

static const kg_loop_hooks hooks = {KG_ABI_VERSION, host_watch};
static int done_calls;

static void on_done(void *arg, kg_result *res)
{
    (void)res;
    (*(int *)arg)++;
    done_calls++;
}

static void turn(kg_ctx *ctx, int max_ms)
{
    struct pollfd pf[MAXFD];
    int n = nwatched, t, rc, next;

    IN_LIB(t = kg_loop_next_timeout_ms(ctx));
    if (t < 0 || t > max_ms)
        t = max_ms;
    for (int i = 0; i < n; i++) {
        pf[i].fd = watched[i].fd;
        pf[i].events = (short)(((watched[i].events & KG_EV_READ) ? POLLIN : 0) |
                               ((watched[i].events & KG_EV_WRITE) ? POLLOUT : 0));
        pf[i].revents = 0;
    }
    rc = poll(pf, (nfds_t)n, t);
    for (int i = 0; rc > 0 && i < n; i++) {
        int ev = 0;
        if (pf[i].revents & (POLLIN | POLLHUP | POLLERR))
            ev |= KG_EV_READ;
        if (pf[i].revents & (POLLOUT | POLLHUP | POLLERR))
            ev |= KG_EV_WRITE;
        if (ev)
            IN_LIB(kg_loop_ready(ctx, pf[i].fd, ev));
    }
    IN_LIB(next = kg_loop_next_timeout_ms(ctx));
    if (next == 0)
        IN_LIB(kg_loop_timeout(ctx));
}

/* ------------------------------------------------------------------ */
/* Requests and their checks                                            */

enum { S_OPEN, S_COLD, S_PAYG, S_FREE, S_REPLAY, S_PAIR, NSCN };
static const char *const scn_name[NSCN] = {"open", "cold", "payg", "free", "replay", "pair"};
enum { F_BLOCK, F_LOOP };
static const char *const form_name[2] = {"blocking", "loop"};

static kgt_env env;
static kgt_world w;
static int leak_checks = 1;           /* off while libc pays its one-time allocations */

/* One request in the given form; answers its status. */
static kg_status ask(kg_ctx *ctx, int form, const kg_request *rq, kg_result *res)
{
    kg_pending *h = NULL;
    int rc, done = 0;
    int64_t until;
    kg_status s;

    memset(res, 0x5A, sizeof *res);
    if (form == F_BLOCK) {
        IN_LIB(s = kg_authorize(ctx, rq, res));
        KGT_CHECK(s == res->status, "kg_authorize returned %s, res says %s",
                  kg_status_code(s), kg_status_code(res->status));
        return s;
    }
    IN_LIB(rc = kg_authorize_start(ctx, rq, res, on_done, &done, &h));
    KGT_CHECK(rc >= -1 && rc <= 1, "kg_authorize_start returned %d", rc);
    if (rc != 1) {
        KGT_CHECK(rc == 0 || res->status == KG_BACKEND_ERROR || res->status == KG_BAD_REQUEST,
                  "rc -1 with status %s", kg_status_code(res->status));
        KGT_CHECK(h == NULL, "a handle for a request answered at once");
        return res->status;
    }
    until = kgt_now_ms() + 5000;
    while (!done) {
        KGT_CHECK(kgt_now_ms() < until, "an in-flight request never completed (stuck context)");
        turn(ctx, 20);
    }
    KGT_CHECK(done == 1, "done called %d times", done);
    return res->status;
}

typedef struct money {
    long long bal, len;
} money;

static money money_now(void)
{
    money m = {kgt_balance(&env, &w), kgt_ledger_len(&env, &w)};
    return m;
}

/* The newest ledger entry is this request's debit of COST, leaving bal. */
static void check_newest_debit(const char *rid, long long bal)
{
    redisReply *r = kgt_cmd(&env, "LINDEX " KGT_PREFIX "{t:%s}:ledger:%s 0", w.team, w.wallet);
    json_t *e;
    json_error_t je;

    KGT_CHECK(r->type == REDIS_REPLY_STRING, "no newest ledger entry");
    e = json_loads(r->str, 0, &je);
    KGT_CHECK(e != NULL, "ledger entry is not JSON: %s", r->str);
    KGT_CHECK(strcmp(json_string_value(json_object_get(e, "type")), "debit") == 0 &&
              json_integer_value(json_object_get(e, "amount_micros")) == COST &&
              json_integer_value(json_object_get(e, "balance_micros")) == bal &&
              json_is_string(json_object_get(e, "request_id")) &&
              strcmp(json_string_value(json_object_get(e, "request_id")), rid) == 0,
              "newest ledger entry is not the debit of %s leaving %lld: %s", rid, bal, r->str);
    json_decref(e);
    freeReplyObject(r);
}

static void payg_request(kgt_req *r, const char *rid)
{
    kgt_request(r, w.tok, "text-generation", "small", rid, KGT_P("input_tokens", 1000), NULL);
}

/* A payg request with a new request id, the countdown armed at fail_at
 * (0: not armed). Checks the money against the answer; returns 1 if the
 * wallet was charged. */
static int payg_once(kg_ctx *ctx, int form, const char *rid, long fail_at)
{
    kgt_req r;
    kg_result res;
    money m0 = money_now(), m1;
    kg_status s;
    int charged;

    payg_request(&r, rid);
    arm(fail_at);
    s = ask(ctx, form, &r.req, &res);
    disarm();
    m1 = money_now();
    KGT_CHECK(s == KG_OK || (fail_at > 0 && s == KG_BACKEND_ERROR),
              "payg %s answered %s", rid, kg_status_code(s));
    KGT_CHECK(m1.len - m0.len == 0 || m1.len - m0.len == 1,
              "payg %s: %lld ledger entries", rid, m1.len - m0.len);
    charged = m1.len > m0.len;
    if (charged) {
        KGT_CHECK(m0.bal - m1.bal == COST, "payg %s: balance moved by %lld with one debit",
                  rid, m0.bal - m1.bal);
        check_newest_debit(rid, m1.bal);
    } else {
        KGT_CHECK(m1.bal == m0.bal, "payg %s: balance moved with no ledger entry", rid);
    }
    if (s == KG_OK) {
        KGT_CHECK(charged, "payg %s: KG_OK but nothing charged", rid);
        KGT_CHECK(res.cost_micros == COST && res.balance_micros == m1.bal && !res.replayed &&
                  strcmp(res.wallet_id, w.wallet) == 0 && strcmp(res.key_id, w.key) == 0,
                  "payg %s: KG_OK with cost %lld balance %lld replayed %d", rid,
                  (long long)res.cost_micros, (long long)res.balance_micros, res.replayed);
    } else {
        KGT_CHECK(res.cost_micros == 0 && !res.replayed, "payg %s: refused with cost %lld",
                  rid, (long long)res.cost_micros);
    }
    return charged;
}

/* The retry of a request id, allocations allowed: succeeds, charging
 * only if nothing was charged before. */
static void payg_retry(kg_ctx *ctx, int form, const char *rid, int was_charged)
{
    kgt_req r;
    kg_result res;
    money m0 = money_now(), m1;
    kg_status s;

    payg_request(&r, rid);
    s = ask(ctx, form, &r.req, &res);
    m1 = money_now();
    KGT_CHECK(s == KG_OK, "retry of %s answered %s: the context does not recover", rid,
              kg_status_code(s));
    if (was_charged) {
        KGT_CHECK(res.replayed && res.cost_micros == 0 && m1.len == m0.len && m1.bal == m0.bal,
                  "retry of charged %s: replayed %d cost %lld, %lld new entries", rid,
                  res.replayed, (long long)res.cost_micros, m1.len - m0.len);
    } else {
        KGT_CHECK(!res.replayed && res.cost_micros == COST && m1.len == m0.len + 1 &&
                  m0.bal - m1.bal == COST && res.balance_micros == m1.bal,
                  "retry of uncharged %s: replayed %d cost %lld, %lld new entries", rid,
                  res.replayed, (long long)res.cost_micros, m1.len - m0.len);
        check_newest_debit(rid, m1.bal);
    }
}

static int req_recorded(const char *rid)
{
    return (int)kgt_int(&env, "EXISTS " KGT_PREFIX "{t:%s}:req:%s:%s", w.team, w.key, rid);
}

/* A free-service request: never moves money; KG_OK means it was counted. */
static int free_once(kg_ctx *ctx, int form, const char *rid, long fail_at)
{
    kgt_req r;
    kg_result res;
    money m0 = money_now(), m1;
    kg_status s;
    int counted;

    kgt_request(&r, w.tok, "speech-to-text", NULL, rid, KGT_P("audio_seconds", 3), NULL);
    arm(fail_at);
    s = ask(ctx, form, &r.req, &res);
    disarm();
    m1 = money_now();
    counted = req_recorded(rid);
    KGT_CHECK(s == KG_OK || (fail_at > 0 && s == KG_BACKEND_ERROR), "free %s answered %s", rid,
              kg_status_code(s));
    KGT_CHECK(m1.bal == m0.bal && m1.len == m0.len, "a free request moved money");
    if (s == KG_OK)
        KGT_CHECK(counted && !res.replayed && res.cost_micros == 0 && res.balance_micros == -1,
                  "free %s: KG_OK with counted %d replayed %d cost %lld balance %lld", rid,
                  counted, res.replayed, (long long)res.cost_micros, (long long)res.balance_micros);
    return counted;
}

static void free_retry(kg_ctx *ctx, int form, const char *rid, int was_counted)
{
    kgt_req r;
    kg_result res;
    kg_status s;

    kgt_request(&r, w.tok, "speech-to-text", NULL, rid, KGT_P("audio_seconds", 3), NULL);
    s = ask(ctx, form, &r.req, &res);
    KGT_CHECK(s == KG_OK, "retry of free %s answered %s: the context does not recover", rid,
              kg_status_code(s));
    KGT_CHECK(res.replayed == was_counted, "retry of free %s: replayed %d, counted before %d",
              rid, res.replayed, was_counted);
}

/* A replay of rid (charged before, leaving bal): charges nothing. */
static void replay_once(kg_ctx *ctx, int form, const char *rid, long long bal, long fail_at)
{
    kgt_req r;
    kg_result res;
    money m0 = money_now(), m1;
    kg_status s;

    payg_request(&r, rid);
    arm(fail_at);
    s = ask(ctx, form, &r.req, &res);
    disarm();
    m1 = money_now();
    KGT_CHECK(s == KG_OK || (fail_at > 0 && s == KG_BACKEND_ERROR), "replay %s answered %s",
              rid, kg_status_code(s));
    KGT_CHECK(m1.bal == m0.bal && m1.len == m0.len, "replay of %s moved money", rid);
    if (s == KG_OK)
        KGT_CHECK(res.replayed && res.cost_micros == 0 && res.balance_micros == bal,
                  "replay %s: replayed %d cost %lld balance %lld (recorded %lld)", rid,
                  res.replayed, (long long)res.cost_micros, (long long)res.balance_micros, bal);
}

/* Two payg requests in flight at once (non-blocking form): whatever
 * fails, each request's answer and charge go together. */
static void pair_once(kg_ctx *ctx, const char *const rid[2], long fail_at, int charged[2])
{
    kgt_req r[2];
    kg_result res[2];
    kg_pending *h[2];
    int done[2] = {0, 0}, rc[2];
    long long entry_bal[2] = {-1, -1};
    money m0 = money_now(), m1;
    int64_t until;
    redisReply *l;

    arm(fail_at);
    for (int i = 0; i < 2; i++) {
        payg_request(&r[i], rid[i]);
        memset(&res[i], 0x5A, sizeof res[i]);
        IN_LIB(rc[i] = kg_authorize_start(ctx, &r[i].req, &res[i], on_done, &done[i], &h[i]));
        KGT_CHECK(rc[i] >= -1 && rc[i] <= 1, "kg_authorize_start returned %d", rc[i]);
        if (rc[i] != 1)
            done[i] = 1;
    }
    until = kgt_now_ms() + 5000;
    while (!done[0] || !done[1]) {
        KGT_CHECK(kgt_now_ms() < until, "an in-flight request never completed (stuck context)");
        turn(ctx, 20);
    }
    disarm();
    KGT_CHECK(done[0] == 1 && done[1] == 1, "done called %d and %d times", done[0], done[1]);
    m1 = money_now();
    KGT_CHECK(m1.len - m0.len >= 0 && m1.len - m0.len <= 2, "%lld new ledger entries for 2 requests",
              m1.len - m0.len);
    KGT_CHECK(m0.bal - m1.bal == COST * (m1.len - m0.len),
              "balance moved by %lld with %lld new debits", m0.bal - m1.bal, m1.len - m0.len);
    charged[0] = charged[1] = 0;
    l = kgt_cmd(&env, "LRANGE " KGT_PREFIX "{t:%s}:ledger:%s 0 %lld", w.team, w.wallet,
                m1.len - m0.len - 1);
    for (size_t k = 0; m1.len > m0.len && k < l->elements; k++) {
        json_t *e = json_loads(l->element[k]->str, 0, NULL);
        const char *erid = json_string_value(json_object_get(e, "request_id"));
        int which = erid == NULL ? -1 : strcmp(erid, rid[0]) == 0 ? 0 : strcmp(erid, rid[1]) == 0 ? 1 : -1;
        KGT_CHECK(which >= 0 && !charged[which] &&
                  json_integer_value(json_object_get(e, "amount_micros")) == COST,
                  "unexpected new ledger entry %s", l->element[k]->str);
        charged[which] = 1;
        entry_bal[which] = json_integer_value(json_object_get(e, "balance_micros"));
        json_decref(e);
    }
    freeReplyObject(l);
    for (int i = 0; i < 2; i++) {
        KGT_CHECK(res[i].status == KG_OK || (fail_at > 0 && res[i].status == KG_BACKEND_ERROR),
                  "pair %s answered %s", rid[i], kg_status_code(res[i].status));
        if (res[i].status == KG_OK)
            KGT_CHECK(charged[i] && res[i].cost_micros == COST && !res[i].replayed &&
                      res[i].balance_micros == entry_bal[i],
                      "pair %s: KG_OK, charged %d, cost %lld, balance %lld (ledger %lld)", rid[i],
                      charged[i], (long long)res[i].cost_micros, (long long)res[i].balance_micros,
                      entry_bal[i]);
        else
            KGT_CHECK(res[i].cost_micros == 0, "pair %s refused with a cost", rid[i]);
    }
}

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *de;
    int n = 0;

    KGT_CHECK(d != NULL, "opendir /proc/self/fd");
    while ((de = readdir(d)) != NULL)
        n += de->d_name[0] != '.';
    closedir(d);
    return n;
}

static void check_no_leak(const char *where)
{
    KGT_CHECK(!tab_full, "the record of live allocations overflowed");
    if (tab_live == 0 || !leak_checks)
        return;
    fprintf(stderr, "  %zu allocation(s) made inside kg_* calls still live after %s:\n",
            tab_live, where);
    for (size_t i = 0, shown = 0; i < TAB_SIZE && shown < 12; i++)
        if (tab_ptr[i] != NULL && tab_ptr[i] != TOMB) {
            char name[96];
            sym_name(tab_site[i], name, sizeof name);
            fprintf(stderr, "    #%ld %p allocated by %s\n", tab_seq[i], tab_ptr[i], name);
            shown++;
        }
    KGT_CHECK(0, "leak");
}

/* Every command Redis runs goes to its slow log (scripts count as their
 * EVALSHA): how the baseline sees which reads a request made. */
static void slowlog_start(void)
{
    for (int i = 0; i < kgt_nodes(&env); i++) {   /* every node of a cluster */
        freeReplyObject(kgt_node_cmd(&env, i, "CONFIG SET slowlog-max-len 10000"));
        freeReplyObject(kgt_node_cmd(&env, i, "CONFIG SET slowlog-log-slower-than 0"));
        freeReplyObject(kgt_node_cmd(&env, i, "SLOWLOG RESET"));
    }
}

/* HGETALL and GET commands since slowlog_start(): the library's reads of
 * token records, key documents and the catalog (the quota script's GET,
 * logged too, excepted). */
static long long slowlog_reads(void)
{
    long long n = 0;

    for (int k = 0; k < kgt_nodes(&env); k++) {
        redisReply *r;
        freeReplyObject(kgt_node_cmd(&env, k, "CONFIG SET slowlog-log-slower-than 10000"));
        r = kgt_node_cmd(&env, k, "SLOWLOG GET 10000");
        for (size_t i = 0; i < r->elements; i++) {
            redisReply *args = r->element[i]->elements > 3 ? r->element[i]->element[3] : NULL;
            if (args != NULL && args->type == REDIS_REPLY_ARRAY && args->elements > 0 &&
                (strcasecmp(args->element[0]->str, "HGETALL") == 0 ||
                 (strcasecmp(args->element[0]->str, "GET") == 0 && args->elements > 1 &&
                  strstr(args->element[1]->str, ":quota:") == NULL)))
                n++;
        }
        freeReplyObject(r);
    }
    return n;
}

/* One run of a scenario with the countdown at fail_at (0: none). */
static void run(int scn, int form, long fail_at, int tag)
{
    char err[256], rid[64], wrid[80];
    kg_ctx *ctx = NULL;
    int fds0 = count_fds();

    nwatched = 0;
    snprintf(rid, sizeof rid, "chaos-%s-%s-%ld-%d", scn_name[scn], form_name[form], fail_at, tag);
    if (scn == S_OPEN) {
        phase("kg_open (armed)");
        arm(fail_at);
        IN_LIB(ctx = kg_open(env.conf, err, sizeof err));
        disarm();
        if (ctx == NULL) {
            KGT_CHECK(fail_at > 0 && shm->fired, "kg_open failed: %s", err);
            KGT_CHECK(err[0] != '\0', "kg_open answered NULL with no reason");
            phase("after a failed kg_open");
            check_no_leak("a failed kg_open");
            KGT_CHECK(!leak_checks || count_fds() == fds0, "a failed kg_open left %d fds open",
                      count_fds() - fds0);
            return;
        }
        phase("first request (not armed)");
        payg_retry(ctx, form, rid, 0);
    } else {
        phase("kg_open and warm-up");
        IN_LIB(ctx = kg_open(env.conf, err, sizeof err));
        KGT_CHECK(ctx != NULL, "%s", err);
        if (form == F_LOOP) {
            int rc;
            IN_LIB(rc = kg_loop_attach(ctx, &hooks, NULL));
            KGT_CHECK(rc == 0, "kg_loop_attach");
        }
        /* Warm: the first request subscribes and reads everything; the
         * second caches the token (the subscription is confirmed by
         * then); the third is served from the cache. */
        for (int i = 0; scn != S_COLD && i < 3; i++) {
            snprintf(wrid, sizeof wrid, "%s-w%d", rid, i);
            if (scn == S_FREE)
                KGT_CHECK(free_once(ctx, form, wrid, 0), "warm-up not counted");
            else if (scn == S_PAYG || scn == S_PAIR)
                payg_once(ctx, form, wrid, 0);
            else if (i == 0)
                payg_once(ctx, form, rid, 0);
            else
                replay_once(ctx, form, rid, kgt_int(&env, "HGET " KGT_PREFIX "{t:%s}:req:%s:%s balance_micros",
                                                    w.team, w.key, rid), 0);
        }
        phase("the armed call");
        if (fail_at == 0)
            slowlog_start();
        switch (scn) {
        case S_COLD:
        case S_PAYG: {
            int charged = payg_once(ctx, form, rid, fail_at);
            phase("the retry");
            payg_retry(ctx, form, rid, charged);
            break;
        }
        case S_FREE: {
            int counted = free_once(ctx, form, rid, fail_at);
            phase("the retry");
            free_retry(ctx, form, rid, counted);
            break;
        }
        case S_PAIR: {
            char rid2[80];
            const char *rids[2] = {rid, rid2};
            int charged[2];
            snprintf(rid2, sizeof rid2, "%s-b", rid);
            pair_once(ctx, rids, fail_at, charged);
            phase("the retry");
            payg_retry(ctx, form, rid, charged[0]);
            payg_retry(ctx, form, rid2, charged[1]);
            break;
        }
        case S_REPLAY: {
            long long bal = kgt_int(&env, "HGET " KGT_PREFIX "{t:%s}:req:%s:%s balance_micros",
                                    w.team, w.key, rid);
            replay_once(ctx, form, rid, bal, fail_at);
            phase("the retry");
            replay_once(ctx, form, rid, bal, 0);
            break;
        }
        }
        /* The baseline proves the scenarios are what they say: a warm
         * context reads neither token nor key nor catalog. */
        if (fail_at == 0) {
            long long reads = slowlog_reads();
            KGT_CHECK(scn == S_COLD ? reads >= 3 : reads == 0,
                      "%s/%s: %lld reads of token, key or catalog", scn_name[scn],
                      form_name[form], reads);
        }
    }
    phase("kg_close");
    IN_LIB(kg_close(ctx));
    KGT_CHECK(nwatched == 0, "%d fds still watched after kg_close", nwatched);
    phase("after kg_close");
    check_no_leak("kg_close");
    KGT_CHECK(!leak_checks || count_fds() == fds0, "%d fds more after kg_close",
              count_fds() - fds0);
}

/* ------------------------------------------------------------------ */
/* The search                                                           */

enum { R_FIRED = 0, R_FAILED = 1, R_DONE = 2 };

static double secs(int64_t ms)
{
    return (double)ms / 1000.0;
}

/* Runs one N in a child. Returns R_FIRED (passed, the allocation failed),
 * R_DONE (passed, the call made fewer than N allocations) or R_FAILED. */
static int child(int scn, int form, long n, const char **known)
{
    pid_t pid;
    int st;
    int64_t t0 = kgt_now_ms();

    *known = NULL;
    memset(shm, 0, sizeof *shm);
    fflush(NULL);
    pid = fork();
    KGT_CHECK(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        catch_crashes();
        phase("connecting to Redis");
        KGT_CHECK(kgt_reconnect(&env) == 0, "redis: %s",
                  env.rc != NULL ? env.rc->errstr : "out of memory");
        run(scn, form, n, 0);
        _exit(shm->fired ? 0 : 3);
    }
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    if (getenv("CHAOS_SLOW") != NULL && kgt_now_ms() - t0 > atoi(getenv("CHAOS_SLOW"))) {
        fprintf(stderr, "slow: %s/%s N=%ld took %lld ms; the allocation that failed:\n",
                scn_name[scn], form_name[form], n, (long long)(kgt_now_ms() - t0));
        print_stack(shm);
    }
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
        return R_FIRED;
    if (WIFEXITED(st) && WEXITSTATUS(st) == 3)
        return R_DONE;
    if (shm->fired && (*known = known_site(shm, WIFSIGNALED(st) ? WTERMSIG(st) : 0)) != NULL) {
        if (getenv("CHAOS_KNOWN") != NULL) {
            fprintf(stderr, "known: %s/%s N=%ld signal %d: %s\n", scn_name[scn], form_name[form],
                    n, WIFSIGNALED(st) ? WTERMSIG(st) : 0, *known);
            print_stack(shm);
        }
        return R_FIRED;
    }
    fprintf(stderr, "FAIL %s/%s N=%ld: %s %d%s during %s\n", scn_name[scn], form_name[form], n,
            WIFSIGNALED(st) ? "killed by signal" : "exit status",
            WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st),
            WIFEXITED(st) && WEXITSTATUS(st) == 99 ? " (valgrind found errors)" : "", shm->phase);
    if (WIFSIGNALED(st)) {
        char cfn[96], cobj[96];
        crash_where(shm, cfn, sizeof cfn, cobj, sizeof cobj);
        fprintf(stderr, "    died in %s (%s)\n", cfn, cobj);
    }
    if (shm->fired) {
        fprintf(stderr, "    the allocation that failed:\n");
        print_stack(shm);
    } else {
        fprintf(stderr, "    (no allocation had failed)\n");
    }
    kgt_do(&env, "PING");               /* a Redis gone away ends the search here */
    return R_FAILED;
}

/* kg_open has no non-blocking form; two requests at once need one. */
static int applies(int scn, int form)
{
    return !(scn == S_OPEN && form == F_LOOP) && !(scn == S_PAIR && form == F_BLOCK);
}

typedef struct known_count {
    const char *what;
    int n;
    long first;
} known_count;

int main(int argc, char **argv)
{
    long stride = 1;
    int budget_s = 50, only = -1, failures = 0, truncated = 0;
    int64_t t0 = kgt_now_ms();
    known_count kc[8];
    int nkc = 0;
    void *probe[4];

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--stride") == 0 && i + 1 < argc)
            stride = atol(argv[++i]);
        else if (strcmp(argv[i], "--budget") == 0 && i + 1 < argc)
            budget_s = atoi(argv[++i]);
        else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc) {
            const char *s = argv[++i];
            for (int k = 0; k < NSCN; k++)
                if (strcmp(s, scn_name[k]) == 0)
                    only = k;
        } else {
            fprintf(stderr, "usage: %s [--stride K] [--budget SECONDS] [--only SCENARIO]\n", argv[0]);
            return 2;
        }
    }
    if (stride < 1)
        stride = 1;
    shm = mmap(NULL, sizeof *shm, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (shm == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    backtrace(probe, 4);                /* loads the unwinder now, not at the first failure */

    kgt_setup(&env, "timeout_ms 1000\n");   /* no run waits for it: only slow hosts would */
    kgt_catalog_quota(&env, "speech-to-text", 0);      /* unlimited: no KG_QUOTA_EXCEEDED */
    kgt_world_make(&env, &w, 1000000000000LL);

    /* Baseline, in this process: every scenario once with nothing
     * failing, twice (the first pays libc's one-time allocations, which
     * the children then inherit). The second run must leak nothing. */
    for (int pass = 0; pass < 2; pass++) {
        leak_checks = pass == 1;
        for (int scn = 0; scn < NSCN; scn++)
            for (int form = 0; form < 2; form++) {
                if (!applies(scn, form))
                    continue;
                run(scn, form, 0, pass + 1);
            }
        if (pass == 0)
            tab_reset();
    }
    KGT_CHECK(al.tracked_total > 0,
              "no allocation was seen inside kg_* calls: malloc is not interposed");
    tab_reset();

    for (int scn = 0; scn < NSCN; scn++) {
        for (int form = 0; form < 2; form++) {
            long n, last = 0, covered = 0, total = -1;
            int failed = 0, done = 0;
            int64_t s0 = kgt_now_ms();

            if ((only >= 0 && scn != only) || !applies(scn, form))
                continue;
            for (n = 1; !done; n += stride) {
                const char *known;
                if (kgt_now_ms() - t0 > (int64_t)budget_s * 1000) {
                    truncated = 1;
                    break;
                }
                switch (child(scn, form, n, &known)) {
                case R_FIRED:
                    covered++;
                    last = n;
                    if (known != NULL) {
                        int k;
                        for (k = 0; k < nkc && kc[k].what != known; k++)
                            ;
                        if (k == nkc && nkc < 8) {
                            kc[nkc].what = known;
                            kc[nkc].n = 0;
                            kc[nkc].first = n;
                            nkc++;
                        }
                        if (k < nkc)
                            kc[k].n++;
                    }
                    break;
                case R_DONE:
                    total = shm->seen;
                    done = 1;
                    break;
                default:
                    failed++;
                    last = n;
                    break;
                }
            }
            failures += failed;
            printf("%-7s %-8s N = 1..%ld%s, %ld allocations in the last run: %ld runs failed "
                   "an allocation, %d failed the test, %.1f s%s\n",
                   scn_name[scn], form_name[form], last, stride > 1 ? " (strided)" : "", total,
                   covered, failed, secs(kgt_now_ms() - s0), done ? "" : " (budget used up)");
            fflush(stdout);
        }
    }
    for (int k = 0; k < nkc; k++)
        printf("known, not libkeygate's: %d runs (first N=%ld): %s\n", kc[k].n, kc[k].first,
               kc[k].what);

    /* The whole ledger: balance = credits - debits. */
    {
        redisReply *r = kgt_cmd(&env, "LRANGE " KGT_PREFIX "{t:%s}:ledger:%s 0 -1", w.team, w.wallet);
        long long sum = 0, debits = 0;
        for (size_t i = 0; i < r->elements; i++) {
            json_t *e = json_loads(r->element[i]->str, 0, NULL);
            const char *type = json_string_value(json_object_get(e, "type"));
            long long amount = json_integer_value(json_object_get(e, "amount_micros"));
            KGT_CHECK(type != NULL, "bad ledger entry %s", r->element[i]->str);
            sum += strcmp(type, "credit") == 0 ? amount : -amount;
            debits += strcmp(type, "debit") == 0;
            json_decref(e);
        }
        KGT_CHECK(sum == kgt_balance(&env, &w), "balance %lld, ledger says %lld",
                  kgt_balance(&env, &w), sum);
        printf("wallet: %lld debits, balance %lld = credits - debits\n", debits, sum);
        freeReplyObject(r);
    }
    kgt_teardown(&env);
    printf("%s: %.1f s%s\n", failures ? "FAILED" : "ok", secs(kgt_now_ms() - t0),
           truncated ? " (time budget reached: not every N was tried)" : "");
    return failures ? 1 : 0;
}
