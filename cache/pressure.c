/* pressure: memory cgroup limit and pressure notifications; see pressure.h. */
#include "pressure.h"
#include "cache_i.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

/* A stall of 100 ms within 1 s: worth giving memory back. */
#define PSI_TRIGGER "some 100000 1000000"
#define SRC_MAX 3

/* The daemon's cgroup path in the hierarchy whose controller list
 * matches `want` ("" for the unified one, "memory" for v1). */
static int cgroup_path(const char *want, char *out, size_t len)
{
	char line[PATH_MAX + 64];
	FILE *f = fopen("/proc/self/cgroup", "r");
	int ret = -ENOENT;

	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f)) {
		char *ctl = strchr(line, ':'), *path;

		if (!ctl || !(path = strchr(++ctl, ':')))
			continue;
		*path++ = '\0';
		path[strcspn(path, "\n")] = '\0';
		if (!strcmp(ctl, want) ||
		    (*want && strstr(ctl, want) && strlen(ctl) != 0)) {
			snprintf(out, len, "%s", path);
			ret = 0;
			break;
		}
	}
	fclose(f);
	return ret;
}

/* The directory of the daemon's memory cgroup and whether it is v2. A
 * cgroup namespace may show the path from a root we do not see: then the
 * root of the mounted hierarchy is ours. */
static int memcg_dir(char *dir, size_t len, bool *v2)
{
	char path[PATH_MAX - 64], probe[PATH_MAX + 64];

	if (!access("/sys/fs/cgroup/cgroup.controllers", F_OK) &&
	    !cgroup_path("", path, sizeof(path))) {
		*v2 = true;
		snprintf(dir, len, "/sys/fs/cgroup%s", path);
		snprintf(probe, sizeof(probe), "%s/memory.max", dir);
		if (!access(probe, F_OK))
			return 0;
		snprintf(dir, len, "/sys/fs/cgroup");
		return 0;
	}
	if (cgroup_path("memory", path, sizeof(path)))
		return -ENOENT;
	*v2 = false;
	snprintf(dir, len, "/sys/fs/cgroup/memory%s", path);
	snprintf(probe, sizeof(probe), "%s/memory.limit_in_bytes", dir);
	if (access(probe, F_OK))
		snprintf(dir, len, "/sys/fs/cgroup/memory");
	return 0;
}

uint64_t memcg_limit_bytes(void)
{
	char dir[PATH_MAX], file[PATH_MAX + 32];
	unsigned long long lim = 0;
	long pages = sysconf(_SC_PHYS_PAGES);
	uint64_t phys = pages > 0 ? (uint64_t)pages * 4096 : UINT64_MAX;
	bool v2;
	FILE *f;

	if (memcg_dir(dir, sizeof(dir), &v2))
		return 0;
	snprintf(file, sizeof(file), "%s/%s", dir,
		 v2 ? "memory.max" : "memory.limit_in_bytes");
	f = fopen(file, "r");
	if (!f)
		return 0;
	if (fscanf(f, "%llu", &lim) != 1) /* "max" */
		lim = 0;
	fclose(f);
	return lim && lim < phys ? lim : 0;
}

struct pressure {
	struct cache *c;
	pthread_t thread;
	int stop_fd;
	int fds[SRC_MAX];
	short events[SRC_MAX];
	unsigned n;
};

static int psi_open(const char *path)
{
	int fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC);

	if (fd < 0)
		return -errno;
	if (write(fd, PSI_TRIGGER, strlen(PSI_TRIGGER) + 1) < 0) {
		int e = -errno;

		close(fd);
		return e;
	}
	return fd;
}

/* cgroup v1: an eventfd signalled at the "medium" pressure level. */
static int v1_level_open(const char *dir)
{
	char file[PATH_MAX + 32], cmd[64];
	int efd, lfd, cfd, ret = 0;

	snprintf(file, sizeof(file), "%s/memory.pressure_level", dir);
	lfd = open(file, O_RDONLY | O_CLOEXEC);
	if (lfd < 0)
		return -errno;
	snprintf(file, sizeof(file), "%s/cgroup.event_control", dir);
	cfd = open(file, O_WRONLY | O_CLOEXEC);
	efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (cfd < 0 || efd < 0) {
		ret = -errno;
	} else {
		snprintf(cmd, sizeof(cmd), "%d %d medium", efd, lfd);
		if (write(cfd, cmd, strlen(cmd) + 1) < 0)
			ret = -errno;
	}
	if (cfd >= 0)
		close(cfd);
	close(lfd);
	if (ret) {
		if (efd >= 0)
			close(efd);
		return ret;
	}
	return efd;
}

