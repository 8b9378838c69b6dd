/*
 * u64map: a small hash table from 64-bit keys to 64-bit values, for the
 * tables keyed by a number: the store's masks (a file's id in the store
 * -> the update that masks its records), the uid scopes (uid -> scope
 * tag) and prune's set of the files seen (a key per file, no value).
 *
 * Open addressing with linear probing, at most half full (it doubles
 * before), 16 bytes per slot. Key 0 marks an empty slot and cannot be
 * stored: callers map their keys away from it. There is no removal of
 * one entry; u64map_filter rebuilds the table with the entries a
 * predicate keeps.
 *
 * (stree.h is the other table, for frame ids: it keeps 4 bytes per entry
 * by reading each key from its frame, and holds several entries per key.)
 *
 * Locking: none inside; the owner's lock.
 * Errors: -ENOMEM when the table cannot grow; it is then left as it was.
 */
#ifndef SAMEPAGE_U64MAP_H
#define SAMEPAGE_U64MAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct u64map_slot {
	uint64_t key;           /* 0: empty */
	uint64_t val;
};

struct u64map {
	struct u64map_slot *slots;
	size_t cap;             /* power of two, or 0 */
	size_t len;
};

void u64map_init(struct u64map *m);
void u64map_fini(struct u64map *m);
/* The value stored for key, or NULL. */
uint64_t *u64map_find(const struct u64map *m, uint64_t key);
/* The value stored for key, stored as val first if key was absent
 * (*added says which, if not NULL); NULL if that needed memory there
 * was not. */
uint64_t *u64map_put(struct u64map *m, uint64_t key, uint64_t val,
		     bool *added);
/* Call fn on every entry; fn may change the value. */
void u64map_each(struct u64map *m,
		 void (*fn)(uint64_t key, uint64_t *val, void *arg), void *arg);
/* Keep the entries keep() returns true for (it may look, not change);
 * 0, or -ENOMEM with the table unchanged. */
int u64map_filter(struct u64map *m,
		  bool (*keep)(uint64_t key, uint64_t val, void *arg),
		  void *arg);
size_t u64map_bytes(const struct u64map *m);

#endif
