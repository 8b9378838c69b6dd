/*
 * Unit tests of u64map: random puts, finds and filters checked against a
 * plain array that holds the same entries; keys that differ only in their
 * high bits, or only in their low bits; key 0 refused.
 */
#include "check.h"
#include "u64map.h"

#include <stdint.h>

#define MODEL_KEYS 4096u

static uint64_t rng_state = 0x12345678u;

static uint64_t rng(void)
{
	/* xorshift64: reproducible, no seed to carry around */
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

/* The model: key i + 1 (of MODEL_KEYS, spread by a stride) holds val[i]
 * when present[i]. */
static uint64_t model_key(unsigned i)
{
	return (uint64_t)(i + 1) * 0x100000001ull;
}

static bool keep_odd_values(uint64_t key, uint64_t val, void *arg)
{
	(void)key, (void)arg;
	return val & 1;
}

static void add_one(uint64_t key, uint64_t *val, void *arg)
{
	(*(unsigned *)arg)++;
	(void)key;
	(*val)++;
}

static void check_model(struct u64map *m, const bool *present,
			const uint64_t *val)
{
	unsigned n = 0;

	for (unsigned i = 0; i < MODEL_KEYS; i++) {
		uint64_t *v = u64map_find(m, model_key(i));

		CHECK_EQ(v != NULL, present[i]);
		if (v && present[i])
			CHECK_EQ(*v, val[i]);
		n += present[i];
	}
	CHECK_EQ(m->len, n);
	CHECK(m->len * 2 <= m->cap || !m->cap);
}

static void test_random_operations_match_a_model(void)
{
	static bool present[MODEL_KEYS];
	static uint64_t val[MODEL_KEYS];
	struct u64map m;

	u64map_init(&m);
	for (unsigned round = 0; round < 20; round++) {
		for (unsigned k = 0; k < 2000; k++) {
			unsigned i = (unsigned)(rng() % MODEL_KEYS);
			uint64_t v = rng();
			bool added;
			uint64_t *got = u64map_put(&m, model_key(i), v, &added);

			REQUIRE(got);
			CHECK_EQ(added, !present[i]);
			if (!present[i]) {
				present[i] = true;
				val[i] = v;
			}
			CHECK_EQ(*got, val[i]);
			if (rng() % 4 == 0) {
				/* a put may change the value in place */
				*got = v;
				val[i] = v;
			}
		}
		check_model(&m, present, val);
		if (round % 3 == 2) {
			CHECK_EQ(u64map_filter(&m, keep_odd_values, NULL), 0);
			for (unsigned i = 0; i < MODEL_KEYS; i++)
				present[i] = present[i] && (val[i] & 1);
			check_model(&m, present, val);
		}
	}
	u64map_fini(&m);
}

static void test_each_visits_every_entry_once(void)
{
	struct u64map m;
	unsigned visits = 0;

	u64map_init(&m);
	for (uint64_t k = 1; k <= 1000; k++)
		REQUIRE(u64map_put(&m, k << 40, k, NULL));
	u64map_each(&m, add_one, &visits);
	CHECK_EQ(visits, 1000);
	for (uint64_t k = 1; k <= 1000; k++) {
		uint64_t *v = u64map_find(&m, k << 40);

		CHECK(v && *v == k + 1);
	}
	u64map_fini(&m);
}

static void test_zero_key_and_empty_table(void)
{
	struct u64map m;

	u64map_init(&m);
	CHECK(!u64map_find(&m, 1));
	CHECK(!u64map_put(&m, 0, 5, NULL));
	CHECK_EQ(u64map_filter(&m, keep_odd_values, NULL), 0);
	REQUIRE(u64map_put(&m, 2, 2, NULL));
	CHECK(!u64map_find(&m, 0));
	/* nothing kept: the table goes */
	CHECK_EQ(u64map_filter(&m, keep_odd_values, NULL), 0);
	CHECK_EQ(m.len, 0);
	CHECK_EQ(u64map_bytes(&m), 0);
	u64map_fini(&m);
}

int main(void)
{
	RUN(test_random_operations_match_a_model);
	RUN(test_each_visits_every_entry_once);
	RUN(test_zero_key_and_empty_table);
	return CHECK_DONE();
}
