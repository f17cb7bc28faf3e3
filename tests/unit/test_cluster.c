/* test_cluster.c - kgc_cluster: key slots, the slot map, error replies. */
#include <string.h>

#include "check.h"
#include "kgc_cluster.h"

static unsigned slot(const char *k) { return kgc_cluster_slot(k, strlen(k)); }

static void test_slots(void)
{
    /* CRC16-XMODEM's check value: "123456789" -> 0x31C3. */
    CHECK_EQ_LL(slot("123456789"), 0x31C3 % 16384);
    CHECK_EQ_LL(slot("foo"), 12182);                    /* redis-cli CLUSTER KEYSLOT foo */
    CHECK_EQ_LL(slot("bar"), 5061);
    CHECK_EQ_LL(slot("user1000"), 3443);                /* values from a real node: CLUSTER KEYSLOT */
    CHECK_EQ_LL(slot("{user1000}.following"), slot("user1000"));
    CHECK_EQ_LL(slot("{user1000}.followers"), slot("user1000"));
    CHECK_EQ_LL(slot("foo{}{bar}"), 8363);                 /* empty tag: the whole key */
    CHECK(slot("foo{}{bar}") != slot("bar"));
    CHECK_EQ_LL(slot("foo{{bar}}zap"), 4015);             /* "{bar": from the first brace */
    CHECK_EQ_LL(slot("foo{bar}{zap}"), slot("bar"));        /* the first tag only */
    CHECK_EQ_LL(slot("kg:{t:T1}:wallet:w1"), 12009);
    CHECK_EQ_LL(slot(""), 0);
    CHECK_EQ_LL(slot("{"), slot("{"));
    CHECK_EQ_LL(kgc_cluster_slot("a{b}c", 3), slot("a{b"));  /* len, not NUL, bounds it */
}

/* A CLUSTER SLOTS reply built by hand. */
static redisReply R_int(long long v) { redisReply r = {0}; r.type = REDIS_REPLY_INTEGER; r.integer = v; return r; }
static redisReply R_str(char *s) { redisReply r = {0}; r.type = REDIS_REPLY_STRING; r.str = s; r.len = strlen(s); return r; }
static redisReply R_arr(redisReply **e, size_t n) { redisReply r = {0}; r.type = REDIS_REPLY_ARRAY; r.element = e; r.elements = n; return r; }

static void test_map(void)
{
    kgc_cluster_map m;
    char err[200];
    char h1[] = "127.0.0.1", h2[] = "", id[] = "abc";
    redisReply lo0 = R_int(0), hi0 = R_int(8191), lo1 = R_int(8192), hi1 = R_int(16383);
    redisReply host1 = R_str(h1), port1 = R_int(7001), id1 = R_str(id);
    redisReply host2 = R_str(h2), port2 = R_int(7002);
    redisReply *n1e[] = {&host1, &port1, &id1}, *n2e[] = {&host2, &port2};
    redisReply n1 = R_arr(n1e, 3), n2 = R_arr(n2e, 2);
    redisReply *r0e[] = {&lo0, &hi0, &n1}, *r1e[] = {&lo1, &hi1, &n2};
    redisReply r0 = R_arr(r0e, 3), r1 = R_arr(r1e, 3);
    redisReply *tope[] = {&r0, &r1};
    redisReply top = R_arr(tope, 2), half = R_arr(tope, 1);

    kgc_cluster_map_init(&m);
    CHECK_EQ_LL(m.slot_node[5], KGC_CLUSTER_NONE);
    CHECK_EQ_LL(kgc_cluster_map_apply(&m, &half, "10.0.0.9", err, sizeof err), 0);
    CHECK_EQ_LL(m.complete, 0);
    CHECK_EQ_LL(m.slot_node[16000], KGC_CLUSTER_NONE);
    CHECK_EQ_LL(kgc_cluster_map_apply(&m, &top, "10.0.0.9", err, sizeof err), 0);
    CHECK_EQ_LL(m.complete, 1);
    CHECK_EQ_LL(m.nnodes, 2);
    CHECK_EQ_LL(m.nodes[m.slot_node[0]].port, 7001);
    CHECK_EQ_LL(m.nodes[m.slot_node[8191]].port, 7001);
    CHECK_EQ_LL(m.nodes[m.slot_node[8192]].port, 7002);
    CHECK(strcmp(m.nodes[m.slot_node[16383]].host, "10.0.0.9") == 0);  /* "" = the node asked */

    /* MOVED patches one slot; the node's index is kept across refreshes. */
    CHECK_EQ_LL(kgc_cluster_map_move(&m, 12182, "127.0.0.1", 7003), 0);
    CHECK_EQ_LL(m.nodes[m.slot_node[12182]].port, 7003);
    CHECK_EQ_LL(m.nnodes, 3);
    CHECK_EQ_LL(kgc_cluster_map_apply(&m, &top, "10.0.0.9", err, sizeof err), 0);
    CHECK_EQ_LL(m.nodes[m.slot_node[12182]].port, 7002);
    CHECK_EQ_LL(kgc_cluster_node(&m, "127.0.0.1", 7003), 2);

    /* A bad reply leaves the map as it was. */
    redisReply bad_hi = R_int(16384);
    redisReply *bade[] = {&lo0, &bad_hi, &n1};
    redisReply badr = R_arr(bade, 3);
    redisReply *badtope[] = {&r0, &badr};
    redisReply badtop = R_arr(badtope, 2);
    kgc_cluster_map before = m;
    CHECK_EQ_LL(kgc_cluster_map_apply(&m, &badtop, "x", err, sizeof err), -1);
    CHECK(memcmp(&before, &m, sizeof m) == 0);
    redisReply e = {0};
    char msg[] = "ERR This instance has cluster support disabled";
    e.type = REDIS_REPLY_ERROR; e.str = msg; e.len = strlen(msg);
    CHECK_EQ_LL(kgc_cluster_map_apply(&m, &e, "x", err, sizeof err), -1);
    CHECK(strstr(err, "cluster support disabled") != NULL);
}

