/*
 * A small embedder of tramway's C API: what a C language runtime does with it.
 *
 *  1. a grace domain over registered threads only (no green-thread runtime), a jit over it;
 *  2. a patch site over a C function (a forwarding trampoline), called in a loop by several
 *     registered pthreads while the main thread swaps it thousands of times between two C
 *     functions; every result must come from one of them;
 *  3. custom code emitted through a callback that encodes its own final address;
 *  4. a probe attached to a probed site (counting calls in its user data), detached, and its
 *     finalizer checked to run only after detach plus a grace period;
 *  5. a few error paths; then every handle is deleted (in an unusual order, which is allowed).
 *
 * Prints "OK" and exits 0 on success. Built and run by capi/tests/c_example.rs:
 *   cc -std=c11 -Icapi/include capi/examples/embedder.c target/debug/libtramway.a \
 *      -lpthread -ldl -lm -lrt -lutil
 */
#define _POSIX_C_SOURCE 200809L /* pthreads, sched_yield under -std=c11 */

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tramway.h"

/* Aborts the program with the error's message if `call` failed. */
#define CHECK(call)                                                                   \
    do {                                                                              \
        tw_error_t *err_ = (call);                                                    \
        if (err_ != NULL) {                                                           \
            fprintf(stderr, "%s:%d: %s failed: %s (code %d)\n", __FILE__, __LINE__,   \
                    #call, tw_error_message(err_), (int)tw_error_code(err_));         \
            tw_error_delete(err_);                                                    \
            exit(1);                                                                  \
        }                                                                             \
    } while (0)

/* Fails the program unless `cond` holds. */
#define EXPECT(cond)                                                                  \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "%s:%d: expected %s\n", __FILE__, __LINE__, #cond);       \
            exit(1);                                                                  \
        }                                                                             \
    } while (0)

/* Expects `call` to fail with `code`. */
#define EXPECT_ERROR(call, code)                                                      \
    do {                                                                              \
        tw_error_t *err_ = (call);                                                    \
        EXPECT(err_ != NULL);                                                         \
        if (tw_error_code(err_) != (code)) {                                          \
            fprintf(stderr, "%s:%d: %s: expected code %d, got %d: %s\n", __FILE__,    \
                    __LINE__, #call, (int)(code), (int)tw_error_code(err_),           \
                    tw_error_message(err_));                                          \
            exit(1);                                                                  \
        }                                                                             \
        tw_error_delete(err_);                                                        \
    } while (0)

typedef uint64_t (*unary_fn)(uint64_t);

static uint64_t add_one(uint64_t x) { return x + 1; }
static uint64_t add_two(uint64_t x) { return x + 2; }

enum {
    READERS = 3,
    MIN_SWAPS = 3000,    /* at least this many swaps, */
    MAX_SWAPS = 3000000, /* and more until every reader has seen both functions */
    CALLS_BETWEEN_QS = 64,
    PROBED_CALLS = 1000
};

struct reader {
    pthread_t thread;
    int index;
    tw_grace_domain_t *domain;
    tw_site_t *site;
    atomic_bool *stop;
    atomic_int *started;
    atomic_bool saw_both; /* has seen a result of each function */
    uint64_t calls, ones, twos, bad;
};

static bool all_saw_both(struct reader *readers) {
    for (int i = 0; i < READERS; i++) {
        if (!atomic_load_explicit(&readers[i].saw_both, memory_order_relaxed)) {
            return false;
        }
    }
    return true;
}

/* A registered reader: calls the site until told to stop, reporting a quiescent state
 * between batches of calls (it holds no pointer into JIT code there). */
static void *reader_main(void *arg) {
    struct reader *r = arg;
    CHECK(tw_register_thread(r->domain));
    EXPECT(tw_thread_is_online());
    unary_fn f = (unary_fn)tw_site_entry(r->site);
    while (!atomic_load_explicit(r->stop, memory_order_relaxed)) {
        for (int i = 0; i < CALLS_BETWEEN_QS; i++) {
            uint64_t x = r->calls++;
            uint64_t y = f(x);
            if (y == x + 1) {
                r->ones++;
            } else if (y == x + 2) {
                r->twos++;
            } else {
                r->bad++;
            }
        }
        EXPECT(tw_quiescent());
        if (r->ones > 0 && r->twos > 0) {
            atomic_store_explicit(&r->saw_both, true, memory_order_relaxed);
        }
        if (r->calls == CALLS_BETWEEN_QS) {
            atomic_fetch_add(r->started, 1);
        }
    }
    /* A stretch without JIT calls (a blocking wait, say): offline, then back. */
    EXPECT(tw_thread_offline());
    EXPECT(tw_thread_online());
    /* Reader 0 exits still registered: its thread-local destructor unregisters it. */
    if (r->index != 0) {
        CHECK(tw_unregister_thread());
        EXPECT(!tw_quiescent());
    }
    return NULL;
}

