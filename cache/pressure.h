/*
 * pressure: the memory the daemon may use, and what to do when it runs
 * short.
 *
 * Owns the daemon's view of its memory cgroup (v2: the unified hierarchy's
 * memory.max and memory.pressure; v1: the memory controller's
 * memory.limit_in_bytes and memory.pressure_level) and a thread that waits
 * for pressure notifications: a PSI trigger on the cgroup's (v2) or the
 * machine's (/proc/pressure/memory) memory stall time, and on cgroup v1
 * the "medium" pressure level event. On each, the cache shrinks toward a
 * lower watermark (three quarters of what it holds), gives the memory of
 * the frames it freed back to the kernel, and holds its budget there; the
 * budget grows back by a sixteenth of the configured size each second
 * without pressure. Counted in pressure_shrinks and pressure_bytes.
 *
 * Locking: the thread takes map_lock for the shrink; the sources are its
 * own. Errors: a machine with none of the sources runs without the
 * thread (logged once by the caller: pressure_start returns -ENOENT).
 */
#ifndef SAMEPAGE_PRESSURE_H
#define SAMEPAGE_PRESSURE_H

#include <stdint.h>

struct cache;

/* The memory limit of the daemon's cgroup (v1 or v2), or 0 if none. */
uint64_t memcg_limit_bytes(void);

/* Start and stop the pressure thread of c. */
int pressure_start(struct cache *c);
void pressure_stop(struct cache *c);

/* One shrink, as a pressure event makes it (also for tests). Returns the
 * bytes freed. */
uint64_t cache_pressure_shrink(struct cache *c);

#endif
