/*
 * prune: once per mount, in the background, the store forgets files that
 * were deleted while it was not looking. prune_start() starts the pass;
 * join the thread before the dedup object goes.
 */
#ifndef SAMEPAGE_FS_PRUNE_H
#define SAMEPAGE_FS_PRUNE_H

#include <pthread.h>

struct dedup;

int prune_start(struct dedup *d, const char *backing, pthread_t *out);
/* Stop the walk if it still runs, and join the thread. */
void prune_stop(pthread_t t);

#endif