static int cls(const char *s, unsigned *slot, kgc_hostport *to)
{
    return kgc_cluster_classify(s, strlen(s), slot, to);
}

static void test_classify(void)
{
    unsigned s = 0;
    kgc_hostport to;

    CHECK_EQ_LL(cls("MOVED 3999 127.0.0.1:6381", &s, &to), KGC_CE_MOVED);
    CHECK_EQ_LL(s, 3999);
    CHECK(strcmp(to.host, "127.0.0.1") == 0);
    CHECK_EQ_LL(to.port, 6381);
    CHECK_EQ_LL(cls("ASK 12182 ::1:7002", &s, &to), KGC_CE_ASK);
    CHECK_EQ_LL(s, 12182);
    CHECK(strcmp(to.host, "::1") == 0);
    CHECK_EQ_LL(to.port, 7002);
    CHECK_EQ_LL(cls("MOVED 16384 127.0.0.1:6381", &s, &to), KGC_CE_OTHER);
    CHECK_EQ_LL(cls("MOVED 1 127.0.0.1:0", &s, &to), KGC_CE_OTHER);
    CHECK_EQ_LL(cls("MOVED 1 127.0.0.1", &s, &to), KGC_CE_OTHER);
    CHECK_EQ_LL(cls("MOVED", &s, &to), KGC_CE_OTHER);
    CHECK_EQ_LL(cls("TRYAGAIN Multiple keys request during rehashing of slot", NULL, NULL),
                KGC_CE_RETRY);
    CHECK_EQ_LL(cls("CLUSTERDOWN The cluster is down", NULL, NULL), KGC_CE_RETRY);
    CHECK_EQ_LL(cls("LOADING Redis is loading the dataset in memory", NULL, NULL), KGC_CE_RETRY);
    CHECK_EQ_LL(cls("READONLY You can't write against a read only replica.", NULL, NULL),
                KGC_CE_READONLY);
    CHECK_EQ_LL(cls("NOSCRIPT No matching script.", NULL, NULL), KGC_CE_OTHER);
    CHECK_EQ_LL(cls("ASKING", NULL, NULL), KGC_CE_OTHER);   /* a word, not ASK */
    CHECK_EQ_LL(cls("ERR unknown command", NULL, NULL), KGC_CE_OTHER);
}

int main(void)
{
    test_slots();
    test_map();
    test_classify();
    return CHECK_DONE();
}
