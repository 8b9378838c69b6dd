/*
 * store_check: a structural check of data.mdb before LMDB maps it.
 *
 * LMDB trusts its file. A page number past the end of the file, a node
 * offset outside its page or a tree that points back into itself makes it
 * read out of bounds or loop; a page marked dirty on disk makes it write
 * into its read-only map; a damaged free list makes it hand out a page
 * twice and abort. The daemon must survive a damaged (or hostile) state
 * directory, so before opening we walk the newest snapshot the way LMDB
 * reaches it and refuse whatever it could trip over:
 *
 *   - both meta pages: magic, version, page size; for the newer one
 *     also its place (commit N writes page N % 2) and last page;
 *   - every tree (free pages, main, each named database): page headers,
 *     node bounds, nodes that do not overlap (a delete shifts the nodes
 *     below by the deleted one's size), child and overflow page numbers
 *     inside the file, equal leaf depth, no page reached twice;
 *   - the free lists: keyed by past commits, sorted, inside the file,
 *     owned by no tree, no page listed twice.
 *
 * Only what the store uses is accepted: no DUPSORT (no sub-pages, no
 * LEAF2 pages), no fixed map, plain records nowhere but in named
 * databases. Key order inside pages is not checked: LMDB finds wrong
 * records in a misordered page but stays in bounds.
 *
 * The layout (LMDB 0.9 data version 1, 64-bit page numbers, MDB_DEVEL
 * off) is read at fixed offsets in host byte order, as LMDB writes it;
 * lmdb.h does not export LMDB's own structs.
 */
#include "store_i.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Page header: pgno u64 | pad u16 | flags u16 | lower u16 | upper u16
 * (or, for overflow pages, the page count u32 instead of lower/upper). */
#define PAGEHDRSZ 16u
#define PH_PGNO 0
#define PH_FLAGS 10
#define PH_LOWER 12
#define PH_UPPER 14
#define PH_PAGES 12

#define P_BRANCH 0x01u
#define P_LEAF 0x02u
#define P_OVERFLOW 0x04u
#define P_META 0x08u

/* Node: lo u16 | hi u16 | flags u16 | ksize u16 | key | data. */
#define NODESIZE 8u
#define F_BIGDATA 0x01u
#define F_SUBDATA 0x02u

/* MDB_db: pad u32 | flags u16 | depth u16 | branch, leaf, overflow,
 * entries, root u64. The meta follows the page header: magic u32 |
 * version u32 | address u64 | mapsize u64 | dbs[2] | last_pg | txnid. */
#define DBSZ 48u
#define DB_FLAGS 4
#define DB_DEPTH 6
#define DB_ROOT 40
#define MM_MAGIC 0
#define MM_VERSION 4
#define MM_DBS 24
#define MM_LAST_PG 120
#define MM_TXNID 128
#define MM_SIZE 136u

#define MDB_MAGIC 0xBEEFC0DEu
#define MDB_DATA_VERSION 1u
#define P_INVALID UINT64_MAX
#define MAX_DEPTH 32u          /* LMDB's cursor stack */
#define MAX_KEY 511u           /* LMDB's default key size limit */
#define MIN_PSIZE 512u
#define MAX_PSIZE 32768u
/* Pages past EOF a meta may count (allocated, freed unwritten). */
#define MAX_UNWRITTEN 65536u
/* Largest environment we would map: bounds (last_pg + 1) * psize. */
#define MAX_MAP (1ull << 40)

enum ck_tree { CK_FREE, CK_MAIN, CK_SUB };

struct ck {
	const uint8_t *map;
	uint64_t size;
	uint32_t psize;
	uint64_t filepages;    /* whole pages in the file */
	uint64_t last_pg;      /* of the meta in use */
	uint64_t txnid;        /* of the meta in use */
	uint8_t *seen;         /* one bit per file page: owned already */
	uint64_t *late;        /* free pages past EOF, for duplicates */
	size_t nlate, cap_late;
};

static uint16_t rd16(const uint8_t *p)
{
	uint16_t v;

	memcpy(&v, p, 2);
	return v;
}

