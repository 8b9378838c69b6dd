/* pidx: per-file radix page index; see pidx.h. */
#include "pidx.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct pidx_node {
	uint64_t tags;      /* slot i tagged (leaf) or has tagged below */
	uint64_t present;   /* slot i non-empty */
	union {
		struct pidx_node *child[PIDX_FANOUT];
		uint32_t fid[PIDX_FANOUT];
	};
};

#define LEAF_BYTES (offsetof(struct pidx_node, fid) + PIDX_FANOUT * sizeof(uint32_t))
#define INNER_BYTES sizeof(struct pidx_node)

static unsigned level_shift(unsigned level)
{
	/* level 1 is a leaf */
	return (level - 1) * PIDX_BITS;
}

static unsigned slot_of(uint64_t index, unsigned level)
{
	unsigned shift = level_shift(level);

	return shift >= 64 ? 0 : (index >> shift) & (PIDX_FANOUT - 1);
}

static uint64_t max_index(unsigned height)
{
	unsigned bits = height * PIDX_BITS;

	return bits >= 64 ? UINT64_MAX : (1ULL << bits) - 1;
}

static struct pidx_node *node_new(struct pidx *p, bool leaf)
{
	size_t sz = leaf ? LEAF_BYTES : INNER_BYTES;
	struct pidx_node *n = calloc(1, sz);

	if (n)
		p->bytes += sz;
	return n;
}

static void node_free(struct pidx *p, struct pidx_node *n, bool leaf)
{
	p->bytes -= leaf ? LEAF_BYTES : INNER_BYTES;
	free(n);
}

void pidx_init(struct pidx *p)
{
	memset(p, 0, sizeof(*p));
}

static void free_subtree(struct pidx *p, struct pidx_node *n, unsigned level)
{
	if (level > 1) {
		uint64_t bits = n->present;

		while (bits) {
			unsigned i = __builtin_ctzll(bits);

			bits &= bits - 1;
			free_subtree(p, n->child[i], level - 1);
		}
	}
	node_free(p, n, level == 1);
}

void pidx_destroy(struct pidx *p)
{
	if (p->root)
		free_subtree(p, p->root, p->height);
	pidx_init(p);
}

uint32_t pidx_lookup(const struct pidx *p, uint64_t index)
{
	struct pidx_node *n = p->root;
	unsigned level = p->height;

	if (!n || index > max_index(level))
		return 0;
	while (level > 1) {
		unsigned s = slot_of(index, level);

		if (!(n->present & (1ULL << s)))
			return 0;
		n = n->child[s];
		level--;
	}
	return n->fid[slot_of(index, 1)];
}

static int grow(struct pidx *p, uint64_t index)
{
	while (!p->root || index > max_index(p->height)) {
		struct pidx_node *n;

		if (!p->root) {
			n = node_new(p, true);
			if (!n)
				return -ENOMEM;
			p->root = n;
			p->height = 1;
			continue;
		}
		n = node_new(p, false);
		if (!n)
			return -ENOMEM;
		n->child[0] = p->root;
		n->present = 1;
		n->tags = p->root->tags ? 1 : 0;
		p->root = n;
		p->height++;
	}
	return 0;
}

int pidx_store(struct pidx *p, uint64_t index, uint32_t fid)
{
	struct pidx_node *n;
	unsigned level;
	int ret;

	if (fid == 0)
		return -EINVAL;
	ret = grow(p, index);
	if (ret)
		return ret;
	n = p->root;
	for (level = p->height; level > 1; level--) {
		unsigned s = slot_of(index, level);

		if (!(n->present & (1ULL << s))) {
			struct pidx_node *c = node_new(p, level == 2);

			if (!c)
				return -ENOMEM;
			n->child[s] = c;
			n->present |= 1ULL << s;
		}
		n = n->child[s];
	}
	unsigned s = slot_of(index, 1);
	if (!(n->present & (1ULL << s)))
		p->nr++;
	else if (n->fid[s] == PIDX_COUNTED_FID)
		p->nr_counted--;
	if (fid == PIDX_COUNTED_FID)
		p->nr_counted++;
	n->present |= 1ULL << s;
	n->fid[s] = fid;
	return 0;
}

/* Walk down recording the path; returns the leaf or NULL. */
static struct pidx_node *walk(const struct pidx *p, uint64_t index,
			      struct pidx_node **path)
{
	struct pidx_node *n = p->root;
	unsigned level = p->height;

