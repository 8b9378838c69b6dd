/*
 * u64map: see u64map.h.
 */
#include "u64map.h"

#include <errno.h>
#include <stdlib.h>

#define U64MAP_MIN_CAP 16u

/* Fibonacci hashing: the top bits of key * 2^64 / phi spread keys that
 * differ only in their low bits (inode numbers, fids, uids). */
static size_t slot_of(uint64_t key, size_t cap)
{
	return (size_t)((key * 0x9E3779B97F4A7C15ull) >> 20) & (cap - 1);
}

static struct u64map_slot *probe(struct u64map_slot *slots, size_t cap,
				 uint64_t key)
{
	size_t i = slot_of(key, cap);

	while (slots[i].key && slots[i].key != key)
		i = (i + 1) & (cap - 1);
	return &slots[i];
}

void u64map_init(struct u64map *m)
{
	*m = (struct u64map){ 0 };
}

void u64map_fini(struct u64map *m)
{
	free(m->slots);
	u64map_init(m);
}

uint64_t *u64map_find(const struct u64map *m, uint64_t key)
{
	struct u64map_slot *s;

	if (!m->len || !key)
		return NULL;
	s = probe(m->slots, m->cap, key);
	return s->key ? &s->val : NULL;
}

/* Move the entries keep() keeps (all, if it is NULL) into a new table of
 * cap slots. */
static int rebuild(struct u64map *m, size_t cap,
		   bool (*keep)(uint64_t key, uint64_t val, void *arg),
		   void *arg)
{
	struct u64map_slot *slots = calloc(cap, sizeof(*slots));
	size_t len = 0;

	if (!slots)
		return -ENOMEM;
	for (size_t i = 0; i < m->cap; i++) {
		struct u64map_slot *old = &m->slots[i];

		if (!old->key || (keep && !keep(old->key, old->val, arg)))
			continue;
		*probe(slots, cap, old->key) = *old;
		len++;
	}
	free(m->slots);
	m->slots = slots;
	m->cap = cap;
	m->len = len;
	return 0;
}

uint64_t *u64map_put(struct u64map *m, uint64_t key, uint64_t val,
		     bool *added)
{
	struct u64map_slot *s;

	if (!key)
		return NULL;
	if ((m->len + 1) * 2 > m->cap &&
	    rebuild(m, m->cap ? m->cap * 2 : U64MAP_MIN_CAP, NULL, NULL))
		return NULL;
	s = probe(m->slots, m->cap, key);
	if (added)
		*added = !s->key;
	if (!s->key) {
		*s = (struct u64map_slot){ key, val };
		m->len++;
	}
	return &s->val;
}

void u64map_each(struct u64map *m,
		 void (*fn)(uint64_t key, uint64_t *val, void *arg), void *arg)
{
	for (size_t i = 0; i < m->cap; i++)
		if (m->slots[i].key)
			fn(m->slots[i].key, &m->slots[i].val, arg);
}

int u64map_filter(struct u64map *m,
		  bool (*keep)(uint64_t key, uint64_t val, void *arg),
		  void *arg)
{
	size_t kept = 0, cap = U64MAP_MIN_CAP;

	for (size_t i = 0; i < m->cap; i++)
		kept += m->slots[i].key &&
			keep(m->slots[i].key, m->slots[i].val, arg);
	if (kept == m->len)
		return 0;
	if (!kept) {
		u64map_fini(m);
		return 0;
	}
	while (cap < kept * 2)
		cap *= 2;
	return rebuild(m, cap, keep, arg);
}

size_t u64map_bytes(const struct u64map *m)
{
	return m->cap * sizeof(*m->slots);
}
