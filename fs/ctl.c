/* ctl: the samepage.* virtual extended attributes; see ctl.h. */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cache.h"
#include "config.h"
#include "ctl.h"
#include "ctl_parse.h"
#include "dedup.h"
#include "fs.h"
#include "opts.h"

/* A growing text buffer with a sticky error: format everything, check
 * once at the end. */
#define CTL_FILE_REPORT_MAX 60000u

struct ctl_buf {
	char  *p;
	size_t len;
	size_t cap;
	int    err;
};

static void ctl_reserve(struct ctl_buf *b, size_t need)
{
	size_t cap = b->cap ? b->cap : 256;
	char *np;

	if (b->err || b->len + need + 1 <= b->cap)
		return;
	while (cap < b->len + need + 1)
		cap *= 2;
	np = realloc(b->p, cap);
	if (!np) {
		b->err = -ENOMEM;
		return;
	}
	b->p = np;
	b->cap = cap;
}

static void ctl_printf(struct ctl_buf *b, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void ctl_printf(struct ctl_buf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0) {
		b->err = -EINVAL;
		return;
	}
	ctl_reserve(b, (size_t)n);
	if (b->err)
		return;
	va_start(ap, fmt);
	vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
}

static void ctl_put(struct ctl_buf *b, const char *s, size_t n)
{
	ctl_reserve(b, n);
	if (b->err)
		return;
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void ctl_stats(struct spfs *fs, struct ctl_buf *b)
{
	struct cache_stats cs;
	struct dedup_stats ds;

	memset(&cs, 0, sizeof(cs));
	memset(&ds, 0, sizeof(ds));
	cache_get_stats(fs->cache, &cs);
	if (fs->dedup)
		dedup_get_stats(fs->dedup, &ds);

#define U(name, v) ctl_printf(b, "%s %" PRIu64 "\n", name, (uint64_t)(v))
	/* The counters the man page promises first (samepagectl(1)), KSM's
	 * names where the meaning is KSM's. */
	U("pages_shared", ds.pages_shared);
	U("pages_sharing", ds.pages_sharing);
	U("pages_unshared", ds.pages_unshared);
	U("pages_volatile", ds.pages_volatile);
	U("full_scans", ds.full_scans);
	U("cache_bytes", cs.cache_bytes);
	U("cache_limit_bytes", cs.cache_limit_bytes);
	U("metadata_bytes", cs.metadata_bytes);
	U("reflink_merges", ds.reflink_merges);
	U("content_merges", ds.content_merges);
	U("zero_pages", ds.zero_pages);
	U("cow_breaks", cs.cow_breaks);
	U("hashes_computed", ds.hashes_computed);
	U("backing_read_bytes", cs.backing_read_bytes);
	U("backing_write_bytes", cs.backing_write_bytes);
	U("evictions", cs.evictions);
	U("hits", cs.hits);
	U("misses", cs.misses);
	U("frames_dirty", cs.frames_dirty);
	U("files_cached", cs.files_cached);
	U("backing_reads", cs.backing_reads);
	U("backing_writes", cs.backing_writes);
	U("writeback_errors", cs.writeback_errors);
	U("invalidations", cs.invalidations);
	U("stable_chains", ds.stable_chains);
	U("pressure_shrinks", cs.pressure_shrinks);
	U("pressure_bytes", cs.pressure_bytes);
	U("files_kept", cs.files_kept);
	U("file_reattaches", cs.file_reattaches);
	U("uring_fallbacks", cs.uring_fallbacks);
	U("readahead_pages", cs.readahead_pages);
	U("free_frame_bytes", cs.free_frame_bytes);
	/* Caching modes (-o cache_mode): open files by mode, the switches,
	 * and what kernel-mode files read from disk without a frame. */
	U("files_kernel_mode", atomic_load(&fs->itab.open_kernel));
	U("files_shared_mode", atomic_load(&fs->itab.open_shared));
	U("mode_switches", atomic_load(&fs->itab.mode_switches));
	U("direct_read_pages", cs.direct_read_pages);
	/* Persistence: the warm restart's work, and the store itself. */
	U("digests_computed", ds.digests_computed);
	U("store_hits", ds.store_hits);
	U("store_merges", ds.store_merges);
	U("store_files", ds.store_files);
	U("store_pages", ds.store_pages);
	U("store_distinct", ds.store_distinct);
	U("store_bytes", ds.store_bytes);
	U("store_paused", ds.store_paused);
	U("store_queue_full", ds.store_queue_full);
#undef U
	ctl_printf(b, "general_profit %" PRId64 "\n", ds.general_profit);
}

static void ctl_knobs(struct spfs *fs, struct ctl_buf *b)
{
	struct cache_stats cs;
	size_t room = 512;
	int n;

	if (fs->dedup) {
		for (;;) {
			ctl_reserve(b, room);
			if (b->err)
				return;
			n = dedup_format_knobs(fs->dedup, b->p + b->len,
					       b->cap - b->len);
			if (n >= 0) {
				b->len += (size_t)n;
				break;
			}
			if (n != -ERANGE || room >= (1u << 20)) {
				b->err = n;
				return;
			}
			room *= 4;
		}
	}
	memset(&cs, 0, sizeof(cs));
	cache_get_stats(fs->cache, &cs);
	ctl_printf(b, "cache_size %" PRIu64 "\n", cs.cache_limit_bytes);
}

static void ctl_histogram(struct spfs *fs, struct ctl_buf *b)
{
	struct cache_histogram h;

	memset(&h, 0, sizeof(h));
	cache_get_histogram(fs->cache, &h);
	for (unsigned i = 0; i < CACHE_HIST_BUCKETS; i++) {
		uint64_t lo = i ? (1ull << (i - 1)) + 1 : 1;
		uint64_t hi = i ? 1ull << i : 1;

		if (!h.frames[i] && !h.mappings[i])
			continue;
		ctl_printf(b, "%" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 "\n",
			   lo, hi, h.frames[i], h.mappings[i]);
	}
}

struct ctl_sharer {
	struct inode *in;     /* pinned, or NULL: its file has no inode */
	const void   *key;    /* in, or the cfile (only compared) */
	uint64_t      pages;
	unsigned      pins;
	char         *path;
};

struct ctl_report {
	struct inode      *self;
	struct ctl_sharer *v;
	size_t             n;
	size_t             cap;
	int                err;
};

/* Under the cache's map_lock and itab->lock: record, pin, nothing else. */
static void ctl_sharer_cb(void *arg, struct cfile *other, uint64_t pages)
{
	struct ctl_report *r = arg;
	struct inode *o = cfile_owner(other);
	const void *key = o ? (const void *)o : (const void *)other;

	if (o == r->self || r->err)
		return;
	/* Called once per shared page: fold runs of the same sharer. */
	for (size_t i = r->n, k = 0; i > 0 && k < 8; i--, k++) {
		if (r->v[i - 1].key == key) {
			r->v[i - 1].pages += pages;
			return;
		}
	}
	if (r->n == r->cap) {
		size_t cap = r->cap ? r->cap * 2 : 16;
		struct ctl_sharer *nv = realloc(r->v, cap * sizeof(*nv));

		if (!nv) {
			r->err = -ENOMEM;
			return;
		}
		r->v = nv;
		r->cap = cap;
	}
	if (o)
		itab_pin_locked(o);
	r->v[r->n++] = (struct ctl_sharer){
		.in = o, .key = key, .pages = pages, .pins = o ? 1 : 0,
	};
}

static int ctl_by_key(const void *a, const void *b)
{
	uintptr_t x = (uintptr_t)((const struct ctl_sharer *)a)->key;
	uintptr_t y = (uintptr_t)((const struct ctl_sharer *)b)->key;

	return x < y ? -1 : x > y;
}

static int ctl_by_pages(const void *a, const void *b)
{
	const struct ctl_sharer *x = a, *y = b;

	if (x->pages != y->pages)
		return x->pages > y->pages ? -1 : 1;
	if (!x->path || !y->path)
		return !x->path - !y->path;
	return strcmp(x->path, y->path);
}

/* Hard links of one file, or its two cfiles, make one line. */
static void ctl_merge(struct ctl_report *r)
{
	size_t out = 0;

	if (!r->n)
		return;
	qsort(r->v, r->n, sizeof(*r->v), ctl_by_key);
	for (size_t i = 0; i < r->n; i++) {
		if (out && r->v[out - 1].key == r->v[i].key) {
			r->v[out - 1].pages += r->v[i].pages;
			r->v[out - 1].pins += r->v[i].pins;
			continue;
		}
		r->v[out++] = r->v[i];
	}
	r->n = out;
}

/* The name of an inode relative to the mount root, from the kernel's own
 * record of the descriptor's path. */
static char *ctl_inode_path(struct spfs *fs, struct inode *in)
{
	char proc[32], target[PATH_MAX + 16];
	const char *rel = target;
	static const char deleted[] = " (deleted)";
	size_t tl, dl = sizeof(deleted) - 1;
	ssize_t n;

	if (!in)
		return strdup("(deleted)");
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", in->fd);
	n = readlink(proc, target, sizeof(target) - 1);
	if (n < 0)
		return strdup("(deleted)");
	target[n] = '\0';
	tl = (size_t)n;
	if (tl >= dl && !strcmp(target + tl - dl, deleted))
		return strdup("(deleted)");
	if (!strcmp(fs->backing, "/"))
		rel = target + 1;
	else if (!strncmp(target, fs->backing, fs->backing_len) &&
		 target[fs->backing_len] == '/')
		rel = target + fs->backing_len + 1;
	return strdup(rel);
}

static void ctl_put_path(struct ctl_buf *b, const char *s)
{
	for (; *s; s++) {
		if (*s == '\n')
			ctl_put(b, "\\012", 4);
		else if (*s == '\\')
			ctl_put(b, "\\134", 4);
		else
			ctl_put(b, s, 1);
	}
}

static void ctl_file(struct spfs *fs, struct inode *in, struct ctl_buf *b,
		     bool names)
{
	struct cfile_share_summary sum;
	struct ctl_report r = { .self = in };
	struct cfile *cf = inode_cfile_ref(in);
	uint64_t sharing_found = 0;
	const char *mode;
	int ret = 0;

	memset(&sum, 0, sizeof(sum));
	pthread_mutex_lock(&in->lock);
	mode = !in->mode_ever ? "none" : in->kernel_mode ? "kernel" : "shared";
	pthread_mutex_unlock(&in->lock);
	if (cf) {
		sharing_found = cfile_sharing_found(cf);
		itab_lock(&fs->itab);
		ret = cfile_share_report(cf, ctl_sharer_cb, &r, &sum);
		itab_unlock(&fs->itab);
		cfile_put(cf);
		if (!ret)
			ret = r.err;
	}
	ctl_merge(&r);
	for (size_t i = 0; i < r.n; i++)
		r.v[i].path = ctl_inode_path(fs, r.v[i].in);
	for (size_t i = 0; i < r.n; i++)
		for (unsigned k = 0; k < r.v[i].pins; k++)
			itab_unpin(&fs->itab, r.v[i].in);
	if (ret) {
		b->err = ret;
		goto out_free;
	}

	ctl_printf(b, "resident_pages %" PRIu64 "\n", sum.resident_pages);
	ctl_printf(b, "shared_pages %" PRIu64 "\n", sum.shared_pages);
	ctl_printf(b, "zero_pages %" PRIu64 "\n", sum.zero_pages);
	ctl_printf(b, "reflink_pages %" PRIu64 "\n", sum.reflink_pages);
	ctl_printf(b, "dirty_pages %" PRIu64 "\n", sum.dirty_pages);
	/* Who caches the file (the mode of its last open), and what its
	 * kernel-mode reads found held by other files too. */
	ctl_printf(b, "cache_mode %s\n", mode);
	ctl_printf(b, "sharing_found %" PRIu64 "\n", sharing_found);
	if (r.n)
		qsort(r.v, r.n, sizeof(*r.v), ctl_by_pages);
	/* Names of sharing files would tell any user which files hold the
	 * content they guess: only root and the owner of the mount see them. */
	if (!names && r.n)
		ctl_printf(b, "sharers_hidden %zu\n", r.n);
	for (size_t i = 0; names && i < r.n; i++) {
		/* An xattr value is at most 64 KiB: name the biggest sharers
		 * and count the rest. */
		if (b->len > CTL_FILE_REPORT_MAX) {
			ctl_printf(b, "sharers_omitted %zu\n", r.n - i);
			break;
		}
		ctl_printf(b, "sharer %" PRIu64 " ", r.v[i].pages);
		ctl_put_path(b, r.v[i].path ? r.v[i].path : "(deleted)");
		ctl_put(b, "\n", 1);
	}

out_free:
	for (size_t i = 0; i < r.n; i++)
		free(r.v[i].path);
	free(r.v);
}

int ctl_get(struct spfs *fs, struct inode *in, const char *name,
	    char **out, size_t *len, size_t *slack, uid_t caller)
{
	const char *key = name + sizeof(CTL_PREFIX) - 1;
	struct ctl_buf b = { 0 };
	bool root = in == fs->itab.root;

	*slack = 0;
	if (root && !strcmp(key, "version")) {
		ctl_printf(&b, "samepage %s\n", SAMEPAGE_VERSION);
	} else if (root && !strcmp(key, "stats")) {
		ctl_stats(fs, &b);
		*slack = 256;
	} else if (root && !strcmp(key, "knobs")) {
		ctl_knobs(fs, &b);
		*slack = 64;
	} else if (root && !strcmp(key, "state_dir")) {
		/* A path into the backing directory: for those who may tune
		 * the mount, as the names of sharers are. */
		if (caller != 0 && caller != fs->owner_uid)
			return -EPERM;
		ctl_printf(&b, "%s\n", fs->opts->state_dir);
	} else if (root && !strcmp(key, "histogram")) {
		ctl_histogram(fs, &b);
		*slack = 256;
	} else if (S_ISREG(in->type) && !strcmp(key, "file")) {
		ctl_file(fs, in, &b, caller == 0 || caller == fs->owner_uid);
		*slack = 1024;
	} else {
		return -ENODATA;
	}
	if (!b.err && !b.p)
		ctl_reserve(&b, 0);
	if (b.err) {
		free(b.p);
		return b.err;
	}
	*out = b.p;
	*len = b.len;
	return 0;
}

int ctl_set(struct spfs *fs, struct inode *in, const char *name,
	    const char *value, size_t size, uid_t caller)
{
	const char *key = name + sizeof(CTL_PREFIX) - 1;
	bool knob = !strcmp(key, "set"), scan = !strcmp(key, "scan");
	char *v;
	int ret;

	if (in != fs->itab.root || (!knob && !scan))
		return -EOPNOTSUPP;
	if (caller != 0 && caller != fs->owner_uid)
		return -EPERM;
	v = ctl_value(value, size);
	if (!v)
		return -ENOMEM;
	if (knob) {
		const char *k, *val;

		ret = ctl_apply_set(fs->cache, fs->dedup, v, &k, &val);
	} else {
		ret = ctl_apply_scan(fs->dedup, v);
	}
	free(v);
	return ret;
}
