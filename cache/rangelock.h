/*
 * rangelock: a file's writers lock the pages they write, not the file.
 *
 * Writes to disjoint page ranges of one file go ahead side by side; writes
 * whose ranges share a page take turns, so two writes never interleave
 * (each is applied whole, before or after the other, as write() is on a
 * local file system). Ranges are whole pages: two writes to different
 * bytes of one page take turns too, so the page's fill from disk and its
 * copy on write are done by one writer at a time.
 *
 * range_lock_all() excludes every range: truncate, fallocate, clone, and
 * appends (their offset is the size, known only once no write is under
 * way) take it. While it waits, new ranges wait behind it, so a steady
 * stream of writers cannot starve it.
 *
 * Locking: one mutex and condition per lock, held only while the set of
 * ranges is looked at. A held range is a struct range_held of the caller's
 * (on its stack) until range_unlock(). Waiters are woken in no set order.
 */
#ifndef SAMEPAGE_RANGELOCK_H
#define SAMEPAGE_RANGELOCK_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

struct range_held {
	uint64_t first, last;           /* pages, inclusive */
	struct range_held *next;
};

struct range_lock {
	pthread_mutex_t mu;
	pthread_cond_t cond;
	struct range_held *held;        /* ranges held now */
	unsigned waiters;               /* threads waiting on cond */
	unsigned all_waiting;           /* range_lock_all() callers waiting */
	bool all_held;
};

void range_lock_init(struct range_lock *rl);
void range_lock_destroy(struct range_lock *rl);

/* Hold pages [first, last] (first <= last), waiting for any held range
 * that shares a page, and for range_lock_all() callers. */
void range_lock(struct range_lock *rl, struct range_held *h, uint64_t first,
		uint64_t last);
void range_unlock(struct range_lock *rl, struct range_held *h);

/* Hold the whole file: no range is held meanwhile. */
void range_lock_all(struct range_lock *rl);
void range_unlock_all(struct range_lock *rl);

#endif