static uint32_t rd32(const uint8_t *p)
{
	uint32_t v;

	memcpy(&v, p, 4);
	return v;
}

static uint64_t rd64(const uint8_t *p)
{
	uint64_t v;

	memcpy(&v, p, 8);
	return v;
}

static bool ck_test_set(struct ck *c, uint64_t pg)
{
	uint8_t bit = (uint8_t)(1u << (pg & 7));
	bool was = c->seen[pg >> 3] & bit;

	c->seen[pg >> 3] |= bit;
	return was;
}

/* Claim n pages from pgno for one tree: inside the file, not owned yet. */
static const uint8_t *ck_claim(struct ck *c, uint64_t pgno, uint64_t n)
{
	if (pgno < 2 || n == 0 || pgno >= c->filepages ||
	    n > c->filepages - pgno || pgno + n - 1 > c->last_pg)
		return NULL;
	for (uint64_t i = 0; i < n; i++)
		if (ck_test_set(c, pgno + i))
			return NULL;
	return c->map + pgno * c->psize;
}

/* Mark the 2-byte units of a node in the page's map; false if any was
 * taken. LMDB gives each node an even size and never overlaps them. */
static bool ck_node_span(uint8_t *used, unsigned off, unsigned len)
{
	len = (len + 1) & ~1u;
	for (unsigned u = off / 2; u < (off + len) / 2; u++) {
		if (used[u >> 3] & (1u << (u & 7)))
			return false;
		used[u >> 3] |= (uint8_t)(1u << (u & 7));
	}
	return true;
}

/* The data of a leaf node, following an overflow page if it has one. */
static const uint8_t *ck_node_data(struct ck *c, const uint8_t *page,
				   unsigned off, unsigned nflags,
				   uint32_t ksize, uint32_t dsize)
{
	const uint8_t *data = page + off + NODESIZE + ksize, *ov;
	uint64_t ovpg, need, have;

	if (!(nflags & F_BIGDATA))
		return off + NODESIZE + ksize + (uint64_t)dsize <= c->psize ?
			data : NULL;
	if (off + NODESIZE + ksize + 8 > c->psize)
		return NULL;
	ovpg = rd64(data);
	need = (PAGEHDRSZ - 1 + (uint64_t)dsize) / c->psize + 1;
	if (ovpg < 2 || ovpg >= c->filepages)
		return NULL;
	ov = c->map + ovpg * c->psize;
	have = rd32(ov + PH_PAGES);
	/* LMDB keeps a larger overflow run when a value shrinks. */
	if (rd64(ov + PH_PGNO) != ovpg || rd16(ov + PH_FLAGS) != P_OVERFLOW ||
	    have < need || !ck_claim(c, ovpg, have))
		return NULL;
	return ov + PAGEHDRSZ;
}

static int ck_tree(struct ck *c, const uint8_t *db, enum ck_tree kind);

/* A free list: count u64, then count page numbers, strictly descending.
 * Its pages are checked against the trees later (ck_free_pages). */
static int ck_idl_shape(const uint8_t *d, uint32_t dsize, uint64_t last_pg)
{
	uint64_t n, prev = UINT64_MAX, pg;

	if (dsize < 8 || dsize % 8)
		return -EBADMSG;
	n = rd64(d);
	if (n != dsize / 8 - 1)
		return -EBADMSG;
	for (uint64_t i = 1; i <= n; i++) {
		pg = rd64(d + 8 * i);
		if (pg < 2 || pg > last_pg || pg >= prev)
			return -EBADMSG;
		prev = pg;
	}
	return 0;
}

static int ck_leaf_node(struct ck *c, const uint8_t *page, unsigned off,
			enum ck_tree kind)
{
	const uint8_t *node = page + off, *data;
	unsigned nflags = rd16(node + 4);
	uint32_t ksize = rd16(node + 6);
	uint32_t dsize = rd16(node) | (uint32_t)rd16(node + 2) << 16;