/* What a probe's hook and finalizer share (its user data). */
struct probe_counter {
    atomic_uint_fast64_t calls;
    atomic_uint_fast64_t bad_args;
    atomic_int finalized;
};

static void count_call(void *user, const tw_hook_args_t *args) {
    struct probe_counter *c = user;
    atomic_fetch_add(&c->calls, 1);
    if (args->int_args[0] != 7) {
        atomic_fetch_add(&c->bad_args, 1);
    }
}

static void finalize_counter(void *user) {
    struct probe_counter *c = user;
    atomic_fetch_add(&c->finalized, 1);
}

/* Emits `movabs rax, final_addr; ret`: a function returning the address it runs at. */
static size_t emit_own_address(void *user, uint8_t *buf, size_t cap, uintptr_t final_addr) {
    (void)user;
    if (cap < 11) {
        return 0;
    }
    uint64_t addr = (uint64_t)final_addr;
    buf[0] = 0x48; /* REX.W */
    buf[1] = 0xB8; /* mov rax, imm64 */
    memcpy(buf + 2, &addr, sizeof addr);
    buf[10] = 0xC3; /* ret */
    return 11;
}

static size_t emit_nothing(void *user, uint8_t *buf, size_t cap, uintptr_t final_addr) {
    (void)user, (void)buf, (void)cap, (void)final_addr;
    return 0;
}

