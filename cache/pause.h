/*
 * pause: named points where a test holds a thread, so that a race can be
 * driven into one chosen interleaving without sleeping (builds with
 * -Dfailpoints=true only; elsewhere pause_point() is empty).
 *
 * Control, through cache_failpoint_set() with key "pause_NAME":
 *   "1"     arm: the next thread to reach NAME stops there.
 *   "wait"  block until a thread has stopped at NAME (-ETIMEDOUT after
 *           10 s, -EINVAL if NAME is not armed).
 *   "0"     release the stopped thread, if any, and disarm.
 * A point stops one thread per arming.
 *
 * Points:
 *   wb_before_io   writeback took a batch of dirty pages (WB set), before
 *                  its writes are issued.
 *   wb_batch_done  writeback finished a batch: the pages are clean and
 *                  evictable again.
 *   write_cow      a writer holds the file's index (write side) and is
 *                  about to make a cached page its own (copy on write if
 *                  the frame is shared).
 *
 * Locking: one mutex and condition for all points; an unarmed point costs
 * one atomic load.
 */
#ifndef SAMEPAGE_PAUSE_H
#define SAMEPAGE_PAUSE_H

#include "config.h"

enum pause_id {
	PAUSE_WB_BEFORE_IO,
	PAUSE_WB_BATCH_DONE,
	PAUSE_WRITE_COW,
	PAUSE_COUNT
};

#if SAMEPAGE_FAILPOINTS
void pause_point_slow(enum pause_id id);
extern _Atomic unsigned pause_armed; /* bit per armed point */

static inline void pause_point(enum pause_id id)
{
	if (__atomic_load_n(&pause_armed, __ATOMIC_ACQUIRE) & (1u << id))
		pause_point_slow(id);
}
#else
static inline void pause_point(enum pause_id id)
{
	(void)id;
}
#endif

/* key "pause_NAME"; 0, -ENOENT for an unknown name (the caller tries other
 * failpoints then), -EINVAL, -ETIMEDOUT, or -ENOTSUP without failpoints. */
int pause_set(const char *key, const char *value);

#endif
