/*
 * The liburcu QSBR side of benches/urcu_compare.rs: a handful of plain C functions that
 * harness/src/urcu.rs wraps. Compiled by harness/build.rs only when <urcu/urcu-qsbr.h>
 * compiles and -lurcu-qsbr links.
 *
 * The bench runs each scenario once with tramway and once with liburcu, in the same loop
 * shape and over the same JIT'd body: a tramway reader calls it through a patch site, a
 * liburcu reader (here) through a function-pointer slot it loads with rcu_dereference().
 *
 * Header and names: liburcu 0.11 and later install <urcu/urcu-qsbr.h> with the namespaced
 * API (urcu_qsbr_*). The older <urcu-qsbr.h> still exists, but only as a compatibility
 * header that maps the classic names (rcu_quiescent_state, synchronize_rcu, call_rcu) onto
 * the namespaced ones; the namespaced names say which flavor each call is.
 *
 * _LGPL_SOURCE inlines liburcu's read side (quiescent state, online/offline) from its
 * static headers, as liburcu's own benchmarks and most users build it; without it each
 * quiescent state would be a call into the shared library.
 */
#define _LGPL_SOURCE
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <urcu/urcu-qsbr.h>

/* The body both sides call: extern "C" fn(u64) -> u64 in Rust. */
typedef uint64_t (*tw_body_fn)(uint64_t);

/* Reader registration. A registered thread is online; the Rust guard in urcu.rs keeps one
 * registration per thread and unregisters on drop (liburcu takes it offline first). */
void tw_urcu_register_thread(void) { urcu_qsbr_register_thread(); }
void tw_urcu_unregister_thread(void) { urcu_qsbr_unregister_thread(); }

/* Reader transitions: the same three that tramway's ThreadRegistration has. */
void tw_urcu_quiescent_state(void) { urcu_qsbr_quiescent_state(); }
void tw_urcu_thread_offline(void) { urcu_qsbr_thread_offline(); }
void tw_urcu_thread_online(void) { urcu_qsbr_thread_online(); }

/* A grace period, run in the caller (liburcu takes an online caller offline meanwhile). */
void tw_urcu_synchronize(void) { urcu_qsbr_synchronize_rcu(); }

/* Waits for every call_rcu() callback queued so far. liburcu refuses (and prints an error)
 * when the caller is online, so the Rust wrapper calls it offline. */
void tw_urcu_barrier(void) { urcu_qsbr_barrier(); }

/* k dependent calls of the body, each through a fresh rcu_dereference() of *slot, the
 * load a reader of an RCU-published function pointer does per call. Returns the chain's
 * last value. The caller must be online. */
static inline uint64_t read_burst(tw_body_fn *slot, uint64_t k, uint64_t acc)
{
	for (uint64_t i = 0; i < k; i++) {
		tw_body_fn f = rcu_dereference(*slot);
		acc = f(acc);
	}
	return acc;
}

uint64_t tw_urcu_read_burst(tw_body_fn *slot, uint64_t k, uint64_t acc)
{
	return read_burst(slot, k, acc);
}

/* The reader loop: k calls, publish the running call count (relaxed: the bench samples it
 * as a rate, nothing is ordered by it), one quiescent state; until *stop reads true. Its Rust
 * twin for tramway readers is `tramway_reader` in benches/urcu_compare.rs. */
uint64_t tw_urcu_reader_loop(tw_body_fn *slot, uint64_t k, const bool *stop, uint64_t *calls)
{
	uint64_t acc = 0, n = 0;

	while (!__atomic_load_n(stop, __ATOMIC_RELAXED)) {
		acc = read_burst(slot, k, acc);
		n += k;
		__atomic_store_n(calls, n, __ATOMIC_RELAXED);
		urcu_qsbr_quiescent_state();
	}
	return acc;
}

/* What the retire scenarios publish and retire: 64 bytes, about a small trampoline and
 * its handle. The rcu_head comes first, so a callback's head is the object's address.
 * `body` is what a reader of the retired objects calls (NULL when nobody reads them). */
struct tw_retired {
	struct rcu_head head;
	tw_body_fn body;
	uint64_t payload[5];
};

/* A fresh object to publish (aborts when out of memory, as the bench cannot go on). */
static struct tw_retired *new_retired(tw_body_fn body, uint64_t seq)
{
	struct tw_retired *fresh = malloc(sizeof(*fresh));

	if (!fresh)
		abort();
	fresh->body = body;
	fresh->payload[0] = seq;
	return fresh;
}

static void free_retired(struct rcu_head *head)
{
	free(caa_container_of(head, struct tw_retired, head));
}

/* One retire, as a liburcu updater does it: allocate the replacement, publish it with
 * rcu_xchg_pointer() (a full barrier on both sides of the exchange, so the new object's
 * contents are visible before it is), and free the old one after a grace period with
 * call_rcu(). call_rcu's contract for QSBR: the caller is a registered, online thread. */
void tw_urcu_retire(void **slot, tw_body_fn body, uint64_t seq)
{
	struct tw_retired *old = rcu_xchg_pointer(slot, (void *)new_retired(body, seq));

	if (old)
		urcu_qsbr_call_rcu(&old->head, free_retired);
}

/* Publishes the first object of an empty retire slot (no call_rcu: nothing is replaced, so
 * any thread may call it, before readers of the slot start). */
void tw_urcu_retire_slot_init(void **slot, tw_body_fn body)
{
	rcu_assign_pointer(*slot, (void *)new_retired(body, 0));
}

/* The reader loop of the retire scenario in which readers use what is retired: as
 * tw_urcu_reader_loop, but each call goes through the object *slot points to (a fresh
 * rcu_dereference() per call), the way a tramway reader calls the trampoline being
 * retired through its patch site. */
uint64_t tw_urcu_reader_loop_retired(struct tw_retired **slot, uint64_t k, const bool *stop,
				     uint64_t *calls)
{
	uint64_t acc = 0, n = 0;

	while (!__atomic_load_n(stop, __ATOMIC_RELAXED)) {
		for (uint64_t i = 0; i < k; i++) {
			struct tw_retired *o = rcu_dereference(*slot);
			acc = o->body(acc);
		}
		n += k;
		__atomic_store_n(calls, n, __ATOMIC_RELAXED);
		urcu_qsbr_quiescent_state();
	}
	return acc;
}

/* Empties a retire slot: unpublish, wait a grace period, free. Any thread may call it
 * (an unregistered one, or a registered one: synchronize takes it offline meanwhile). */
void tw_urcu_retire_slot_clear(void **slot)
{
	struct tw_retired *old = rcu_xchg_pointer(slot, NULL);

	urcu_qsbr_synchronize_rcu();
	free(old);
}