int main(void) {
    /* 1. A threads-only grace domain and a jit that reclaims through it. */
    tw_grace_config_t gcfg;
    tw_grace_config_init(&gcfg);
    gcfg.callback_delay_us = 200;
    tw_grace_domain_t *domain = NULL;
    CHECK(tw_grace_domain_new_threads_only(&gcfg, &domain));

    tw_jit_config_t jcfg;
    tw_jit_config_init(&jcfg);
    jcfg.reservation_size = 64u << 20;
    tw_jit_t *jit = NULL;
    CHECK(tw_jit_new(domain, &jcfg, &jit));

    /* The main thread calls JIT code in parts 3 and 4: it registers too. */
    CHECK(tw_register_thread(domain));
    EXPECT_ERROR(tw_register_thread(domain), TW_ERROR_ALREADY_REGISTERED);

    /* 2. A site over add_one, swapped under load between add_one and add_two. */
    tw_code_t *first = NULL;
    CHECK(tw_jit_forward(jit, (tw_fn_t)add_one, &first));
    tw_site_t *site = NULL;
    CHECK(tw_site_new(jit, TW_SITE_INDIRECT, first, &site));

    atomic_bool stop = false;
    atomic_int started = 0;
    struct reader readers[READERS];
    for (int i = 0; i < READERS; i++) {
        readers[i] = (struct reader){
            .index = i, .domain = domain, .site = site, .stop = &stop, .started = &started};
        EXPECT(pthread_create(&readers[i].thread, NULL, reader_main, &readers[i]) == 0);
    }
    /* Swap only once every reader is calling. This thread is online, so the readers' grace
     * periods wait for its quiescent states while it waits. */
    while (atomic_load(&started) < READERS) {
        tw_quiescent();
        sched_yield();
    }
    int swaps = 0;
    while (swaps < MIN_SWAPS || !all_saw_both(readers)) {
        EXPECT(swaps < MAX_SWAPS);
        swaps++;
        tw_code_t *next = NULL;
        CHECK(tw_jit_forward(jit, (tw_fn_t)(swaps % 2 ? add_two : add_one), &next));
        CHECK(tw_site_swap(site, next));
        tw_code_delete(next); /* the site keeps it while installed */
        tw_quiescent();       /* the main thread holds no pointer into JIT code here */
    }
    atomic_store(&stop, true);
    uint64_t calls = 0, ones = 0, twos = 0;
    for (int i = 0; i < READERS; i++) {
        EXPECT(pthread_join(readers[i].thread, NULL) == 0);
        EXPECT(readers[i].bad == 0);
        calls += readers[i].calls;
        ones += readers[i].ones;
        twos += readers[i].twos;
    }
    EXPECT(ones > 0 && twos > 0 && ones + twos == calls);
    /* The first code was swapped out: retired, it cannot be installed again. */
    EXPECT(tw_code_is_retired(first));
    EXPECT_ERROR(tw_site_swap(site, first), TW_ERROR_RETIRED);
    CHECK(tw_jit_barrier(jit)); /* every trampoline retired so far is freed now */

    /* Polling: a cookie completes after a full grace period (tw_synchronize waits for one;
     * tw_barrier and tw_jit_barrier only wait for queued callbacks). */
    uint64_t cookie = 0;
    CHECK(tw_start_poll(domain, &cookie));
    CHECK(tw_synchronize(domain)); /* this thread goes offline while it waits */
    bool done = false;
    CHECK(tw_poll(domain, cookie, &done));
    EXPECT(done);

    /* 3. Custom code that encodes its own address. */
    tw_code_t *own = NULL;
    CHECK(tw_jit_emit(jit, emit_own_address, NULL, 64, &own));
    tw_site_t *own_site = NULL;
    CHECK(tw_site_new(jit, TW_SITE_INDIRECT, own, &own_site));
    uintptr_t (*where)(void) = (uintptr_t (*)(void))tw_site_entry(own_site);
    EXPECT(where() == (uintptr_t)tw_code_addr(own));
    tw_code_t *failed = NULL;
    EXPECT_ERROR(tw_jit_emit(jit, emit_nothing, NULL, 64, &failed), TW_ERROR_EMIT_FAILED);
    EXPECT(failed == NULL);

    /* 4. A probe on a probed site over add_one. */
    tw_probes_t *probes = NULL;
    CHECK(tw_probes_new(jit, &probes));
    tw_code_t *impl = NULL;
    CHECK(tw_jit_forward(jit, (tw_fn_t)add_one, &impl));
    tw_site_t *probed = NULL;
    CHECK(tw_probes_site(probes, TW_SITE_INDIRECT, impl, &probed));
    unary_fn g = (unary_fn)tw_site_entry(probed);

    struct probe_counter *counter = calloc(1, sizeof *counter);
    EXPECT(counter != NULL);
    tw_probe_t *probe = NULL;
    CHECK(tw_probe_attach(probes, probed, count_call, counter, finalize_counter, &probe));
    EXPECT(tw_probe_is_attached(probe));
    for (int i = 0; i < PROBED_CALLS; i++) {
        EXPECT(g(7) == 8);
    }
    EXPECT(atomic_load(&counter->calls) == PROBED_CALLS);
    EXPECT(atomic_load(&counter->bad_args) == 0);
    /* Probes work on plain sites only through tw_probes_site. */
    tw_probe_t *wrong = NULL;
    EXPECT_ERROR(tw_probe_attach(probes, site, count_call, counter, NULL, &wrong),
                 TW_ERROR_INVALID_ARGUMENT);

    CHECK(tw_probe_detach(probes, probe));
    EXPECT(!tw_probe_is_attached(probe));
    EXPECT(g(7) == 8);
    EXPECT(atomic_load(&counter->calls) == PROBED_CALLS); /* detached: not counted */
    /* This thread is online and has not reported a quiescent state since the detach: no grace
     * period can have ended, so the finalizer cannot have run. */
    EXPECT(atomic_load(&counter->finalized) == 0);
    EXPECT(tw_quiescent());
    CHECK(tw_jit_barrier(jit)); /* a grace period, and the frees it allowed, have run */
    EXPECT(atomic_load(&counter->finalized) == 1);
    EXPECT_ERROR(tw_probe_detach(probes, probe), TW_ERROR_NOT_ATTACHED);
    free(counter);

    /* 5. Error paths: NULL handles and a config from an impossible older header. */
    EXPECT_ERROR(tw_site_swap(NULL, impl), TW_ERROR_INVALID_ARGUMENT);
    tw_jit_config_t tiny;
    tw_jit_config_init(&tiny);
    tiny.size = sizeof(size_t);
    tw_jit_t *none = NULL;
    EXPECT_ERROR(tw_jit_new(domain, &tiny, &none), TW_ERROR_INVALID_ARGUMENT);
    EXPECT(none == NULL);

    /* Shut down: any order is allowed; the domain and the jit go first here. */
    CHECK(tw_unregister_thread());
    tw_grace_domain_delete(domain);
    tw_jit_delete(jit);
    tw_probe_delete(probe);
    tw_site_delete(probed);
    tw_probes_delete(probes);
    tw_code_delete(impl);
    tw_site_delete(own_site);
    tw_code_delete(own);
    tw_site_delete(site);
    tw_code_delete(first);

    printf("calls %llu (add_one %llu, add_two %llu) during %d swaps\n",
           (unsigned long long)calls, (unsigned long long)ones, (unsigned long long)twos,
           swaps);
    printf("OK\n");
    return 0;
}
