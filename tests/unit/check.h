/*
 * check: the few macros the unit tests share. A failed CHECK prints where
 * and what, and the test exits 1 at the end (or at once with REQUIRE).
 */
#ifndef SAMEPAGE_CHECK_H
#define SAMEPAGE_CHECK_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int check_failures;

#define CHECK(cond)                                                          \
	do {                                                                 \
		if (!(cond)) {                                               \
			fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, \
				__LINE__, #cond);                            \
			check_failures++;                                    \
		}                                                            \
	} while (0)

#define CHECK_EQ(a, b)                                                       \
	do {                                                                 \
		long long _a = (long long)(a), _b = (long long)(b);          \
		if (_a != _b) {                                              \
			fprintf(stderr, "%s:%d: CHECK_EQ failed: %s = %lld, " \
				"%s = %lld\n", __FILE__, __LINE__, #a, _a,   \
				#b, _b);                                     \
			check_failures++;                                    \
		}                                                            \
	} while (0)

#define REQUIRE(cond)                                                        \
	do {                                                                 \
		if (!(cond)) {                                               \
			fprintf(stderr, "%s:%d: REQUIRE failed: %s (%s)\n",  \
				__FILE__, __LINE__, #cond, strerror(errno)); \
			exit(1);                                             \
		}                                                            \
	} while (0)

#define RUN(test)                                                            \
	do {                                                                 \
		int _before = check_failures;                                \
		test();                                                      \
		printf("%s %s\n", check_failures == _before ? "ok" : "FAIL", \
		       #test);                                               \
		fflush(stdout);                                              \
	} while (0)

#define CHECK_DONE() (check_failures ? 1 : 0)

#endif
