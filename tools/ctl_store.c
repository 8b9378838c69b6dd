/*
 * ctl_store: read-only statistics of an LMDB store. See ctl_store.h.
 */
#include "ctl_store.h"
#include "ctl_format.h"
#include "store_errno.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <lmdb.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Named databases we can open at once; a store has a handful. */
#define STORE_MAX_DBS 512
/* LMDB's own limit on key length (default build). */
#define STORE_MAX_NAME 511

/*
 * LMDB's meta page starts with a 16-byte page header, then the magic.
 * Checking it first means a directory that is not a store is left as it
 * was: mdb_env_open() would create lock.mdb in it even read-only.
 */
#define STORE_MAGIC_OFFSET 16
#define STORE_MAGIC        0xBEEFC0DEu

static int check_magic(const char *path)
{
	uint32_t magic = 0;
	ssize_t n;
	int fd, ret = 0;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	n = pread(fd, &magic, sizeof(magic), STORE_MAGIC_OFFSET);
	if (n < 0)
		ret = -errno;
	else if (n != sizeof(magic) || magic != STORE_MAGIC)
		ret = -EINVAL;
	close(fd);
	return ret;
}

/* Why an environment did not open, in words for the user. */
static const char *open_reason(int rc)
{
	switch (rc) {
	case MDB_INVALID:
		return "not an LMDB store (data.mdb has no LMDB header)";
	case MDB_VERSION_MISMATCH:
		return "store written by an incompatible LMDB version";
	default:
		return mdb_strerror(rc);
	}
}

static void print_name(FILE *f, const MDB_val *key)
{
	const unsigned char *p = key->mv_data;
	int width = 0;
	size_t i;

	for (i = 0; i < key->mv_size; i++) {
		if (isprint(p[i]) && p[i] != '\\') {
			fputc(p[i], f);
			width++;
		} else {
			fprintf(f, "\\x%02x", p[i]);
			width += 4;
		}
	}
	fprintf(f, "%*s", width < 24 ? 24 - width : 1, "");
}

static void print_db_row(FILE *f, const MDB_stat *st)
{
	uint64_t pages = (uint64_t)st->ms_branch_pages + st->ms_leaf_pages +
			 st->ms_overflow_pages;
	char size[32];

	ctl_fmt_bytes(size, sizeof(size), (double)pages * st->ms_psize);
	fprintf(f, "%12zu %5u %9zu %9zu %9zu %11s\n", st->ms_entries,
		st->ms_depth, st->ms_branch_pages, st->ms_leaf_pages,
		st->ms_overflow_pages, size);
}

/* Every key of the main database that names a sub-database gets a row;
 * other keys are plain records, counted. */
static int report_databases(FILE *f, const char *prog, const char *dir,
			    MDB_txn *txn, MDB_dbi main_dbi)
{
	size_t plain = 0, skipped = 0;
	char name[STORE_MAX_NAME + 1];
	MDB_cursor *cur;
	MDB_val key, val;
	MDB_stat st;
	int rc;

	rc = mdb_stat(txn, main_dbi, &st);
	if (rc)
		goto out_err;
	fprintf(f, "\n%-24s%12s %5s %9s %9s %9s %11s\n", "database", "entries",
		"depth", "branch", "leaf", "overflow", "size");
	fprintf(f, "%-24s", "(main)");
	print_db_row(f, &st);

	rc = mdb_cursor_open(txn, main_dbi, &cur);
	if (rc)
		goto out_err;
	for (rc = mdb_cursor_get(cur, &key, &val, MDB_FIRST); !rc;
	     rc = mdb_cursor_get(cur, &key, &val, MDB_NEXT)) {
		MDB_dbi dbi;
		int orc;

		if (key.mv_size > STORE_MAX_NAME ||
		    memchr(key.mv_data, '\0', key.mv_size)) {
			plain++;
			continue;
		}
		memcpy(name, key.mv_data, key.mv_size);
		name[key.mv_size] = '\0';
		orc = mdb_dbi_open(txn, name, 0, &dbi);
		if (orc == MDB_INCOMPATIBLE) {
			plain++;
			continue;
		}
		if (orc == MDB_DBS_FULL) {
			skipped++;
			continue;
		}
		if (!orc)
			orc = mdb_stat(txn, dbi, &st);
		if (orc) {
			rc = orc;
			break;
		}
		print_name(f, &key);
		print_db_row(f, &st);
	}
	mdb_cursor_close(cur);
	if (rc != MDB_NOTFOUND)
		goto out_err;
	if (plain)
		fprintf(f, "\nthe main database also holds %zu plain record%s\n",
			plain, plain == 1 ? "" : "s");
	if (skipped)
		fprintf(f, "%zu more database%s not shown (more than %d)\n",
			skipped, skipped == 1 ? "" : "s", STORE_MAX_DBS);
	return ferror(f) ? -EIO : 0;

out_err:
	fprintf(stderr, "%s: %s: cannot read store: %s\n", prog, dir,
		mdb_strerror(rc));
	return store_errno(rc);
}

