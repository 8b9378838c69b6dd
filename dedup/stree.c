/* stree: fid tables keyed through the frames; see stree.h. */
#include "stree.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define EMPTY 0u
#define TOMB UINT32_MAX

void stree_init(struct stree *t, stree_key_fn key, void *arg)
{
	memset(t, 0, sizeof(*t));
	t->key = key;
	t->arg = arg;
}

void stree_fini(struct stree *t)
{
	free(t->slots);
	t->slots = NULL;
	t->cap = t->used = t->tombs = 0;
}

static uint32_t home(uint64_t key, uint32_t cap)
{
	key ^= key >> 33;
	key *= 0xff51afd7ed558ccdULL;
	key ^= key >> 33;
	return (uint32_t)key & (cap - 1);
}

static void put(uint32_t *slots, uint32_t cap, uint64_t key, uint32_t fid)
{
	uint32_t i = home(key, cap);

	while (slots[i] != EMPTY && slots[i] != TOMB)
		i = (i + 1) & (cap - 1);
	slots[i] = fid;
}

static int resize(struct stree *t, uint32_t cap)
{
	uint32_t *n = calloc(cap, sizeof(*n));

	if (!n)
		return -ENOMEM;
	for (uint32_t i = 0; i < t->cap; i++)
		if (t->slots[i] != EMPTY && t->slots[i] != TOMB)
			put(n, cap, t->key(t->arg, t->slots[i]), t->slots[i]);
	free(t->slots);
	t->slots = n;
	t->cap = cap;
	t->tombs = 0;
	return 0;
}

int stree_insert(struct stree *t, uint32_t fid)
{
	/* Grow (or drop tombstones) past 3/4 full, to at most 1/2 full. */
	if ((uint64_t)(t->used + t->tombs + 1) * 4 > (uint64_t)t->cap * 3) {
		uint32_t cap = 64;
		int ret;

		while ((uint64_t)(t->used + 1) * 2 > cap)
			cap *= 2;
		ret = resize(t, cap);
		if (ret)
			return ret;
	}
	put(t->slots, t->cap, t->key(t->arg, fid), fid);
	t->used++;
	return 0;
}

void stree_remove(struct stree *t, uint32_t fid)
{
	uint32_t i;

	if (!t->cap)
		return;
	i = home(t->key(t->arg, fid), t->cap);
	while (t->slots[i] != EMPTY) {
		if (t->slots[i] == fid) {
			t->slots[i] = TOMB;
			t->used--;
			t->tombs++;
			return;
		}
		i = (i + 1) & (t->cap - 1);
	}
}

uint32_t stree_next(const struct stree *t, uint64_t key, uint32_t *pos)
{
	uint32_t i;

	if (!t->cap)
		return 0;
	i = (home(key, t->cap) + *pos) & (t->cap - 1);
	while (*pos < t->cap && t->slots[i] != EMPTY) {
		uint32_t fid = t->slots[i];

		(*pos)++;
		i = (i + 1) & (t->cap - 1);
		if (fid != TOMB && t->key(t->arg, fid) == key)
			return fid;
	}
	return 0;
}

size_t stree_bytes(const struct stree *t)
{
	return (size_t)t->cap * sizeof(*t->slots);
}