	data = ck_node_data(c, page, off, nflags, ksize, dsize);
	if (!data)
		return -EBADMSG;
	switch (kind) {
	case CK_FREE:
		/* Keyed by the id of the commit that freed the pages: LMDB
		 * would never retire a record keyed 0, and would overwrite
		 * one from the future. */
		if (nflags & F_SUBDATA || !rd64(node + NODESIZE) ||
		    rd64(node + NODESIZE) > c->txnid)
			return -EBADMSG;
		return ck_idl_shape(data, dsize, c->last_pg);
	case CK_MAIN:
		/* Only named databases live in the main tree. */
		if (nflags != F_SUBDATA || dsize != DBSZ)
			return -EBADMSG;
		return ck_tree(c, data, CK_SUB);
	case CK_SUB:
		return nflags & F_SUBDATA ? -EBADMSG : 0;
	}
	return -EBADMSG;
}

/* A key inside a checked page; p NULL: no bound. */
struct ck_key {
	const uint8_t *p;
	unsigned len;
};

/* LMDB's order: integer keys (host order) in the free tree, memcmp
 * with the shorter key first elsewhere. */
static int ck_cmp(enum ck_tree kind, const struct ck_key *a,
		  const struct ck_key *b)
{
	unsigned len = a->len < b->len ? a->len : b->len;
	uint64_t x, y;
	int d;

	if (kind == CK_FREE) {
		x = rd64(a->p);
		y = rd64(b->p);
		return x < y ? -1 : x > y;
	}
	d = memcmp(a->p, b->p, len);
	if (d)
		return d;
	return a->len < b->len ? -1 : a->len > b->len;
}

static struct ck_key ck_key_at(const uint8_t *page, unsigned i)
{
	unsigned off = rd16(page + PAGEHDRSZ + 2 * i);

	return (struct ck_key){ page + off + NODESIZE, rd16(page + off + 6) };
}

/*
 * The node headers of a page: inside it, not overlapping, keys in order
 * and within [lo, hi), the bounds the parent's separators give. In a
 * branch page key 0 stands for lo and is not compared. Misordered keys
 * would not crash LMDB, but an exact search could then miss a key a
 * range search finds, and a delete loop would never end.
 */
static int ck_nodes(struct ck *c, const uint8_t *page, unsigned nkeys,
		    bool branch, enum ck_tree kind, const struct ck_key *lo,
		    const struct ck_key *hi)
{
	unsigned upper = rd16(page + PH_UPPER), off, ksize, span, nflags;
	struct ck_key key, prev = { NULL, 0 };
	uint8_t used[MAX_PSIZE / 16];
	uint32_t dsize;

	memset(used, 0, c->psize / 16);
	for (unsigned i = 0; i < nkeys; i++) {
		off = rd16(page + PAGEHDRSZ + 2 * i);
		if (off < upper || off % 2 || off + NODESIZE > c->psize)
			return -EBADMSG;
		ksize = rd16(page + off + 6);
		nflags = rd16(page + off + 4);
		dsize = rd16(page + off) | (uint32_t)rd16(page + off + 2) << 16;
		if (ksize > MAX_KEY)
			return -EBADMSG;
		if (branch)
			span = NODESIZE + ksize;
		else if (nflags & ~(F_BIGDATA | F_SUBDATA))
			return -EBADMSG;        /* F_DUPDATA: not ours */
		else
			span = NODESIZE + ksize +
			       (nflags & F_BIGDATA ? 8 : dsize);
		if (off + span > c->psize || !ck_node_span(used, off, span))
			return -EBADMSG;
		if (branch && i == 0)
			continue;
		if (kind == CK_FREE && ksize != 8)
			return -EBADMSG;
		key = ck_key_at(page, i);
		if (prev.p ? ck_cmp(kind, &prev, &key) >= 0 :
		    lo && ck_cmp(kind, lo, &key) > 0)
			return -EBADMSG;
		if (hi && ck_cmp(kind, &key, hi) >= 0)
			return -EBADMSG;
		prev = key;
	}
	return 0;
}