int ctl_store_report(FILE *f, const char *prog, const char *dir,
		     const char *mount)
{
	char path[PATH_MAX], disk[32], used[32], map[32];
	unsigned int maxreaders = 0;
	MDB_envinfo info;
	MDB_stat est;
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi main_dbi;
	struct stat sb;
	int rc, ret;

	if (stat(dir, &sb) < 0) {
		ret = -errno;
		fprintf(stderr, "%s: %s: %s\n", prog, dir, strerror(errno));
		return ret;
	}
	if (!S_ISDIR(sb.st_mode)) {
		fprintf(stderr, "%s: %s: not a directory (give the store's "
			"directory, which holds data.mdb)\n", prog, dir);
		return -ENOTDIR;
	}
	if ((size_t)snprintf(path, sizeof(path), "%s/data.mdb", dir) >=
	    sizeof(path)) {
		fprintf(stderr, "%s: %s: %s\n", prog, dir, strerror(ENAMETOOLONG));
		return -ENAMETOOLONG;
	}
	if (stat(path, &sb) < 0) {
		ret = -errno;
		if (errno == ENOENT)
			fprintf(stderr, "%s: %s: not an LMDB store (no data.mdb)\n",
				prog, dir);
		else
			fprintf(stderr, "%s: %s: %s\n", prog, path,
				strerror(errno));
		return ret;
	}

	ret = check_magic(path);
	if (ret == -EINVAL) {
		fprintf(stderr, "%s: %s: not an LMDB store (data.mdb has no "
			"LMDB header)\n", prog, dir);
		return ret;
	}
	if (ret) {
		fprintf(stderr, "%s: %s: %s\n", prog, path, strerror(-ret));
		return ret;
	}

	rc = mdb_env_create(&env);
	if (rc)
		goto out_msg;
	rc = mdb_env_set_maxdbs(env, STORE_MAX_DBS);
	if (rc)
		goto out_close_env;
	rc = mdb_env_open(env, dir, MDB_RDONLY, 0);
	if (rc)
		goto out_close_env;
	mdb_env_info(env, &info);
	mdb_env_stat(env, &est);
	mdb_env_get_maxreaders(env, &maxreaders);

	ctl_fmt_bytes(disk, sizeof(disk), (double)sb.st_size);
	ctl_fmt_bytes(used, sizeof(used),
		      (double)(info.me_last_pgno + 1) * est.ms_psize);
	ctl_fmt_bytes(map, sizeof(map), (double)info.me_mapsize);
	fprintf(f, "store %s\n", dir);
	if (mount)
		fprintf(f, "  %-18s %s\n", "of the mount", mount);
	fprintf(f, "  %-18s %s on disk, %s in use (%zu pages of %u B)\n",
		"data.mdb", disk, used, info.me_last_pgno + 1, est.ms_psize);
	fprintf(f, "  %-18s %s\n", "map size", map);
	fprintf(f, "  %-18s %zu\n", "last transaction", info.me_last_txnid);
	fprintf(f, "  %-18s %u of %u\n", "readers", info.me_numreaders,
		maxreaders);

	rc = mdb_txn_begin(env, NULL, MDB_RDONLY, &txn);
	if (rc)
		goto out_close_env;
	rc = mdb_dbi_open(txn, NULL, 0, &main_dbi);
	if (rc)
		goto out_abort;
	ret = report_databases(f, prog, dir, txn, main_dbi);
	mdb_txn_abort(txn);
	mdb_env_close(env);
	return ret;

out_abort:
	mdb_txn_abort(txn);
out_close_env:
	mdb_env_close(env);
out_msg:
	fprintf(stderr, "%s: %s: %s\n", prog, dir, open_reason(rc));
	return store_errno(rc);
}
