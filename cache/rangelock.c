/*
 * rangelock: the ranges held form a short list (one entry per writer in
 * flight, so no more than the request threads); a linear walk is cheaper
 * than any tree at that size.
 */
#include "rangelock.h"

void range_lock_init(struct range_lock *rl)
{
	pthread_mutex_init(&rl->mu, NULL);
	pthread_cond_init(&rl->cond, NULL);
	rl->held = NULL;
	rl->waiters = 0;
	rl->all_waiting = 0;
	rl->all_held = false;
}

void range_lock_destroy(struct range_lock *rl)
{
	pthread_cond_destroy(&rl->cond);
	pthread_mutex_destroy(&rl->mu);
}

static bool overlaps_held(const struct range_lock *rl, uint64_t first,
			  uint64_t last)
{
	for (const struct range_held *h = rl->held; h; h = h->next)
		if (h->first <= last && first <= h->last)
			return true;
	return false;
}

static void wait_locked(struct range_lock *rl)
{
	rl->waiters++;
	pthread_cond_wait(&rl->cond, &rl->mu);
	rl->waiters--;
}

static void wake_locked(struct range_lock *rl)
{
	if (rl->waiters)
		pthread_cond_broadcast(&rl->cond);
}

void range_lock(struct range_lock *rl, struct range_held *h, uint64_t first,
		uint64_t last)
{
	h->first = first;
	h->last = last;
	pthread_mutex_lock(&rl->mu);
	while (rl->all_held || rl->all_waiting ||
	       overlaps_held(rl, first, last))
		wait_locked(rl);
	h->next = rl->held;
	rl->held = h;
	pthread_mutex_unlock(&rl->mu);
}

void range_unlock(struct range_lock *rl, struct range_held *h)
{
	struct range_held **p;

	pthread_mutex_lock(&rl->mu);
	for (p = &rl->held; *p != h; p = &(*p)->next)
		;
	*p = h->next;
	wake_locked(rl);
	pthread_mutex_unlock(&rl->mu);
}

void range_lock_all(struct range_lock *rl)
{
	pthread_mutex_lock(&rl->mu);
	rl->all_waiting++;
	while (rl->all_held || rl->held)
		wait_locked(rl);
	rl->all_waiting--;
	rl->all_held = true;
	pthread_mutex_unlock(&rl->mu);
}

void range_unlock_all(struct range_lock *rl)
{
	pthread_mutex_lock(&rl->mu);
	rl->all_held = false;
	wake_locked(rl);
	pthread_mutex_unlock(&rl->mu);
}