static int ck_page(struct ck *c, uint64_t pgno, unsigned levels,
		   enum ck_tree kind, const struct ck_key *lo,
		   const struct ck_key *hi)
{
	const uint8_t *page = ck_claim(c, pgno, 1);
	unsigned flags, lower, upper, nkeys, off;
	struct ck_key clo, chi;
	int ret;

	if (!page || rd64(page + PH_PGNO) != pgno)
		return -EBADMSG;
	flags = rd16(page + PH_FLAGS);
	lower = rd16(page + PH_LOWER);
	upper = rd16(page + PH_UPPER);
	/* Exactly one type, and no P_DIRTY: LMDB would write in place. */
	if (flags != (levels > 1 ? P_BRANCH : P_LEAF))
		return -EBADMSG;
	if (lower < PAGEHDRSZ || (lower - PAGEHDRSZ) % 2 || lower > upper ||
	    upper > c->psize)
		return -EBADMSG;
	nkeys = (lower - PAGEHDRSZ) / 2;
	if (!nkeys)
		return -EBADMSG;
	ret = ck_nodes(c, page, nkeys, levels > 1, kind, lo, hi);
	for (unsigned i = 0; i < nkeys && !ret; i++) {
		off = rd16(page + PAGEHDRSZ + 2 * i);
		if (levels > 1) {
			const uint8_t *n = page + off;
			uint64_t child = rd16(n) | (uint64_t)rd16(n + 2) << 16 |
					 (uint64_t)rd16(n + 4) << 32;

			if (i)
				clo = ck_key_at(page, i);
			if (i + 1 < nkeys)
				chi = ck_key_at(page, i + 1);
			ret = ck_page(c, child, levels - 1, kind,
				      i ? &clo : lo, i + 1 < nkeys ? &chi : hi);
		} else {
			ret = ck_leaf_node(c, page, off, kind);
		}
	}
	return ret;
}

static int ck_tree(struct ck *c, const uint8_t *db, enum ck_tree kind)
{
	unsigned flags = rd16(db + DB_FLAGS), depth = rd16(db + DB_DEPTH);
	uint64_t root = rd64(db + DB_ROOT);

	if (flags != (kind == CK_FREE ? MDB_INTEGERKEY : 0))
		return -EBADMSG;
	if (root == P_INVALID)
		return depth ? -EBADMSG : 0;
	if (!depth || depth > MAX_DEPTH)
		return -EBADMSG;
	return ck_page(c, root, depth, kind, NULL, NULL);
}

/* Second pass over the free tree (its pages are claimed already): each
 * listed page is owned by no tree and listed once. */
static int ck_free_pages(struct ck *c, const uint8_t *d)
{
	uint64_t n = rd64(d), pg;

	for (uint64_t i = 1; i <= n; i++) {
		pg = rd64(d + 8 * i);
		if (pg < c->filepages) {
			if (ck_test_set(c, pg))
				return -EBADMSG;
			continue;
		}
		if (c->nlate == c->cap_late) {
			size_t cap = c->cap_late ? 2 * c->cap_late : 64;
			uint64_t *late = realloc(c->late, cap * sizeof(*late));

			if (!late)
				return -ENOMEM;
			c->late = late;
			c->cap_late = cap;
		}
		c->late[c->nlate++] = pg;
	}
	return 0;
}

