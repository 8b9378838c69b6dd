/*
 * store_errno: LMDB return codes as -errno. See store_errno.h.
 */
#include "store_errno.h"

#include <errno.h>
#include <lmdb.h>

int store_errno(int rc)
{
	switch (rc) {
	case MDB_SUCCESS:
		return 0;
	case MDB_NOTFOUND:
		return -ENOENT;
	case MDB_KEYEXIST:
		return -EEXIST;
	case MDB_MAP_FULL:
	case MDB_TXN_FULL:
	case MDB_PAGE_FULL:
	case MDB_CURSOR_FULL:
		return -ENOSPC;
	case MDB_READERS_FULL:
	case MDB_TLS_FULL:
	case MDB_MAP_RESIZED:
		return -EAGAIN;
	case MDB_DBS_FULL:
		return -EMFILE;
	case MDB_INVALID:
	case MDB_CORRUPTED:
	case MDB_PAGE_NOTFOUND:
	case MDB_VERSION_MISMATCH:
		return -EBADMSG;
	case MDB_INCOMPATIBLE:
		return -EPROTO;
	case MDB_BAD_RSLOT:
	case MDB_BAD_TXN:
	case MDB_BAD_VALSIZE:
	case MDB_BAD_DBI:
		return -EINVAL;
	case MDB_PANIC:
		return -EIO;
	default:
		/* System errors come as positive errno values. */
		return rc > 0 ? -rc : -EIO;
	}
}
