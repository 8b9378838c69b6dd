/* pause: test-only stopping points; see pause.h. */
#include "pause.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>
#include <time.h>

static const char *const names[PAUSE_COUNT] = {
	[PAUSE_WB_BEFORE_IO] = "wb_before_io",
	[PAUSE_WB_BATCH_DONE] = "wb_batch_done",
	[PAUSE_WRITE_COW] = "write_cow",
};

static int find(const char *key)
{
	if (strncmp(key, "pause_", 6))
		return -ENOENT;
	for (int i = 0; i < PAUSE_COUNT; i++)
		if (!strcmp(key + 6, names[i]))
			return i;
	return -ENOENT;
}

#if SAMEPAGE_FAILPOINTS
_Atomic unsigned pause_armed;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static bool stopped[PAUSE_COUNT];

void pause_point_slow(enum pause_id id)
{
	unsigned bit = 1u << id;

	pthread_mutex_lock(&lock);
	if ((atomic_load(&pause_armed) & bit) && !stopped[id]) {
		stopped[id] = true;
		pthread_cond_broadcast(&cond);
		while (atomic_load(&pause_armed) & bit)
			pthread_cond_wait(&cond, &lock);
		stopped[id] = false;
	}
	pthread_mutex_unlock(&lock);
}

static int wait_stopped(int id)
{
	struct timespec ts;
	int ret = 0;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += 10;
	while (!ret && !stopped[id]) {
		if (!(atomic_load(&pause_armed) & (1u << id)))
			return -EINVAL;
		ret = pthread_cond_timedwait(&cond, &lock, &ts);
	}
	return stopped[id] ? 0 : -ETIMEDOUT;
}

int pause_set(const char *key, const char *value)
{
	int id = find(key), ret = 0;

	if (id < 0)
		return id;
	pthread_mutex_lock(&lock);
	if (!strcmp(value, "1"))
		atomic_fetch_or(&pause_armed, 1u << id);
	else if (!strcmp(value, "0"))
		atomic_fetch_and(&pause_armed, ~(1u << id));
	else if (!strcmp(value, "wait"))
		ret = wait_stopped(id);
	else
		ret = -EINVAL;
	pthread_cond_broadcast(&cond);
	pthread_mutex_unlock(&lock);
	return ret;
}
#else
int pause_set(const char *key, const char *value)
{
	(void)value;
	return find(key) < 0 ? -ENOENT : -ENOTSUP;
}
#endif
