/*
 * prune: once per mount, in the background, the store forgets files that
 * were deleted while it was not looking. prune_start() starts the pass;
 * join the thread before the dedup object goes. The walk starts from a
 * descriptor of the backing directory, never from its path: the mount
 * may cover that path (a backing directory mounted over itself), and a
 * walk of the mount would find no backing file and prune every record.
 */
#ifndef SAMEPAGE_FS_PRUNE_H
#define SAMEPAGE_FS_PRUNE_H

#include <pthread.h>

struct dedup;

/* backing_fd: any descriptor of the backing directory (O_PATH will do);
 * the walk takes its own. */
int prune_start(struct dedup *d, int backing_fd, pthread_t *out);
/* Stop the walk if it still runs, and join the thread. */
void prune_stop(pthread_t t);

#endif