static int ck_free_walk(struct ck *c, uint64_t pgno, unsigned levels)
{
	const uint8_t *page = c->map + pgno * c->psize, *node;
	unsigned nkeys = (rd16(page + PH_LOWER) - PAGEHDRSZ) / 2, off;
	int ret;

	/* Shape checked by ck_page(): offsets are in bounds. */
	for (unsigned i = 0; i < nkeys; i++) {
		off = rd16(page + PAGEHDRSZ + 2 * i);
		node = page + off;
		if (levels > 1) {
			ret = ck_free_walk(c, rd16(node) |
					   (uint64_t)rd16(node + 2) << 16 |
					   (uint64_t)rd16(node + 4) << 32,
					   levels - 1);
		} else {
			/* Keys are 8 bytes here (checked by ck_leaf_node). */
			if (rd16(node + 4) & F_BIGDATA)
				node = c->map + rd64(node + NODESIZE + 8) *
					c->psize + PAGEHDRSZ;
			else
				node += NODESIZE + 8;
			ret = ck_free_pages(c, node);
		}
		if (ret)
			return ret;
	}
	return 0;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* A meta page LMDB would accept, and the sizes it implies. */
static int ck_meta(const uint8_t *map, uint64_t size, uint64_t off,
		   const uint8_t **meta)
{
	const uint8_t *m;
	uint32_t psize;

	if (off > size || size - off < PAGEHDRSZ + MM_SIZE)
		return -EBADMSG;
	if (rd16(map + off + PH_FLAGS) != P_META)
		return -EBADMSG;
	m = map + off + PAGEHDRSZ;
	if (rd32(m + MM_MAGIC) != MDB_MAGIC ||
	    rd32(m + MM_VERSION) != MDB_DATA_VERSION)
		return -EBADMSG;
	psize = rd32(m + MM_DBS);       /* dbs[0].pad */
	if (psize < MIN_PSIZE || psize > MAX_PSIZE || (psize & (psize - 1)))
		return -EBADMSG;
	*meta = m;
	return 0;
}

static int ck_run(struct ck *c)
{
	const uint8_t *m0, *m1, *m;
	uint64_t last;
	int ret;

	ret = ck_meta(c->map, c->size, 0, &m0);
	if (ret)
		return ret;
	c->psize = rd32(m0 + MM_DBS);
	ret = ck_meta(c->map, c->size, c->psize, &m1);
	if (ret)
		return ret;
	if (rd32(m1 + MM_DBS) != c->psize)
		return -EBADMSG;
	/* The newer one, as LMDB picks it (a tie goes to page 0). Commit N
	 * writes meta page N % 2, and readers pick the page that way. */
	m = rd64(m0 + MM_TXNID) < rd64(m1 + MM_TXNID) ? m1 : m0;
	if ((rd64(m + MM_TXNID) & 1) != (m == m1))
		return -EBADMSG;
	c->filepages = c->size / c->psize;
	last = rd64(m + MM_LAST_PG);
	if (last < 1 || last >= MAX_MAP / c->psize ||
	    last >= c->filepages + MAX_UNWRITTEN)
		return -EBADMSG;
	c->last_pg = last;
	c->txnid = rd64(m + MM_TXNID);
	c->seen = calloc(c->filepages / 8 + 1, 1);
	if (!c->seen)
		return -ENOMEM;
	ret = ck_tree(c, m + MM_DBS + DBSZ, CK_MAIN);
	if (!ret)
		ret = ck_tree(c, m + MM_DBS, CK_FREE);
	if (!ret && rd64(m + MM_DBS + DB_ROOT) != P_INVALID)
		ret = ck_free_walk(c, rd64(m + MM_DBS + DB_ROOT),
				   rd16(m + MM_DBS + DB_DEPTH));
	if (!ret && c->nlate) {
		qsort(c->late, c->nlate, sizeof(*c->late), cmp_u64);
		for (size_t i = 1; i < c->nlate; i++)
			if (c->late[i] == c->late[i - 1])
				return -EBADMSG;
	}
	return ret;
}

int store_check_file(const char *path)
{
	struct ck c = { 0 };
	struct stat st;
	void *map;
	int fd, ret;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? 0 : -errno;
	if (fstat(fd, &st)) {
		ret = -errno;
		goto out_close;
	}
	if (!S_ISREG(st.st_mode)) {
		ret = -EBADMSG;
		goto out_close;
	}
	ret = 0;
	if (!st.st_size)
		goto out_close;         /* LMDB treats it as a new file */
	map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	if (map == MAP_FAILED) {
		ret = -errno;
		goto out_close;
	}
	c.map = map;
	c.size = (uint64_t)st.st_size;
	ret = ck_run(&c);
	free(c.seen);
	free(c.late);
	munmap(map, (size_t)st.st_size);
out_close:
	close(fd);
	return ret;
}
