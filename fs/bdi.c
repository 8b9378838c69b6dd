/* bdi: see bdi.h. */
#include "bdi.h"
#include "mountinfo.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

int bdi_set_read_ahead(const char *mountpoint, unsigned kb)
{
	struct mount_entry m;
	char path[96], val[16];
	int fd, n, ret;

	ret = mountinfo_top(mountpoint, &m);
	if (ret)
		return ret;
	snprintf(path, sizeof(path), "/sys/class/bdi/%s/read_ahead_kb", m.dev);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	n = snprintf(val, sizeof(val), "%u", kb);
	ret = write(fd, val, (size_t)n) == n ? 0 : -errno;
	close(fd);
	return ret;
}
