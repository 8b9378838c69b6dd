/* bdi: see bdi.h. */
#include "bdi.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* mountinfo escapes space, tab, newline and backslash as \ooo. */
static void unescape(char *s)
{
	char *d = s;

	for (; *s; s++) {
		if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' &&
		    s[2] >= '0' && s[2] <= '7' && s[3] >= '0' && s[3] <= '7') {
			*d++ = (char)((s[1] - '0') << 6 | (s[2] - '0') << 3 |
				      (s[3] - '0'));
			s += 3;
		} else {
			*d++ = *s;
		}
	}
	*d = 0;
}

/* The device ("MAJ:MIN") of the newest mount at mountpoint. */
static int mount_device(const char *mountpoint, char *dev, size_t len)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	char *line = NULL;
	size_t cap = 0;
	int ret = -ENOENT;

	if (!f)
		return -errno;
	while (getline(&line, &cap, f) > 0) {
		char majmin[32], where[4096];

		/* id parent MAJ:MIN root mountpoint ... */
		if (sscanf(line, "%*u %*u %31s %*s %4095s", majmin, where) != 2)
			continue;
		unescape(where);
		if (!strcmp(where, mountpoint)) {
			snprintf(dev, len, "%s", majmin);
			ret = 0; /* a later line is a mount on top of it */
		}
	}
	free(line);
	fclose(f);
	return ret;
}

int bdi_set_read_ahead(const char *mountpoint, unsigned kb)
{
	char dev[32], path[96], val[16];
	int fd, n, ret;

	ret = mount_device(mountpoint, dev, sizeof(dev));
	if (ret)
		return ret;
	snprintf(path, sizeof(path), "/sys/class/bdi/%s/read_ahead_kb", dev);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	n = snprintf(val, sizeof(val), "%u", kb);
	ret = write(fd, val, (size_t)n) == n ? 0 : -errno;
	close(fd);
	return ret;
}