static void add_source(struct pressure *p, int fd, short events)
{
	if (fd < 0 || p->n == SRC_MAX)
		return;
	p->fds[p->n] = fd;
	p->events[p->n++] = events;
}

/* Without pressure for a second, the budget grows back a step. */
static void relax(struct cache *c)
{
	uint32_t full = (uint32_t)(c->cfg.size_bytes >> CACHE_PAGE_SHIFT) + 1;

	pthread_mutex_lock(&c->map_lock);
	if (c->ft.limit < full)
		__atomic_store_n(&c->ft.limit, full - c->ft.limit > full / 16 ?
					       c->ft.limit + full / 16 : full,
				 __ATOMIC_RELAXED);
	pthread_mutex_unlock(&c->map_lock);
}

static void *pressure_main(void *arg)
{
	struct pressure *p = arg;
	struct pollfd pfd[SRC_MAX + 1];

	pthread_setname_np(pthread_self(), "sp-pressure");
	for (;;) {
		bool hit = false;
		int n;

		for (unsigned i = 0; i < p->n; i++)
			pfd[i] = (struct pollfd){ p->fds[i], p->events[i], 0 };
		pfd[p->n] = (struct pollfd){ p->stop_fd, POLLIN, 0 };
		n = poll(pfd, p->n + 1, 1000);
		if (n < 0 && errno != EINTR)
			break;
		if (pfd[p->n].revents)
			break;
		for (unsigned i = 0; i < p->n; i++) {
			uint64_t v;

			if (!pfd[i].revents)
				continue;
			if (pfd[i].revents & POLLERR) {
				/* a cgroup that went away: stop asking it */
				p->events[i] = 0;
				continue;
			}
			if (p->events[i] == POLLIN &&
			    read(p->fds[i], &v, sizeof(v)) < 0)
				continue;
			hit = true;
		}
		if (hit)
			cache_pressure_shrink(p->c);
		else
			relax(p->c);
	}
	return NULL;
}

int pressure_start(struct cache *c)
{
	char dir[PATH_MAX], file[PATH_MAX + 32];
	struct pressure *p = calloc(1, sizeof(*p));
	bool v2 = false;
	int ret;

	if (!p)
		return -ENOMEM;
	p->c = c;
	if (!memcg_dir(dir, sizeof(dir), &v2)) {
		if (v2) {
			snprintf(file, sizeof(file), "%s/memory.pressure", dir);
			add_source(p, psi_open(file), POLLPRI);
		} else {
			add_source(p, v1_level_open(dir), POLLIN);
		}
	}
	add_source(p, psi_open("/proc/pressure/memory"), POLLPRI);
	p->stop_fd = eventfd(0, EFD_CLOEXEC);
	if (!p->n || p->stop_fd < 0) {
		ret = p->n ? -errno : -ENOENT;
		goto out_free;
	}
	ret = -pthread_create(&p->thread, NULL, pressure_main, p);
	if (ret)
		goto out_free;
	c->pressure = p;
	return 0;

out_free:
	for (unsigned i = 0; i < p->n; i++)
		close(p->fds[i]);
	if (p->stop_fd >= 0)
		close(p->stop_fd);
	free(p);
	return ret;
}

void pressure_stop(struct cache *c)
{
	struct pressure *p = c->pressure;
	uint64_t one = 1;

	if (!p)
		return;
	if (write(p->stop_fd, &one, sizeof(one)) < 0)
		abort(); /* an eventfd write cannot fail here */
	pthread_join(p->thread, NULL);
	for (unsigned i = 0; i < p->n; i++)
		close(p->fds[i]);
	close(p->stop_fd);
	free(p);
	c->pressure = NULL;
}

uint64_t cache_pressure_shrink(struct cache *c)
{
	uint64_t freed = 0;
	uint32_t used, target;

	pthread_mutex_lock(&c->map_lock);
	used = c->ft.used;
	target = used - (used - 1) / 4;
	if (target < 17)
		target = 17;
	if (target < c->ft.limit)
		__atomic_store_n(&c->ft.limit, target, __ATOMIC_RELAXED);
	while (c->ft.used > c->ft.limit) {
		unsigned n = cache_evict_locked(c, c->ft.used - c->ft.limit);

		if (!n)
			break;
		frame_discard_free_locked(&c->ft, n);
		freed += (uint64_t)n << CACHE_PAGE_SHIFT;
	}
	pthread_mutex_unlock(&c->map_lock);
	/* Dirty frames cannot go before they are written. */
	cache_wb_kick(c);
	atomic_fetch_add(&c->st.pressure_shrinks, 1);
	atomic_fetch_add(&c->st.pressure_bytes, freed);
	return freed;
}
