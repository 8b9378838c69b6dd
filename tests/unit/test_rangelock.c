/*
 * Unit tests of the range lock that a file's writers hold (rangelock.h):
 * disjoint ranges are held side by side, ranges that share a page wait,
 * and the whole-file lock waits for every range and holds new ones back.
 * A thread that should be blocked is checked for some time after it was
 * started; one that should go ahead is waited for up to 10 s.
 */
#include "check.h"
#include "rangelock.h"

#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

struct locker {
	struct range_lock *rl;
	uint64_t first, last;   /* all: first > last */
	_Atomic int state;      /* 0 started, 1 holds, 2 released */
	_Atomic bool release;
	pthread_t th;
};

static void *locker_main(void *p)
{
	struct locker *l = p;
	struct range_held h;
	bool all = l->first > l->last;

	if (all)
		range_lock_all(l->rl);
	else
		range_lock(l->rl, &h, l->first, l->last);
	atomic_store(&l->state, 1);
	while (!atomic_load(&l->release))
		usleep(1000);
	if (all)
		range_unlock_all(l->rl);
	else
		range_unlock(l->rl, &h);
	atomic_store(&l->state, 2);
	return NULL;
}

static void start(struct locker *l, struct range_lock *rl, uint64_t first,
		  uint64_t last)
{
	*l = (struct locker){ .rl = rl, .first = first, .last = last };
	REQUIRE(pthread_create(&l->th, NULL, locker_main, l) == 0);
}

/* Wait up to 10 s for l to reach state; true if it did. */
static bool reaches(struct locker *l, int state)
{
	for (int i = 0; i < 10000; i++) {
		if (atomic_load(&l->state) >= state)
			return true;
		usleep(1000);
	}
	return false;
}

/* l has not got its lock after 100 ms. */
static bool blocked(struct locker *l)
{
	usleep(100 * 1000);
	return atomic_load(&l->state) == 0;
}

static void finish(struct locker *l)
{
	atomic_store(&l->release, true);
	pthread_join(l->th, NULL);
}

static void test_disjoint_ranges_held_together(void)
{
	struct range_lock rl;
	struct locker a, b, c;

	range_lock_init(&rl);
	start(&a, &rl, 0, 9);
	REQUIRE(reaches(&a, 1));
	start(&b, &rl, 10, 19);
	CHECK(reaches(&b, 1));
	start(&c, &rl, 100, 100);
	CHECK(reaches(&c, 1));
	finish(&a);
	finish(&b);
	finish(&c);
	range_lock_destroy(&rl);
}

static void test_shared_page_waits(void)
{
	struct range_lock rl;
	struct locker a, b, c;

	range_lock_init(&rl);
	start(&a, &rl, 5, 9);
	REQUIRE(reaches(&a, 1));
	start(&b, &rl, 9, 12); /* shares page 9 */
	start(&c, &rl, 0, 5);  /* shares page 5 */
	CHECK(blocked(&b));
	CHECK(blocked(&c));
	finish(&a);
	CHECK(reaches(&b, 1));
	CHECK(reaches(&c, 1)); /* b and c share no page */
	finish(&b);
	finish(&c);
	range_lock_destroy(&rl);
}

static void test_all_waits_and_holds_back_new_ranges(void)
{
	struct range_lock rl;
	struct locker a, all, b, all2;

	range_lock_init(&rl);
	start(&a, &rl, 3, 3);
	REQUIRE(reaches(&a, 1));
	start(&all, &rl, 1, 0);
	CHECK(blocked(&all));
	start(&b, &rl, 50, 60); /* disjoint from a, but all is waiting */
	CHECK(blocked(&b));
	finish(&a);
	CHECK(reaches(&all, 1));
	CHECK(blocked(&b));
	start(&all2, &rl, 1, 0);
	CHECK(blocked(&all2));
	finish(&all);
	/* all2 was waiting: it goes before b */
	CHECK(reaches(&all2, 1));
	CHECK(blocked(&b));
	finish(&all2);
	CHECK(reaches(&b, 1));
	finish(&b);
	range_lock_destroy(&rl);
}

int main(void)
{
	RUN(test_disjoint_ranges_held_together);
	RUN(test_shared_page_waits);
	RUN(test_all_waits_and_holds_back_new_ranges);
	return CHECK_DONE();
}