	if (!n || index > max_index(level))
		return NULL;
	while (level > 1) {
		unsigned s = slot_of(index, level);

		path[level] = n;
		if (!(n->present & (1ULL << s)))
			return NULL;
		n = n->child[s];
		level--;
	}
	path[1] = n;
	if (!(n->present & (1ULL << slot_of(index, 1))))
		return NULL;
	return n;
}

/* After a slot at `level` in path lost its tag, clear upward as needed. */
static void untag_up(struct pidx_node **path, unsigned from, unsigned height,
		     uint64_t index)
{
	for (unsigned level = from; level < height; level++) {
		if (path[level]->tags)
			return;
		path[level + 1]->tags &= ~(1ULL << slot_of(index, level + 1));
	}
}

/* Clear index's tag in its leaf (path[1] of its walk) and, where no tag
 * is left below them, in the nodes above. */
static void untag(struct pidx *p, struct pidx_node **path,
		  struct pidx_node *leaf, uint64_t index)
{
	uint64_t bit = 1ULL << slot_of(index, 1);

	if (!(leaf->tags & bit))
		return;
	leaf->tags &= ~bit;
	p->nr_tagged--;
	untag_up(path, 1, p->height, index);
}

uint32_t pidx_erase(struct pidx *p, uint64_t index)
{
	struct pidx_node *path[12];
	struct pidx_node *leaf = walk(p, index, path);
	unsigned s, level;
	uint32_t old;

	if (!leaf)
		return 0;
	s = slot_of(index, 1);
	old = leaf->fid[s];
	untag(p, path, leaf, index);
	leaf->present &= ~(1ULL << s);
	leaf->fid[s] = 0;
	p->nr--;
	if (old == PIDX_COUNTED_FID)
		p->nr_counted--;
	/* free empty nodes bottom-up */
	for (level = 1; level <= p->height; level++) {
		struct pidx_node *n = path[level];

		if (n->present)
			break;
		node_free(p, n, level == 1);
		if (level == p->height) {
			p->root = NULL;
			p->height = 0;
			break;
		}
		path[level + 1]->present &= ~(1ULL << slot_of(index, level + 1));
		path[level + 1]->tags &= ~(1ULL << slot_of(index, level + 1));
	}
	return old;
}

void pidx_tag_set(struct pidx *p, uint64_t index)
{
	struct pidx_node *path[12];
	struct pidx_node *leaf = walk(p, index, path);
	unsigned s;

	if (!leaf)
		return;
	s = slot_of(index, 1);
	if (leaf->tags & (1ULL << s))
		return;
	p->nr_tagged++;
	for (unsigned level = 1; level <= p->height; level++)
		path[level]->tags |= 1ULL << slot_of(index, level);
}

void pidx_tag_clear(struct pidx *p, uint64_t index)
{
	struct pidx_node *path[12];
	struct pidx_node *leaf = walk(p, index, path);

	if (leaf)
		untag(p, path, leaf, index);
}

bool pidx_tag_get(const struct pidx *p, uint64_t index)
{
	struct pidx_node *path[12];
	struct pidx_node *leaf = walk(p, index, path);

	return leaf && (leaf->tags & (1ULL << slot_of(index, 1)));
}

struct gang {
	uint64_t end;
	bool tagged;
	uint64_t *indexes;
	uint32_t *fids;
	unsigned max, n;
};

/* Visit node n (covering indexes from base) at level, entries >= start. */
static void gang_node(struct gang *g, struct pidx_node *n, unsigned level,
		      uint64_t base, uint64_t start)
{
	unsigned shift = level_shift(level);
	uint64_t bits = g->tagged ? n->tags : n->present;
	unsigned first = start > base ? slot_of(start, level) : 0;

	if (first)
		bits &= ~((1ULL << first) - 1);
	while (bits && g->n < g->max) {
		unsigned i = __builtin_ctzll(bits);
		uint64_t idx = base + ((uint64_t)i << shift);

		bits &= bits - 1;
		if (idx >= g->end)
			return;
		if (level == 1) {
			g->indexes[g->n] = idx;
			g->fids[g->n] = n->fid[i];
			g->n++;
		} else {
			gang_node(g, n->child[i], level - 1, idx,
				  start > idx ? start : idx);
		}
	}
}

unsigned pidx_gang(const struct pidx *p, uint64_t start, uint64_t end,
		   bool tagged, uint64_t *indexes, uint32_t *fids,
		   unsigned max)
{
	struct gang g = { end, tagged, indexes, fids, max, 0 };

	if (!p->root || start > max_index(p->height) || start >= end)
		return 0;
	gang_node(&g, p->root, p->height, 0, start);
	return g.n;
}
