/* Optional C versions of the replay's hot loops (see README, "Optional C speedups").
 *
 * Every function here has a pure-Python twin with exactly the same contract
 * (ledger/framing.py: scan_chain; projections/catalog.py: _py_group_rows,
 * _py_intern); tests/test_speedups.py checks that they agree. The Python code
 * picks this module only when it imports and ARTIFACT_LEDGER_PURE_PYTHON is
 * not set, so nothing here may ever be the only place a rule lives.
 *
 * Needs: CPython headers, OpenSSL's libcrypto (SHA-256 through EVP), gcc.
 * CRC32C uses SSE4.2's crc32 instruction when the CPU has it (checked at
 * import time), else a table; both are in this file.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>
#include <openssl/evp.h>

#if defined(__x86_64__) || defined(__i386__)
#include <nmmintrin.h>
#define AL_X86 1
#endif

/* Must equal framing.MAX_BODY (a test compares them). */
#define AL_MAX_BODY (64u * 1024u * 1024u)
#define AL_FRAME 8
#define AL_HEAD_V1 48
#define AL_HEAD_V2 56
/* Records checked per GIL release: bounds the scratch memory whatever the limit. */
#define AL_SUBCHUNK 1024

/* ------------------------------------------------------------------ CRC32C */

static uint32_t crc_table[8][256];

static void crc_table_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xFF];
}

/* Both take and return the raw register (not inverted): callers invert once. */
static uint32_t crc_portable(uint32_t c, const unsigned char *p, size_t n)
{
    while (n >= 8) {
        uint32_t lo, hi;
        memcpy(&lo, p, 4);
        memcpy(&hi, p + 4, 4);
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
        lo = __builtin_bswap32(lo);
        hi = __builtin_bswap32(hi);
#endif
        lo ^= c;
        c = crc_table[7][lo & 0xFF] ^ crc_table[6][(lo >> 8) & 0xFF] ^ crc_table[5][(lo >> 16) & 0xFF]
            ^ crc_table[4][lo >> 24] ^ crc_table[3][hi & 0xFF] ^ crc_table[2][(hi >> 8) & 0xFF]
            ^ crc_table[1][(hi >> 16) & 0xFF] ^ crc_table[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    while (n--)
        c = (c >> 8) ^ crc_table[0][(c ^ *p++) & 0xFF];
    return c;
}

#ifdef AL_X86
__attribute__((target("sse4.2"))) static uint32_t crc_sse42(uint32_t c, const unsigned char *p, size_t n)
{
#if defined(__x86_64__)
    uint64_t c64 = c;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c64 = _mm_crc32_u64(c64, w);
        p += 8;
        n -= 8;
    }
    c = (uint32_t)c64;
#endif
    while (n--)
        c = _mm_crc32_u8(c, *p++);
    return c;
}
#endif

static uint32_t (*crc_update)(uint32_t, const unsigned char *, size_t) = crc_portable;
static int crc_hw = 0;

/* ------------------------------------------------------------------ helpers */

/* getattr(obj, name) for many objects of one type: a plain slot (a member descriptor, as msgspec
 * Structs have, found through the generic lookup) is read at its offset, which is what
 * PyObject_GenericGetAttr would do after finding the same descriptor; anything else, or an unset
 * slot, goes through PyObject_GetAttr. */
typedef struct {
    PyTypeObject *type;     /* the type the offset is for (kept alive by the objects being read) */
    Py_ssize_t offset;      /* -1: no plain slot */
} attr_slot;

static PyObject *get_attr(PyObject *obj, PyObject *name, attr_slot *c)
{
    PyTypeObject *t = Py_TYPE(obj);
    if (t != c->type) {
        c->type = t;
        c->offset = -1;
        if (t->tp_getattro == PyObject_GenericGetAttr) {
            PyObject *d = _PyType_Lookup(t, name);  /* borrowed */
            if (d != NULL && Py_IS_TYPE(d, &PyMemberDescr_Type)) {
                PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
                if ((m->type == T_OBJECT_EX || m->type == T_OBJECT) && !(m->flags & PY_AUDIT_READ))
                    c->offset = m->offset;
            }
        }
    }
    if (c->offset >= 0) {
        PyObject *v = *(PyObject **)((char *)obj + c->offset);
        if (v != NULL)
            return Py_NewRef(v);
    }
    return PyObject_GetAttr(obj, name);
}

static inline uint32_t le32(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
    v = __builtin_bswap32(v);
#endif
    return v;
}

static inline uint64_t le64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

/* ------------------------------------------------------------------ SHA-256 */

/* Fetched once: OpenSSL 3's one-shot SHA256() fetches the algorithm (under a global lock) on every
 * call, which measured 60 ms per 100,000 records of 430 bytes here against 33 ms for a reused
 * context with the digest fetched once. */
static EVP_MD *sha256_md;

static int sha256(EVP_MD_CTX *ctx, const unsigned char *p, size_t n, unsigned char *out)
{
    return EVP_DigestInit_ex2(ctx, sha256_md, NULL) && EVP_DigestUpdate(ctx, p, n)
           && EVP_DigestFinal_ex(ctx, out, NULL);
}

/* ------------------------------------------------------------------ scan_chain */

typedef struct {
    Py_ssize_t pos;     /* offset of the frame in buf */
    uint32_t length;    /* body length */
    uint64_t seq;
    int64_t ts;
    uint64_t bf;
    unsigned char hash[32];
} scanned;

/* The chain state carried from record to record (and across sub-chunks). */
typedef struct {
    uint64_t next_seq;
    int seq_exhausted;          /* next_seq passed 2**64 - 1: no record can carry it */
    unsigned char prev[32];
    int prev_ok;                /* prev_hash was 32 bytes; otherwise nothing continues it */
    uint64_t batch_first;
    int bf_state;               /* 0: unknown (None), 1: known, 2: a value no u64 equals */
} chain;

/* Check up to max records from pos; fills out[], returns how many, updates *pos and *c.
 * Runs without the GIL: touches only buf (whose length bounds every read) and plain C memory. */
static Py_ssize_t scan_some(const unsigned char *buf, Py_ssize_t end, Py_ssize_t *pos_io, chain *c, int v1,
                            scanned *out, Py_ssize_t max, EVP_MD_CTX *ctx, int *sha_failed)
{
    Py_ssize_t pos = *pos_io, n = 0;
    const uint32_t head = v1 ? AL_HEAD_V1 : AL_HEAD_V2;
    while (n < max && end - pos >= AL_FRAME) {
        const unsigned char *f = buf + pos;
        uint32_t length = le32(f), crc = le32(f + 4);
        Py_ssize_t start = pos + AL_FRAME;
        if (length < head || length > AL_MAX_BODY || end - start < (Py_ssize_t)length)
            break;
        const unsigned char *body = buf + start;
        /* CRC32C over the 4 length bytes, then the body (the stored CRC sits between them). */
        uint32_t r = crc_update(0xFFFFFFFFu, f, 4);
        r = crc_update(r, body, length) ^ 0xFFFFFFFFu;
        if (r != crc)
            break;
        uint64_t seq = le64(body), bf = 0;
        int64_t ts = (int64_t)le64(body + 8);
        if (!v1) {
            bf = le64(body + 48);
            if (bf != seq) {
                int ok;
                if (c->bf_state == 1)
                    ok = bf == c->batch_first;
                else if (c->bf_state == 2)
                    ok = 0;
                else
                    ok = bf >= 1 && bf < seq;
                if (!ok)
                    break;
            }
            c->batch_first = bf;
            c->bf_state = 1;
        }
        if (c->seq_exhausted || seq != c->next_seq || !c->prev_ok || memcmp(body + 16, c->prev, 32) != 0)
            break;
        scanned *s = &out[n++];
        s->pos = pos;
        s->length = length;
        s->seq = seq;
        s->ts = ts;
        s->bf = bf;
        if (!sha256(ctx, body, length, s->hash)) {
            *sha_failed = 1;
            n--;
            break;
        }
        memcpy(c->prev, s->hash, 32);
        if (c->next_seq == UINT64_MAX)
            c->seq_exhausted = 1;
        else
            c->next_seq++;
        pos = start + length;
    }
    *pos_io = pos;
    return n;
}

/* Python int -> u64; sets *impossible instead if no u64 equals it (negative or >= 2**64). */
static int as_u64(PyObject *o, uint64_t *v, int *impossible)
{
    *impossible = 0;
    if (!PyLong_Check(o)) {
        PyErr_SetString(PyExc_TypeError, "expected an int");
        return -1;
    }
    int ov = 0;
    long long x = PyLong_AsLongLongAndOverflow(o, &ov);
    if (x == -1 && PyErr_Occurred())
        return -1;
    if (ov < 0 || (ov == 0 && x < 0)) {
        *impossible = 1;
        return 0;
    }
    if (ov == 0) {
        *v = (uint64_t)x;
        return 0;
    }
    unsigned long long y = PyLong_AsUnsignedLongLong(o);
    if (y == (unsigned long long)-1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return -1;
        PyErr_Clear();
        *impossible = 1;
        return 0;
    }
    *v = (uint64_t)y;
    return 0;
}

PyDoc_STRVAR(scan_chain_doc,
"scan_chain(record_type, buf, pos, segment, base, next_seq, prev_hash, limit, version, batch_first)\n"
"--\n\n"
"framing.scan_chain in C (record_type: framing.Record); buf must be bytes.");

/* Payload mode: what replay folds, without a Record per record (see scan_payloads). */
typedef struct {
    PyObject *marks;
    char *pay;              /* msgpack array32 header, then the payloads back to back */
    size_t pay_len, pay_cap;
    int64_t *sq, *tq;       /* seqs and commit times, as array('q') holds them */
    size_t nq, q_cap;
    long long sparse_every;
    scanned last;
    unsigned char last_prev[32], cur_prev[32];
    Py_ssize_t count, pos;
} payloads;

static int payload_add(payloads *p, const unsigned char *buf, const scanned *s, Py_ssize_t head, long long base)
{
    size_t len = (size_t)s->length - (size_t)head;
    if (p->pay_len + len > p->pay_cap) {
        size_t cap = p->pay_cap * 2;
        while (cap < p->pay_len + len)
            cap *= 2;
        char *grown = PyMem_Realloc(p->pay, cap);
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        p->pay = grown;
        p->pay_cap = cap;
    }
    memcpy(p->pay + p->pay_len, buf + s->pos + AL_FRAME + head, len);
    p->pay_len += len;
    if (s->seq > (uint64_t)INT64_MAX) {
        PyErr_SetString(PyExc_OverflowError, "seq does not fit a signed 64-bit int");
        return -1;
    }
    if (p->nq == p->q_cap) {
        size_t cap = p->q_cap ? p->q_cap * 2 : 4096;
        int64_t *sq = PyMem_Realloc(p->sq, cap * sizeof(int64_t));
        if (sq == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        p->sq = sq;
        int64_t *tq = PyMem_Realloc(p->tq, cap * sizeof(int64_t));
        if (tq == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        p->tq = tq;
        p->q_cap = cap;
    }
    p->sq[p->nq] = (int64_t)s->seq;
    p->tq[p->nq++] = s->ts;
    if (s->seq % (uint64_t)p->sparse_every == 1) {
        PyObject *mark = Py_BuildValue("(KL)", (unsigned long long)s->seq, base + (long long)s->pos);
        int err = mark == NULL || PyList_Append(p->marks, mark) < 0;
        Py_XDECREF(mark);
        if (err)
            return -1;
    }
    memcpy(p->last_prev, p->cur_prev, 32);
    memcpy(p->cur_prev, s->hash, 32);
    p->last = *s;
    return 0;
}

static PyObject *scan_common(PyObject *const *args, payloads *pm)
{
    PyObject *rtype_o = args[0], *buf_o = args[1], *segment = args[3], *prev_o = args[6], *bf_o = args[9];
    if (!PyType_Check(rtype_o) || !PyType_IsSubtype((PyTypeObject *)rtype_o, &PyTuple_Type)
        || ((PyTypeObject *)rtype_o)->tp_basicsize != PyTuple_Type.tp_basicsize) {
        PyErr_SetString(PyExc_TypeError, "record_type must be a tuple subclass without extra fields");
        return NULL;
    }
    PyTypeObject *rtype = (PyTypeObject *)rtype_o;
    if (!PyBytes_CheckExact(buf_o) || !PyBytes_CheckExact(prev_o)) {
        PyErr_SetString(PyExc_TypeError, "buf and prev_hash must be bytes");
        return NULL;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[2]);
    if (pos == -1 && PyErr_Occurred())
        return NULL;
    if (pos < 0) {
        PyErr_SetString(PyExc_ValueError, "pos must be >= 0");
        return NULL;
    }
    long long base = PyLong_AsLongLong(args[4]);
    if (base == -1 && PyErr_Occurred())
        return NULL;
    int overflow = 0;
    long long limit_ll = PyLong_AsLongLongAndOverflow(args[7], &overflow);
    if (limit_ll == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t limit = overflow > 0 ? PY_SSIZE_T_MAX : overflow < 0 || limit_ll < 0 ? 0
                       : limit_ll > PY_SSIZE_T_MAX ? PY_SSIZE_T_MAX : (Py_ssize_t)limit_ll;
    long version = PyLong_AsLongAndOverflow(args[8], &overflow);
    if (version == -1 && PyErr_Occurred())
        return NULL;
    int v1 = !overflow && version == 1;

    chain c;
    memset(&c, 0, sizeof c);
    if (as_u64(args[5], &c.next_seq, &c.seq_exhausted) < 0)
        return NULL;
    c.prev_ok = PyBytes_GET_SIZE(prev_o) == 32;
    if (c.prev_ok)
        memcpy(c.prev, PyBytes_AS_STRING(prev_o), 32);
    if (bf_o == Py_None) {
        c.bf_state = 0;
    } else {
        int impossible;
        if (as_u64(bf_o, &c.batch_first, &impossible) < 0)
            return NULL;
        c.bf_state = impossible ? 2 : 1;
    }

    const unsigned char *buf = (const unsigned char *)PyBytes_AS_STRING(buf_o);
    Py_ssize_t end = PyBytes_GET_SIZE(buf_o);
    const Py_ssize_t head = v1 ? AL_HEAD_V1 : AL_HEAD_V2;
    if (pm != NULL)
        memcpy(pm->cur_prev, c.prev, 32);
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    scanned *tmp = PyMem_Malloc(sizeof(scanned) * AL_SUBCHUNK);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();  /* one per call: the scan runs without the GIL */
    if (tmp == NULL || ctx == NULL) {
        PyMem_Free(tmp);
        EVP_MD_CTX_free(ctx);
        Py_DECREF(out);
        return PyErr_NoMemory();
    }
    int sha_failed = 0;
    /* The previous record's hash object: record k's prev_hash is record k-1's hash (equal bytes). */
    PyObject *prev_hash = Py_NewRef(prev_o);
    Py_ssize_t count = 0;
    while (count < limit && pos <= end) {
        Py_ssize_t want = limit - count < AL_SUBCHUNK ? limit - count : AL_SUBCHUNK;
        Py_ssize_t got;
        /* The buffer is an immutable bytes object we hold a reference to. */
        Py_BEGIN_ALLOW_THREADS
        got = scan_some(buf, end, &pos, &c, v1, tmp, want, ctx, &sha_failed);
        Py_END_ALLOW_THREADS
        if (sha_failed) {
            PyErr_SetString(PyExc_RuntimeError, "SHA-256 failed in libcrypto");
            goto fail;
        }
        for (Py_ssize_t k = 0; k < got; k++) {
            scanned *s = &tmp[k];
            if (pm != NULL) {
                if (payload_add(pm, buf, s, head, base) < 0)
                    goto fail;
                continue;
            }
            PyObject *rec = rtype->tp_alloc(rtype, 9);
            if (rec == NULL)
                goto fail;
            PyObject *hash = PyBytes_FromStringAndSize((const char *)s->hash, 32);
            PyObject *payload = PyBytes_FromStringAndSize((const char *)buf + s->pos + AL_FRAME + head,
                                                          (Py_ssize_t)s->length - head);
            PyObject *f0 = PyLong_FromUnsignedLongLong(s->seq);
            PyObject *f1 = PyLong_FromLongLong(s->ts);
            PyObject *f6 = PyLong_FromLongLong(base + (long long)s->pos);
            PyObject *f7 = PyLong_FromLongLong(AL_FRAME + (long long)s->length);
            PyObject *f8 = PyLong_FromUnsignedLongLong(s->bf);
            /* Fill every slot before any check, so one DECREF of rec frees whatever was made. */
            PyTuple_SET_ITEM(rec, 0, f0);
            PyTuple_SET_ITEM(rec, 1, f1);
            PyTuple_SET_ITEM(rec, 2, prev_hash);  /* the reference prev_hash held moves into rec */
            PyTuple_SET_ITEM(rec, 3, hash);
            PyTuple_SET_ITEM(rec, 4, payload);
            PyTuple_SET_ITEM(rec, 5, Py_NewRef(segment));
            PyTuple_SET_ITEM(rec, 6, f6);
            PyTuple_SET_ITEM(rec, 7, f7);
            PyTuple_SET_ITEM(rec, 8, f8);
            prev_hash = NULL;
            if (!hash || !payload || !f0 || !f1 || !f6 || !f7 || !f8) {
                Py_DECREF(rec);
                goto fail;
            }
            prev_hash = Py_NewRef(hash);
            int err = PyList_Append(out, rec);
            Py_DECREF(rec);
            if (err < 0)
                goto fail;
        }
        count += got;
        if (got < want)
            break;
    }
    Py_XDECREF(prev_hash);
    PyMem_Free(tmp);
    EVP_MD_CTX_free(ctx);
    if (pm != NULL && count > 0) {
        /* The last record, whole: the log takes its head from it. */
        scanned *s = &pm->last;
        PyObject *rec = rtype->tp_alloc(rtype, 9);
        if (rec == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(rec, 0, PyLong_FromUnsignedLongLong(s->seq));
        PyTuple_SET_ITEM(rec, 1, PyLong_FromLongLong(s->ts));
        PyTuple_SET_ITEM(rec, 2, PyBytes_FromStringAndSize((const char *)pm->last_prev, 32));
        PyTuple_SET_ITEM(rec, 3, PyBytes_FromStringAndSize((const char *)s->hash, 32));
        PyTuple_SET_ITEM(rec, 4, PyBytes_FromStringAndSize((const char *)buf + s->pos + AL_FRAME + head,
                                                           (Py_ssize_t)s->length - head));
        PyTuple_SET_ITEM(rec, 5, Py_NewRef(segment));
        PyTuple_SET_ITEM(rec, 6, PyLong_FromLongLong(base + (long long)s->pos));
        PyTuple_SET_ITEM(rec, 7, PyLong_FromLongLong(AL_FRAME + (long long)s->length));
        PyTuple_SET_ITEM(rec, 8, PyLong_FromUnsignedLongLong(s->bf));
        for (int i = 0; i < 9; i++) {
            if (PyTuple_GET_ITEM(rec, i) == NULL) {
                Py_DECREF(rec);
                Py_DECREF(out);
                return NULL;
            }
        }
        int err = PyList_Append(out, rec);
        Py_DECREF(rec);
        if (err < 0) {
            Py_DECREF(out);
            return NULL;
        }
    }
    PyObject *pos_o = PyLong_FromSsize_t(pos);
    if (pos_o == NULL) {
        Py_DECREF(out);
        return NULL;
    }
    if (pm != NULL) {
        pm->count = count;
        pm->pos = pos;
    }
    PyObject *res = PyTuple_Pack(2, out, pos_o);
    Py_DECREF(out);
    Py_DECREF(pos_o);
    return res;
fail:
    Py_XDECREF(prev_hash);
    PyMem_Free(tmp);
    EVP_MD_CTX_free(ctx);
    Py_DECREF(out);
    return NULL;
}

static PyObject *scan_chain(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 10) {
        PyErr_SetString(PyExc_TypeError, "scan_chain takes 10 arguments");
        return NULL;
    }
    return scan_common(args, NULL);
}

PyDoc_STRVAR(scan_payloads_doc,
"scan_payloads(record_type, buf, pos, segment, base, next_seq, prev_hash, limit, version, batch_first,\n"
"              sparse_every)\n"
"--\n\n"
"framing.py_scan_payloads in C: scan_chain's records as what replay folds.");

static PyObject *scan_payloads(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 11) {
        PyErr_SetString(PyExc_TypeError, "scan_payloads takes 11 arguments");
        return NULL;
    }
    payloads pm;
    memset(&pm, 0, sizeof pm);
    pm.sparse_every = PyLong_AsLongLong(args[10]);
    if (pm.sparse_every == -1 && PyErr_Occurred())
        return NULL;
    if (pm.sparse_every < 1) {
        PyErr_SetString(PyExc_ValueError, "sparse_every must be >= 1");
        return NULL;
    }
    PyObject *res = NULL, *scanned_res = NULL, *joined = NULL;
    pm.marks = PyList_New(0);
    pm.pay_cap = 1 << 16;
    pm.pay = PyMem_Malloc(pm.pay_cap);
    if (pm.marks == NULL || pm.pay == NULL) {
        if (pm.pay == NULL)
            PyErr_NoMemory();
        goto done;
    }
    pm.pay_len = 5;  /* room for the msgpack array32 header */
    scanned_res = scan_common(args, &pm);
    if (scanned_res == NULL)
        goto done;
    if (pm.count > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "too many records for one msgpack array");
        goto done;
    }
    uint32_t n32 = (uint32_t)pm.count;
    pm.pay[0] = (char)0xdd;
    pm.pay[1] = (char)(n32 >> 24);
    pm.pay[2] = (char)(n32 >> 16);
    pm.pay[3] = (char)(n32 >> 8);
    pm.pay[4] = (char)n32;
    joined = PyBytes_FromStringAndSize(pm.pay, (Py_ssize_t)pm.pay_len);
    if (joined == NULL)
        goto done;
    PyObject *recs = PyTuple_GET_ITEM(scanned_res, 0);
    PyObject *last = PyList_GET_SIZE(recs) ? PyList_GET_ITEM(recs, 0) : Py_None;
    res = Py_BuildValue("(nnOy#y#OO)", pm.count, pm.pos, joined,
                        pm.sq ? (const char *)pm.sq : "", (Py_ssize_t)(pm.nq * 8),
                        pm.tq ? (const char *)pm.tq : "", (Py_ssize_t)(pm.nq * 8), pm.marks, last);
done:
    Py_XDECREF(scanned_res);
    Py_XDECREF(joined);
    PyMem_Free(pm.sq);
    PyMem_Free(pm.tq);
    Py_XDECREF(pm.marks);
    PyMem_Free(pm.pay);
    return res;
}

/* ------------------------------------------------------------------ crc32c (for the tests) */

PyDoc_STRVAR(crc32c_doc,
"crc32c(data, value=0, portable=False)\n"
"--\n\n"
"CRC32C of data continuing from value (as the crc32c package); portable=True forces the table code.");

static PyObject *crc32c_py(PyObject *Py_UNUSED(self), PyObject *args, PyObject *kw)
{
    static char *names[] = {"data", "value", "portable", NULL};
    Py_buffer data;
    unsigned int value = 0;
    int portable = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*|Ip", names, &data, &value, &portable))
        return NULL;
    uint32_t (*f)(uint32_t, const unsigned char *, size_t) = portable ? crc_portable : crc_update;
    uint32_t r = f(value ^ 0xFFFFFFFFu, data.buf, (size_t)data.len) ^ 0xFFFFFFFFu;
    PyBuffer_Release(&data);
    return PyLong_FromUnsignedLong(r);
}

/* ------------------------------------------------------------------ group_rows */

static int get_int32_buffer(PyObject *o, Py_buffer *b, const char *what)
{
    if (PyObject_GetBuffer(o, b, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    if (b->itemsize != 4 || b->format == NULL || (strcmp(b->format, "i") != 0 && strcmp(b->format, "=i") != 0
                                                   && strcmp(b->format, "<i") != 0)) {
        PyBuffer_Release(b);
        PyErr_Format(PyExc_TypeError, "%s must be a buffer of C ints (array('i'))", what);
        return -1;
    }
    return 0;
}

typedef struct {
    int32_t k[3];
    int32_t gid;    /* -1: empty slot */
} slot;

static inline uint64_t mix(const int32_t *k, int nk)
{
    uint64_t h = 0x9E3779B97F4A7C15ull;
    for (int i = 0; i < nk; i++) {
        h ^= (uint32_t)k[i];
        h *= 0xBF58476D1CE4E5B9ull;
        h ^= h >> 31;
    }
    return h;
}

PyDoc_STRVAR(group_rows_doc,
"group_rows(cols, base, off=None, remap=None)\n"
"--\n\n"
"catalog._py_group_rows in C: [(key, rows as int32 bytes), ...] in first-seen order of key.");

static PyObject *group_rows(PyObject *Py_UNUSED(self), PyObject *args, PyObject *kw)
{
    static char *names[] = {"cols", "base", "off", "remap", NULL};
    PyObject *cols, *off_o = Py_None, *remap = Py_None;
    Py_ssize_t base;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!n|OO", names, &PyTuple_Type, &cols, &base, &off_o, &remap))
        return NULL;
    int nk = (int)PyTuple_GET_SIZE(cols);
    if (nk < 1 || nk > 3) {
        PyErr_SetString(PyExc_ValueError, "cols must hold 1 to 3 columns");
        return NULL;
    }
    if (remap != Py_None && (nk != 1 || !PyList_Check(remap))) {
        PyErr_SetString(PyExc_TypeError, "remap must be a list, and needs exactly one column");
        return NULL;
    }
    Py_buffer bufs[3], offb;
    int nb = 0, have_off = 0;
    PyObject *result = NULL;
    int32_t *gid = NULL, *order = NULL, *codes = NULL;
    Py_ssize_t *first = NULL, *fill = NULL, *rowof = NULL;
    slot *table = NULL;
    Py_ssize_t n = -1;
    for (; nb < nk; nb++) {
        if (get_int32_buffer(PyTuple_GET_ITEM(cols, nb), &bufs[nb], "every column") < 0)
            goto done;
        Py_ssize_t len = bufs[nb].len / 4;
        if (n >= 0 && len != n) {
            nb++;
            PyErr_SetString(PyExc_ValueError, "columns differ in length");
            goto done;
        }
        n = len;
    }
    /* rowof[j]: the row of item j (base + j, or found through the offsets). */
    rowof = PyMem_Malloc(sizeof(Py_ssize_t) * (n ? n : 1));
    if (rowof == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (off_o != Py_None) {
        if (PyObject_GetBuffer(off_o, &offb, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0)
            goto done;
        have_off = 1;
        if (offb.itemsize != 8 || offb.format == NULL || (strcmp(offb.format, "q") != 0
                                                           && strcmp(offb.format, "=q") != 0
                                                           && strcmp(offb.format, "<q") != 0)) {
            PyErr_SetString(PyExc_TypeError, "off must be a buffer of int64 (array('q'))");
            goto done;
        }
        const int64_t *off = offb.buf;
        Py_ssize_t m = offb.len / 8 - 1;
        if (m < 0 || off[m] - off[0] != n) {
            PyErr_SetString(PyExc_ValueError, "off must span exactly the items of the columns");
            goto done;
        }
        Py_ssize_t j = 0;
        for (Py_ssize_t i = 0; i < m; i++) {
            int64_t cnt = off[i + 1] - off[i];
            if (cnt < 0 || cnt > n - j) {
                PyErr_SetString(PyExc_ValueError, "off must be ascending");
                goto done;
            }
            for (int64_t q = 0; q < cnt; q++)
                rowof[j++] = base + i;
        }
    } else {
        for (Py_ssize_t j = 0; j < n; j++)
            rowof[j] = base + j;
    }
    for (Py_ssize_t j = 0; j < n; j++) {
        if (rowof[j] > INT32_MAX || rowof[j] < INT32_MIN) {
            PyErr_SetString(PyExc_OverflowError, "row number does not fit a C int");
            goto done;
        }
    }
    if (remap != Py_None) {
        codes = PyMem_Malloc(sizeof(int32_t) * (n ? n : 1));
        if (codes == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        const int32_t *src = bufs[0].buf;
        Py_ssize_t tl = PyList_GET_SIZE(remap);
        for (Py_ssize_t j = 0; j < n; j++) {
            int32_t c = src[j];
            if (c < 0 || c >= tl) {
                PyErr_SetString(PyExc_IndexError, "list index out of range");
                goto done;
            }
            long v = PyLong_AsLong(PyList_GET_ITEM(remap, c));
            if (v == -1 && PyErr_Occurred())
                goto done;
            if (v > INT32_MAX || v < INT32_MIN) {
                PyErr_SetString(PyExc_OverflowError, "remapped code does not fit a C int");
                goto done;
            }
            codes[j] = (int32_t)v;
        }
    }
    Py_ssize_t cap = 16;
    while (cap < 2 * n)
        cap <<= 1;
    table = PyMem_Malloc(sizeof(slot) * cap);
    gid = PyMem_Malloc(sizeof(int32_t) * (n ? n : 1));
    first = PyMem_Malloc(sizeof(Py_ssize_t) * (n ? n : 1));  /* group g: item index where it was first seen */
    if (table == NULL || gid == NULL || first == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < cap; i++)
        table[i].gid = -1;
    Py_ssize_t ng = 0;
    const int32_t *col[3] = {NULL, NULL, NULL};
    for (int i = 0; i < nk; i++)
        col[i] = bufs[i].buf;
    if (codes != NULL)
        col[0] = codes;
    for (Py_ssize_t j = 0; j < n; j++) {
        int32_t k[3] = {0, 0, 0};
        for (int i = 0; i < nk; i++)
            k[i] = col[i][j];
        Py_ssize_t h = (Py_ssize_t)(mix(k, nk) & (uint64_t)(cap - 1));
        for (;;) {
            slot *s = &table[h];
            if (s->gid < 0) {
                memcpy(s->k, k, sizeof k);
                s->gid = (int32_t)ng;
                first[ng++] = j;
                gid[j] = s->gid;
                break;
            }
            if (s->k[0] == k[0] && s->k[1] == k[1] && s->k[2] == k[2]) {
                gid[j] = s->gid;
                break;
            }
            h = (h + 1) & (cap - 1);
        }
    }
    /* Counting sort by group: rows stay in item order within a group. */
    fill = PyMem_Calloc((size_t)ng + 1, sizeof(Py_ssize_t));
    order = PyMem_Malloc(sizeof(int32_t) * (n ? n : 1));
    if (fill == NULL || order == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t j = 0; j < n; j++)
        fill[gid[j] + 1]++;
    for (Py_ssize_t g = 0; g < ng; g++)
        fill[g + 1] += fill[g];
    /* fill[g] is now group g's start; result slices are taken before the scatter moves it. */
    result = PyList_New(ng);
    if (result == NULL)
        goto done;
    for (Py_ssize_t j = 0; j < n; j++)
        order[fill[gid[j]]++] = (int32_t)rowof[j];
    /* After the scatter fill[g] is group g's end, and its start is fill[g - 1] (0 for g = 0). */
    for (Py_ssize_t g = 0; g < ng; g++) {
        Py_ssize_t a = g ? fill[g - 1] : 0, b = fill[g];
        Py_ssize_t j = first[g];
        PyObject *key;
        if (nk == 1) {
            key = PyLong_FromLong(col[0][j]);
        } else {
            key = PyTuple_New(nk);
            if (key != NULL) {
                for (int i = 0; i < nk; i++) {
                    PyObject *v = PyLong_FromLong(col[i][j]);
                    if (v == NULL) {
                        Py_CLEAR(key);
                        break;
                    }
                    PyTuple_SET_ITEM(key, i, v);
                }
            }
        }
        if (key == NULL)
            goto fail;
        PyObject *rows = PyBytes_FromStringAndSize((const char *)(order + a), (b - a) * 4);
        if (rows == NULL) {
            Py_DECREF(key);
            goto fail;
        }
        PyObject *pair = PyTuple_New(2);
        if (pair == NULL) {
            Py_DECREF(key);
            Py_DECREF(rows);
            goto fail;
        }
        PyTuple_SET_ITEM(pair, 0, key);
        PyTuple_SET_ITEM(pair, 1, rows);
        PyList_SET_ITEM(result, g, pair);
    }
    goto done;
fail:
    Py_CLEAR(result);
done:
    for (int i = 0; i < nb; i++)
        PyBuffer_Release(&bufs[i]);
    if (have_off)
        PyBuffer_Release(&offb);
    PyMem_Free(rowof);
    PyMem_Free(codes);
    PyMem_Free(table);
    PyMem_Free(gid);
    PyMem_Free(first);
    PyMem_Free(fill);
    PyMem_Free(order);
    return result;
}

/* ------------------------------------------------------------------ intern */

#define IC_SLOTS 64
typedef struct {
    PyObject *v;  /* an exact, ready str (a strong reference), or NULL */
    int32_t code;
} icache;

/* A cheap slot from the length and three characters: no pass over the whole string. */
static inline Py_ssize_t ic_slot(PyObject *v)
{
    Py_ssize_t len = PyUnicode_GET_LENGTH(v);
    if (len == 0)
        return 0;
    int kind = PyUnicode_KIND(v);
    const void *d = PyUnicode_DATA(v);
    Py_UCS4 a = PyUnicode_READ(kind, d, 0), b = PyUnicode_READ(kind, d, len - 1), m = PyUnicode_READ(kind, d, len / 2);
    return (Py_ssize_t)(((size_t)len * 0x9E37u ^ a * 131u ^ b * 31u ^ m * 7u) & (IC_SLOTS - 1));
}

/* Equal exact strs (both ready): same length, same kind, same code units. */
static inline int ic_equal(PyObject *a, PyObject *b)
{
    Py_ssize_t len = PyUnicode_GET_LENGTH(a);
    return len == PyUnicode_GET_LENGTH(b) && PyUnicode_KIND(a) == PyUnicode_KIND(b)
           && memcmp(PyUnicode_DATA(a), PyUnicode_DATA(b), (size_t)len * PyUnicode_KIND(a)) == 0;
}

static void ic_clear(icache *cache)
{
    for (int i = 0; i < IC_SLOTS; i++)
        Py_CLEAR(cache[i].v);
}

/* v's code in ids (str -> code), appending v to strs with the next code when new: the interning rule
 * of catalog._py_intern. */
static int str_code(PyObject *ids, PyObject *strs, PyObject *v, int32_t *out)
{
    PyObject *code = PyDict_GetItemWithError(ids, v);
    if (code == NULL) {
        if (PyErr_Occurred())
            return -1;
        Py_ssize_t next = PyList_GET_SIZE(strs);
        if (next > INT32_MAX) {
            PyErr_SetString(PyExc_OverflowError, "too many strings for a C int code");
            return -1;
        }
        PyObject *c = PyLong_FromSsize_t(next);
        if (c == NULL || PyDict_SetItem(ids, v, c) < 0 || PyList_Append(strs, v) < 0) {
            Py_XDECREF(c);
            return -1;
        }
        Py_DECREF(c);
        *out = (int32_t)next;
        return 0;
    }
    long c = PyLong_AsLong(code);
    if (c == -1 && PyErr_Occurred())
        return -1;
    if (c > INT32_MAX || c < INT32_MIN) {
        PyErr_SetString(PyExc_OverflowError, "string code does not fit a C int");
        return -1;
    }
    *out = (int32_t)c;
    return 0;
}

PyDoc_STRVAR(intern_doc,
"intern(values, attr, str_ids, strs)\n"
"--\n\n"
"catalog._py_intern in C: int32 codes (bytes) of getattr(v, attr) (v itself if attr is None) for v in values.");

static PyObject *intern_codes(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "intern takes 4 arguments");
        return NULL;
    }
    PyObject *values = args[0], *attr = args[1], *ids = args[2], *strs = args[3];
    if (!PyList_Check(values) || !PyDict_CheckExact(ids) || !PyList_CheckExact(strs)
        || (attr != Py_None && !PyUnicode_Check(attr))) {
        PyErr_SetString(PyExc_TypeError, "intern(list, str | None, dict, list)");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(values);
    PyObject *out = PyBytes_FromStringAndSize(NULL, n * 4);
    if (out == NULL)
        return NULL;
    int32_t *codes = (int32_t *)PyBytes_AS_STRING(out);
    /* Rows repeat a few values (kinds, runs, nodes): an exact str equal to one seen recently is
     * the same dict key, and comparing it skips hashing a fresh string object. */
    icache cache[IC_SLOTS];
    memset(cache, 0, sizeof cache);
    int32_t none_code = -1;
    attr_slot at = {NULL, -1};
    for (Py_ssize_t j = 0; j < n; j++) {
        PyObject *item = PyList_GET_ITEM(values, j);  /* borrowed; values is not changed below */
        PyObject *v = attr == Py_None ? Py_NewRef(item) : get_attr(item, attr, &at);
        if (v == NULL)
            goto fail;
        Py_ssize_t slot = -1;
        if (v == Py_None && none_code >= 0) {
            codes[j] = none_code;
            Py_DECREF(v);
            continue;
        }
        if (PyUnicode_CheckExact(v) && PyUnicode_IS_READY(v)) {
            slot = ic_slot(v);
            if (cache[slot].v != NULL && ic_equal(cache[slot].v, v)) {
                codes[j] = cache[slot].code;
                Py_DECREF(v);
                continue;
            }
        }
        if (str_code(ids, strs, v, &codes[j]) < 0) {
            Py_DECREF(v);
            goto fail;
        }
        if (slot >= 0) {
            Py_XSETREF(cache[slot].v, v);  /* the cache takes the reference */
            cache[slot].code = codes[j];
            continue;
        }
        if (v == Py_None)
            none_code = codes[j];
        Py_DECREF(v);
    }
    ic_clear(cache);
    return out;
fail:
    ic_clear(cache);
    Py_DECREF(out);
    return NULL;
}

PyDoc_STRVAR(lookup_doc,
"lookup(values, table)\n"
"--\n\n"
"catalog._py_lookup in C: (int32 codes of values in table as bytes, -1 where missing; missing indexes).");

static PyObject *lookup(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyList_Check(args[0]) || !PyDict_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "lookup(list, dict)");
        return NULL;
    }
    PyObject *values = args[0], *table = args[1];
    Py_ssize_t n = PyList_GET_SIZE(values);
    PyObject *out = PyBytes_FromStringAndSize(NULL, n * 4), *missing = PyList_New(0);
    if (out == NULL || missing == NULL)
        goto fail;
    int32_t *codes = (int32_t *)PyBytes_AS_STRING(out);
    for (Py_ssize_t j = 0; j < n; j++) {
        PyObject *code = PyDict_GetItemWithError(table, PyList_GET_ITEM(values, j));
        if (code == NULL) {
            if (PyErr_Occurred())
                goto fail;
            codes[j] = -1;
            PyObject *jj = PyLong_FromSsize_t(j);
            if (jj == NULL || PyList_Append(missing, jj) < 0) {
                Py_XDECREF(jj);
                goto fail;
            }
            Py_DECREF(jj);
            continue;
        }
        long c = PyLong_AsLong(code);
        if (c == -1 && PyErr_Occurred())
            goto fail;
        if (c > INT32_MAX || c < INT32_MIN) {
            PyErr_SetString(PyExc_OverflowError, "code does not fit a C int");
            goto fail;
        }
        codes[j] = (int32_t)c;
    }
    PyObject *res = PyTuple_Pack(2, out, missing);
    Py_DECREF(out);
    Py_DECREF(missing);
    return res;
fail:
    Py_XDECREF(out);
    Py_XDECREF(missing);
    return NULL;
}

/* ------------------------------------------------------------------ columns */

static PyObject *s_artifact_id, *s_size, *s_sha256, *s_pinned, *s_labels, *s_metrics, *s_derived_from;

/* Appends the running end offsets (int64) to a bytes buffer being filled. */
static int put_end(PyObject *buf, Py_ssize_t j, int64_t end)
{
    memcpy(PyBytes_AS_STRING(buf) + j * 8, &end, 8);
    return 0;
}

PyDoc_STRVAR(columns_doc,
"columns(evs, label_start, metric_start)\n"
"--\n\n"
"catalog._py_columns in C: the per-artifact fields of a list of ArtifactRecorded, column by column.");

static PyObject *columns(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "columns(list, int, int)");
        return NULL;
    }
    PyObject *evs = args[0];
    long long lpos = PyLong_AsLongLong(args[1]);
    if (lpos == -1 && PyErr_Occurred())
        return NULL;
    long long mpos = PyLong_AsLongLong(args[2]);
    if (mpos == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(evs);
    PyObject *ids = PyList_New(n), *shas = PyList_New(n);
    PyObject *sizes = PyBytes_FromStringAndSize(NULL, n * 8), *pins = PyBytes_FromStringAndSize(NULL, n);
    PyObject *lends = PyBytes_FromStringAndSize(NULL, n * 8), *mends = PyBytes_FromStringAndSize(NULL, n * 8);
    PyObject *items = PyList_New(0), *types = PySet_New(NULL), *mnames = PyList_New(0), *mvals = PyList_New(0);
    PyObject *derived = PyList_New(0);
    PyObject *res = NULL;
    if (!ids || !shas || !sizes || !pins || !lends || !mends || !items || !types || !mnames || !mvals || !derived)
        goto done;
    attr_slot at_artifact_id = {NULL, -1}, at_sha256 = {NULL, -1}, at_size = {NULL, -1}, at_pinned = {NULL, -1},
              at_labels = {NULL, -1}, at_metrics = {NULL, -1}, at_derived_from = {NULL, -1};
    for (Py_ssize_t j = 0; j < n; j++) {
        PyObject *ev = PyList_GET_ITEM(evs, j);
        PyObject *v = get_attr(ev, s_artifact_id, &at_artifact_id);
        if (v == NULL)
            goto done;
        PyList_SET_ITEM(ids, j, v);
        v = get_attr(ev, s_sha256, &at_sha256);
        if (v == NULL)
            goto done;
        PyList_SET_ITEM(shas, j, v);
        v = get_attr(ev, s_size, &at_size);
        if (v == NULL)
            goto done;
        long long size = PyLong_AsLongLong(v);
        Py_DECREF(v);
        if (size == -1 && PyErr_Occurred())
            goto done;
        memcpy(PyBytes_AS_STRING(sizes) + j * 8, &size, 8);
        v = get_attr(ev, s_pinned, &at_pinned);
        if (v == NULL)
            goto done;
        long pin = PyLong_AsLong(v);
        Py_DECREF(v);
        if (pin == -1 && PyErr_Occurred())
            goto done;
        if (pin < 0 || pin > 255) {
            PyErr_SetString(PyExc_ValueError, "byte must be in range(0, 256)");
            goto done;
        }
        PyBytes_AS_STRING(pins)[j] = (char)pin;

        PyObject *labels = get_attr(ev, s_labels, &at_labels);
        if (labels == NULL)
            goto done;
        if (!PyDict_Check(labels)) {
            Py_DECREF(labels);
            PyErr_SetString(PyExc_TypeError, "labels must be a dict");
            goto done;
        }
        Py_ssize_t it = 0;
        PyObject *k, *val;
        while (PyDict_Next(labels, &it, &k, &val)) {
            PyObject *pair = PyTuple_Pack(2, k, val);
            if (pair == NULL || PyList_Append(items, pair) < 0 || PySet_Add(types, (PyObject *)Py_TYPE(val)) < 0) {
                Py_XDECREF(pair);
                Py_DECREF(labels);
                goto done;
            }
            Py_DECREF(pair);
        }
        lpos += PyDict_GET_SIZE(labels);
        Py_DECREF(labels);
        put_end(lends, j, lpos);

        PyObject *metrics = get_attr(ev, s_metrics, &at_metrics);
        if (metrics == NULL)
            goto done;
        if (!PyDict_Check(metrics)) {
            Py_DECREF(metrics);
            PyErr_SetString(PyExc_TypeError, "metrics must be a dict");
            goto done;
        }
        it = 0;
        while (PyDict_Next(metrics, &it, &k, &val)) {
            if (PyList_Append(mnames, k) < 0 || PyList_Append(mvals, val) < 0) {
                Py_DECREF(metrics);
                goto done;
            }
        }
        mpos += PyDict_GET_SIZE(metrics);
        Py_DECREF(metrics);
        put_end(mends, j, mpos);

        PyObject *df = get_attr(ev, s_derived_from, &at_derived_from);
        if (df == NULL)
            goto done;
        int truth = PyObject_IsTrue(df);
        Py_DECREF(df);
        if (truth < 0)
            goto done;
        if (truth) {
            PyObject *jj = PyLong_FromSsize_t(j);
            if (jj == NULL || PyList_Append(derived, jj) < 0) {
                Py_XDECREF(jj);
                goto done;
            }
            Py_DECREF(jj);
        }
    }
    res = PyTuple_Pack(11, ids, sizes, shas, pins, items, types, lends, mnames, mvals, mends, derived);
done:
    Py_XDECREF(ids);
    Py_XDECREF(shas);
    Py_XDECREF(sizes);
    Py_XDECREF(pins);
    Py_XDECREF(lends);
    Py_XDECREF(mends);
    Py_XDECREF(items);
    Py_XDECREF(types);
    Py_XDECREF(mnames);
    Py_XDECREF(mvals);
    Py_XDECREF(derived);
    return res;
}

/* ------------------------------------------------------------------ payload_columns */

/* Replay's fold straight from a scanned chunk: the msgpack array of its events is read here, field
 * by field, into the columns _columns_only builds from decoded ArtifactRecorded structs, so no
 * struct, no field string and no labels dict is made per event. Only the encodings msgspec makes of
 * current events are taken (any key order, optional fields left out); anything else -- another event
 * type or version, an unknown or repeated key, a bin or ext value, a bool or list label value, a
 * repeated or already known id, bad UTF-8 -- makes it answer None having changed nothing, and the
 * general decoder then folds or refuses the chunk exactly as before. */

enum { MP_NIL, MP_FALSE, MP_TRUE, MP_INT, MP_UINT, MP_F64, MP_STR, MP_ARRAY, MP_MAP };

typedef struct {
    int t;
    int64_t i;                  /* MP_INT: the value (fits int64) */
    uint64_t u;                 /* MP_UINT: a value above INT64_MAX */
    double f;                   /* MP_F64 (a float32 widened) */
    const unsigned char *s;     /* MP_STR: its bytes */
    uint32_t n;                 /* MP_STR: byte length; MP_ARRAY, MP_MAP: item count */
} mpv;

static inline uint16_t be16(const unsigned char *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint64_t be64(const unsigned char *p) { return (uint64_t)be32(p) << 32 | be32(p + 4); }

/* One value's header at *pp (a str whole; only the count of an array or map), advancing *pp.
 * -1: truncated, or a type this path leaves to the general decoder (bin, ext, the unused byte). */
static inline __attribute__((always_inline)) int mp_read(const unsigned char **pp, const unsigned char *end, mpv *v)
{
    const unsigned char *p = *pp;
    if (p >= end)
        return -1;
    unsigned char b = *p++;
    size_t avail = (size_t)(end - p), len;
    if (b <= 0x7f) {
        v->t = MP_INT;
        v->i = b;
    } else if (b >= 0xe0) {
        v->t = MP_INT;
        v->i = (int8_t)b;
    } else if ((b & 0xe0) == 0xa0) {
        len = b & 0x1f;
        goto str;
    } else if ((b & 0xf0) == 0x90) {
        v->t = MP_ARRAY;
        v->n = b & 0x0f;
    } else if ((b & 0xf0) == 0x80) {
        v->t = MP_MAP;
        v->n = b & 0x0f;
    } else {
        static const unsigned char width[32] = {
            /* c0..cf */ 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 8, 1, 2, 4, 8,
            /* d0..df */ 1, 2, 4, 8, 0, 0, 0, 0, 0, 1, 2, 4, 2, 4, 2, 4};
        size_t w = width[b - 0xc0];
        if (avail < w)
            return -1;
        switch (b) {
        case 0xc0: v->t = MP_NIL; break;
        case 0xc2: v->t = MP_FALSE; break;
        case 0xc3: v->t = MP_TRUE; break;
        case 0xcc: v->t = MP_INT; v->i = p[0]; break;
        case 0xcd: v->t = MP_INT; v->i = be16(p); break;
        case 0xce: v->t = MP_INT; v->i = be32(p); break;
        case 0xcf: {
            uint64_t u = be64(p);
            if (u > (uint64_t)INT64_MAX) {
                v->t = MP_UINT;
                v->u = u;
            } else {
                v->t = MP_INT;
                v->i = (int64_t)u;
            }
            break;
        }
        case 0xd0: v->t = MP_INT; v->i = (int8_t)p[0]; break;
        case 0xd1: v->t = MP_INT; v->i = (int16_t)be16(p); break;
        case 0xd2: v->t = MP_INT; v->i = (int32_t)be32(p); break;
        case 0xd3: v->t = MP_INT; v->i = (int64_t)be64(p); break;
        case 0xca: {
            uint32_t x = be32(p);
            float f;
            memcpy(&f, &x, 4);
            v->t = MP_F64;
            v->f = f;
            break;
        }
        case 0xcb: {
            uint64_t x = be64(p);
            memcpy(&v->f, &x, 8);
            v->t = MP_F64;
            break;
        }
        case 0xd9: len = p[0]; p += 1; goto str;
        case 0xda: len = be16(p); p += 2; goto str;
        case 0xdb: len = be32(p); p += 4; goto str;
        case 0xdc: v->t = MP_ARRAY; v->n = be16(p); break;
        case 0xdd: v->t = MP_ARRAY; v->n = be32(p); break;
        case 0xde: v->t = MP_MAP; v->n = be16(p); break;
        case 0xdf: v->t = MP_MAP; v->n = be32(p); break;
        default: return -1;
        }
        p += w;
    }
    *pp = p;
    return 0;
str:
    if ((size_t)(end - p) < len)
        return -1;
    v->t = MP_STR;
    v->s = p;
    v->n = (uint32_t)len;
    *pp = p + len;
    return 0;
}

/* Strict UTF-8, as CPython's decoder takes it (no overlong forms, no surrogates, at most U+10FFFF). */
static int utf8_check(const unsigned char *s, size_t n);

/* Whether no byte has its high bit set: one pass of word ORs. */
static inline int is_ascii(const unsigned char *s, size_t n)
{
    size_t i = 0;
    uint64_t high = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        high |= w;
    }
    for (; i < n; i++)
        high |= s[i];
    return !(high & 0x8080808080808080ull);
}

/* Most strings are ASCII: the full check only for the others. */
static inline int utf8_ok(const unsigned char *s, size_t n) { return is_ascii(s, n) || utf8_check(s, n); }

static int utf8_check(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        if (n - i >= 8) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (!(w & 0x8080808080808080ull)) {
                i += 8;
                continue;
            }
        }
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t more;
        uint32_t cp;
        if (c >= 0xc2 && c <= 0xdf) {
            more = 1;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            more = 2;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            more = 3;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if (n - i - 1 < more)
            return 0;
        for (size_t k = 1; k <= more; k++) {
            unsigned char d = s[i + k];
            if ((d & 0xc0) != 0x80)
                return 0;
            cp = cp << 6 | (d & 0x3f);
        }
        if ((more == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) || (more == 3 && (cp < 0x10000 || cp > 0x10ffff)))
            return 0;
        i += more + 1;
    }
    return 1;
}

static int str_ok(const mpv *v) { return v->t == MP_STR && utf8_ok(v->s, v->n); }

/* A str value from bytes already checked by utf8_ok. */
static PyObject *make_str(const unsigned char *s, uint32_t n)
{
    if (!is_ascii(s, n))
        return PyUnicode_DecodeUTF8((const char *)s, (Py_ssize_t)n, NULL);
    PyObject *o = PyUnicode_New((Py_ssize_t)n, 127);
    if (o != NULL)
        memcpy(PyUnicode_DATA(o), s, n);
    return o;
}

/* A label or metric scalar as msgspec's Any decodes it (ints, floats, strs, None). */
static PyObject *make_scalar(const mpv *v)
{
    switch (v->t) {
    case MP_NIL: return Py_NewRef(Py_None);
    case MP_INT: return PyLong_FromLongLong(v->i);
    case MP_UINT: return PyLong_FromUnsignedLongLong(v->u);
    case MP_F64: return PyFloat_FromDouble(v->f);
    case MP_STR: return make_str(v->s, v->n);
    default:
        PyErr_SetString(PyExc_SystemError, "make_scalar: not a scalar");
        return NULL;
    }
}

static inline int same_bytes(const unsigned char *a, const unsigned char *b, uint32_t n)
{
    uint32_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t x, y;
        memcpy(&x, a + i, 8);
        memcpy(&y, b + i, 8);
        if (x != y)
            return 0;
    }
    for (; i < n; i++)
        if (a[i] != b[i])
            return 0;
    return 1;
}

/* Byte strings seen in this call -> their code (an interned string, or a label pair's id). */
typedef struct {
    uint64_t h;
    const unsigned char *s;     /* NULL: an empty slot */
    uint32_t n;
    int32_t code;               /* -1: a label pair not yet in pair_ids (key, item below) */
    PyObject *key, *item;       /* strong references, for such a pair */
} sslot;

typedef struct {
    sslot *slots;
    size_t cap, used;
} stable;

static inline uint64_t span_hash(const unsigned char *s, size_t n)
{
    uint64_t h = 0x9E3779B97F4A7C15ull ^ n;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdull;
        h ^= h >> 32;
        s += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, s, n);
    h = (h ^ w) * 0xc4ceb9fe1a85ec53ull;
    return h ^ (h >> 29);
}

static void st_free(stable *t)
{
    for (size_t i = 0; i < t->cap; i++) {
        Py_XDECREF(t->slots[i].key);
        Py_XDECREF(t->slots[i].item);
    }
    PyMem_Free(t->slots);
    t->slots = NULL;
    t->cap = t->used = 0;
}

/* The slot for s: its entry, or the empty slot where it goes (NULL with MemoryError set). */
static sslot *st_find(stable *t, const unsigned char *s, uint32_t n, uint64_t h)
{
    if (2 * (t->used + 1) > t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 256;
        sslot *fresh = PyMem_Calloc(cap, sizeof(sslot));
        if (fresh == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        for (size_t i = 0; i < t->cap; i++) {
            sslot *o = &t->slots[i];
            if (o->s == NULL)
                continue;
            size_t k = (size_t)o->h & (cap - 1);
            while (fresh[k].s != NULL)
                k = (k + 1) & (cap - 1);
            fresh[k] = *o;
        }
        PyMem_Free(t->slots);
        t->slots = fresh;
        t->cap = cap;
    }
    size_t k = (size_t)h & (t->cap - 1);
    for (;;) {
        sslot *e = &t->slots[k];
        if (e->s == NULL || (e->h == h && e->n == n && same_bytes(e->s, s, n)))
            return e;
        k = (k + 1) & (t->cap - 1);
    }
}

/* Code of a str (or None when s is NULL) in str_ids, appending it to strs when new: catalog._py_intern's rule. */
static int intern_span(stable *t, const unsigned char *s, uint32_t n, PyObject *ids, PyObject *strs,
                       int32_t *none_code, int32_t *out)
{
    if (s == NULL && *none_code >= 0) {
        *out = *none_code;
        return 0;
    }
    sslot *e = NULL;
    uint64_t h = 0;
    if (s != NULL) {
        h = span_hash(s, n);
        e = st_find(t, s, n, h);
        if (e == NULL)
            return -1;
        if (e->s != NULL) {
            *out = e->code;
            return 0;
        }
    }
    PyObject *v = s == NULL ? Py_NewRef(Py_None) : make_str(s, n);
    if (v == NULL)
        return -1;
    int32_t c;
    int err = str_code(ids, strs, v, &c);
    Py_DECREF(v);
    if (err < 0)
        return -1;
    *out = c;
    if (s == NULL) {
        *none_code = c;
    } else {
        e->h = h;
        e->s = s;
        e->n = n;
        e->code = c;
        t->used++;
    }
    return 0;
}

/* The artifact fields this path reads, in _columns_only's interning order for the first nine. */
enum {
    F_KIND, F_MIME, F_ORIGIN, F_RUN, F_GRAPH, F_NODE, F_PROJECT, F_NAME, F_SUGGESTED,
    F_ID, F_SHA, F_SIZE, F_LABELS, F_METRICS, F_PINNED, F_DERIVED, F_V, N_FIELDS
};
static const char *const field_names[N_FIELDS] = {
    "kind", "mime", "origin", "run_id", "graph_id", "node_id", "project_id", "name", "suggested_uri",
    "artifact_id", "sha256", "size", "labels", "metrics", "pinned", "derived_from", "v"};
/* Fields that must be present (the others have defaults). */
#define ART_REQUIRED ((1u << F_KIND) | (1u << F_MIME) | (1u << F_ORIGIN) | (1u << F_RUN) | (1u << F_GRAPH) \
                      | (1u << F_NODE) | (1u << F_ID) | (1u << F_SHA) | (1u << F_SIZE))
#define PIN_FIELDS ((1u << F_ID) | (1u << F_PINNED) | (1u << F_V))
#define PIN_REQUIRED ((1u << F_ID) | (1u << F_PINNED))

static uint32_t field_len[N_FIELDS];

/* Field names as two little-endian words each (zero padded) and the masks of their lengths. */
static uint64_t field_word[N_FIELDS][2], field_mask[N_FIELDS][2];

static void field_words_init(void)
{
    for (int f = 0; f < N_FIELDS; f++) {
        unsigned char pad[16] = {0}, mask[16] = {0};
        size_t len = strlen(field_names[f]);
        memcpy(pad, field_names[f], len);
        memset(mask, 0xff, len);
        memcpy(field_word[f], pad, 16);
        memcpy(field_mask[f], mask, 16);
        field_len[f] = (uint32_t)len;
    }
}

/* Whether key k is field f's name: two masked word compares where 16 bytes can be read (a key is
 * always followed by its value, so this is most of them), else byte by byte. */
static inline int name_is(int f, const mpv *k, const unsigned char *end)
{
    if (field_len[f] != k->n)
        return 0;
    if (end - k->s >= 16) {
        uint64_t w[2];
        memcpy(w, k->s, 16);
        return (w[0] & field_mask[f][0]) == field_word[f][0] && (w[1] & field_mask[f][1]) == field_word[f][1];
    }
    const char *name = field_names[f];
    for (uint32_t i = 0; i < k->n; i++)
        if ((unsigned char)name[i] != k->s[i])
            return 0;
    return 1;
}

/* The field a key names, or -1. msgspec writes fields in declaration order, so the one after the
 * previous key (*hint) is tried first. */
static int field_of(const mpv *k, int *hint, const unsigned char *end)
{
    static const int8_t after[N_FIELDS] = {
        /* kind -> */ F_SHA, /* mime -> */ F_LABELS, /* origin -> */ F_KIND, /* run_id -> */ F_GRAPH,
        /* graph_id -> */ F_NODE, /* node_id -> */ F_PROJECT, /* project_id -> */ F_SUGGESTED,
        /* name -> */ F_DERIVED, /* suggested_uri -> */ F_NAME, /* artifact_id -> */ F_ORIGIN,
        /* sha256 -> */ F_SIZE, /* size -> */ F_MIME, /* labels -> */ F_METRICS, /* metrics -> */ F_PINNED,
        /* pinned -> */ F_RUN, /* derived_from -> */ F_V, /* v -> */ F_ID};
    int f = *hint;
    if (f < 0 || !name_is(f, k, end)) {
        for (f = 0; f < N_FIELDS && !name_is(f, k, end); f++)
            ;
        if (f == N_FIELDS)
            return -1;
    }
    *hint = after[f];
    return f;
}

typedef struct {
    int is_pin;
    const unsigned char *str[9];   /* NULL: None */
    uint32_t len[9];
    const unsigned char *id;
    uint32_t id_len;
    unsigned char sha[32];          /* the sha256 field's bytes (it holds 64 hex digits) */
    int64_t size;
    int pinned;
    const unsigned char *labels, *metrics, *derived;  /* the first item of each (NULL: none) */
    uint32_t n_labels, n_metrics, n_derived;
} pevent;

/* Hex digit values (-1: not a hex digit), filled at import. */
static int8_t hex_value[256];

static inline int hexval(unsigned char c) { return hex_value[c]; }

/* Reads one event map at *pp into e; 0, or 1 if this path does not take it (nothing is set for Python). */
static int parse_event(const unsigned char **pp, const unsigned char *end, pevent *e)
{
    const unsigned char *p = *pp;
    mpv m = {0}, k = {0}, v = {0};
    if (mp_read(&p, end, &m) < 0 || m.t != MP_MAP || m.n < 1)
        return 1;
    if (mp_read(&p, end, &k) < 0 || k.t != MP_STR || k.n != 4 || memcmp(k.s, "type", 4) != 0
        || mp_read(&p, end, &v) < 0 || v.t != MP_STR)
        return 1;
    /* What may be left out gets its default; the rest is required and checked below. */
    e->str[F_PROJECT] = e->str[F_NAME] = e->str[F_SUGGESTED] = NULL;
    e->len[F_PROJECT] = e->len[F_NAME] = e->len[F_SUGGESTED] = 0;
    e->pinned = 0;
    e->labels = e->metrics = e->derived = NULL;
    e->n_labels = e->n_metrics = e->n_derived = 0;
    if (v.n == 17 && memcmp(v.s, "artifact.recorded", 17) == 0)
        e->is_pin = 0;
    else if (v.n == 12 && memcmp(v.s, "artifact.pin", 12) == 0)
        e->is_pin = 1;
    else
        return 1;
    unsigned seen = 0;
    int hint = F_V;
    for (uint32_t i = 1; i < m.n; i++) {
        if (mp_read(&p, end, &k) < 0 || k.t != MP_STR)
            return 1;
        int f = field_of(&k, &hint, end);
        if (f < 0 || (seen & (1u << f)) || (e->is_pin && !((1u << f) & PIN_FIELDS)))
            return 1;
        seen |= 1u << f;
        if (mp_read(&p, end, &v) < 0)
            return 1;
        if (f <= F_SUGGESTED) {
            if (v.t == MP_NIL && (f == F_PROJECT || f == F_NAME || f == F_SUGGESTED))
                continue;
            if (!str_ok(&v))
                return 1;
            e->str[f] = v.s;
            e->len[f] = v.n;
            continue;
        }
        switch (f) {
        case F_V:
            if (v.t != MP_INT || v.i != 1)
                return 1;  /* another schema version: upcast (or refused) by the general path */
            break;
        case F_ID:
            if (!str_ok(&v))
                return 1;
            e->id = v.s;
            e->id_len = v.n;
            break;
        case F_SHA:
            if (v.t != MP_STR || v.n != 64)
                return 1;
            {
                int bad = 0;
                for (int j = 0; j < 32; j++) {
                    int hi = hexval(v.s[2 * j]), lo = hexval(v.s[2 * j + 1]);
                    bad |= hi | lo;  /* a non-digit is -1: sets the sign bit */
                    e->sha[j] = (unsigned char)(hi << 4 | lo);
                }
                if (bad < 0)
                    return 1;
            }
            break;
        case F_SIZE:
            if (v.t != MP_INT)
                return 1;
            e->size = v.i;
            break;
        case F_PINNED:
            if (v.t != MP_TRUE && v.t != MP_FALSE)
                return 1;
            e->pinned = v.t == MP_TRUE;
            break;
        case F_LABELS:
        case F_METRICS:
            if (v.t != MP_MAP)
                return 1;
            if (f == F_LABELS) {
                e->labels = p;
                e->n_labels = v.n;
            } else {
                e->metrics = p;
                e->n_metrics = v.n;
            }
            /* Keys are distinct strs; values scalars (metrics: numbers; labels: no bools, which take the
             * strict-key path) -- checked now so that nothing below can fail on the data. A map with
             * repeated keys is left to the general decoder: the pairwise check is bounded. */
            if (v.n > 64)
                return 1;
            {
                const unsigned char *keys[64];
                uint32_t klen[64];
                for (uint32_t j = 0; j < v.n; j++) {
                    mpv kk, vv;
                    if (mp_read(&p, end, &kk) < 0 || !str_ok(&kk) || mp_read(&p, end, &vv) < 0)
                        return 1;
                    if (f == F_METRICS ? (vv.t != MP_INT && vv.t != MP_UINT && vv.t != MP_F64)
                                       : (vv.t != MP_NIL && vv.t != MP_INT && vv.t != MP_UINT && vv.t != MP_F64
                                          && !str_ok(&vv)))
                        return 1;
                    for (uint32_t q = 0; q < j; q++)
                        if (klen[q] == kk.n && memcmp(keys[q], kk.s, kk.n) == 0)
                            return 1;
                    keys[j] = kk.s;
                    klen[j] = kk.n;
                }
            }
            break;
        case F_DERIVED:
            if (v.t != MP_ARRAY)
                return 1;
            e->derived = p;
            e->n_derived = v.n;
            for (uint32_t j = 0; j < v.n; j++) {
                mpv s;
                if (mp_read(&p, end, &s) < 0 || !str_ok(&s))
                    return 1;
            }
            break;
        }
    }
    if ((seen & (e->is_pin ? PIN_REQUIRED : ART_REQUIRED)) != (e->is_pin ? PIN_REQUIRED : ART_REQUIRED))
        return 1;
    if (e->n_labels == 0)
        e->labels = NULL;
    if (e->n_metrics == 0)
        e->metrics = NULL;
    if (e->n_derived == 0)
        e->derived = NULL;
    *pp = p;
    return 0;
}

static PyObject *s_f;  /* "f": the tag of a float label value's strict key */

/* The strict key and the recorded item of a label (catalog._columns_only's keys and items). */
static int label_objects(const mpv *k, const mpv *v, PyObject **key, PyObject **item)
{
    PyObject *ko = make_str(k->s, k->n), *vo = make_scalar(v), *strict = NULL;
    *key = *item = NULL;
    if (ko == NULL || vo == NULL)
        goto done;
    *item = PyTuple_Pack(2, ko, vo);
    if (*item == NULL)
        goto done;
    if (v->t == MP_F64) {
        strict = PyTuple_Pack(2, s_f, vo);
        if (strict == NULL)
            goto done;
        *key = PyTuple_Pack(2, ko, strict);
    } else {
        *key = Py_NewRef(*item);
    }
done:
    Py_XDECREF(ko);
    Py_XDECREF(vo);
    Py_XDECREF(strict);
    if (*key == NULL) {
        Py_CLEAR(*item);
        return -1;
    }
    return 0;
}

/* ARTIFACT_FIELDS: the field names this path knows (a test holds them to ArtifactRecorded's). */
static int add_field_names(PyObject *m)
{
    PyObject *t = PyTuple_New(N_FIELDS);
    if (t == NULL)
        return -1;
    for (int f = 0; f < N_FIELDS; f++) {
        PyObject *s = PyUnicode_FromString(field_names[f]);
        if (s == NULL) {
            Py_DECREF(t);
            return -1;
        }
        PyTuple_SET_ITEM(t, f, s);
    }
    int err = PyModule_AddObjectRef(m, "ARTIFACT_FIELDS", t);
    Py_DECREF(t);
    return err;
}

PyDoc_STRVAR(payload_columns_doc,
"payload_columns(data, seqs, tss, base, label_start, metric_start, id_rows, str_ids, strs, pair_ids)\n"
"--\n\n"
"A chunk's msgpack array of n events read into the columns catalog.append_payloads folds, or None.");

static PyObject *payload_columns_in(PyObject *const *args, const Py_buffer *sqb, const Py_buffer *tqb);

static PyObject *payload_columns(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 10 || !PyBytes_CheckExact(args[0]) || !PyDict_CheckExact(args[6]) || !PyDict_CheckExact(args[7])
        || !PyList_CheckExact(args[8]) || !PyDict_CheckExact(args[9])) {
        PyErr_SetString(PyExc_TypeError,
                        "payload_columns(bytes, array('q'), array('q'), int, int, int, dict, dict, list, dict)");
        return NULL;
    }
    Py_buffer sqb, tqb;
    if (PyObject_GetBuffer(args[1], &sqb, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[2], &tqb, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&sqb);
        return NULL;
    }
    PyObject *res = payload_columns_in(args, &sqb, &tqb);
    PyBuffer_Release(&sqb);
    PyBuffer_Release(&tqb);
    return res;
}

static int is_q(const Py_buffer *b)
{
    return b->itemsize == 8 && b->format != NULL && (strcmp(b->format, "q") == 0 || strcmp(b->format, "=q") == 0
                                                     || strcmp(b->format, "<q") == 0 || strcmp(b->format, "l") == 0);
}

static PyObject *payload_columns_in(PyObject *const *args, const Py_buffer *sqb, const Py_buffer *tqb)
{
    if (!is_q(sqb) || !is_q(tqb) || sqb->len != tqb->len) {
        PyErr_SetString(PyExc_TypeError, "seqs and tss must be equally long buffers of int64 (array('q'))");
        return NULL;
    }
    Py_ssize_t n = sqb->len / 8;
    const int64_t *seqs = sqb->buf, *tss = tqb->buf;
    long long base = PyLong_AsLongLong(args[3]);
    if (base == -1 && PyErr_Occurred())
        return NULL;
    long long lpos = PyLong_AsLongLong(args[4]);
    if (lpos == -1 && PyErr_Occurred())
        return NULL;
    long long mpos = PyLong_AsLongLong(args[5]);
    if (mpos == -1 && PyErr_Occurred())
        return NULL;
    PyObject *id_rows = args[6], *str_ids = args[7], *strs = args[8], *pair_ids = args[9];
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    const unsigned char *end = p + PyBytes_GET_SIZE(args[0]);
    if (n < 1 || end - p < 5 || p[0] != 0xdd || be32(p + 1) != (uint64_t)n)
        Py_RETURN_NONE;
    p += 5;

    PyObject *res = NULL, *ids = NULL, *sizes = NULL, *sha = NULL, *pins = NULL, *cols = NULL;
    PyObject *lcodes = NULL, *missing = NULL, *lends = NULL, *mcodes = NULL, *mvals = NULL, *mends = NULL;
    PyObject *derived = NULL, *pin_evs = NULL, *art_sq = NULL, *art_tq = NULL;
    stable strtab = {NULL, 0, 0}, pairtab = {NULL, 0, 0};
    pevent *evs = PyMem_Malloc(sizeof(pevent) * (size_t)n);
    if (evs == NULL)
        return PyErr_NoMemory();

    /* Pass 1: read and check everything; nothing is made or changed. */
    Py_ssize_t n_art = 0, n_labels = 0, n_metrics = 0;
    int taken = 1;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t j = 0; j < n; j++) {
        if (parse_event(&p, end, &evs[j]) != 0) {
            taken = 0;
            break;
        }
        if (!evs[j].is_pin) {
            n_art++;
            n_labels += evs[j].n_labels;
            n_metrics += evs[j].n_metrics;
        }
    }
    Py_END_ALLOW_THREADS
    if (!taken || p != end) {
        PyMem_Free(evs);
        Py_RETURN_NONE;
    }

    /* The ids: distinct and new, or the general path decides (it folds repeats one by one). Each goes
     * into id_rows at once (one lookup instead of a check, a dict of the chunk's and a merge); on a
     * repeat, or an error, the ones added are taken out again, leaving id_rows as it was. */
    ids = PyList_New(n_art);
    if (ids == NULL)
        goto done;
    Py_ssize_t a = 0;
    int fresh = 1;
    for (Py_ssize_t j = 0; j < n && fresh; j++) {
        pevent *e = &evs[j];
        if (e->is_pin)
            continue;
        PyObject *id = make_str(e->id, e->id_len);
        if (id == NULL)
            goto undo_ids;
        PyList_SET_ITEM(ids, a, id);
        PyObject *row = PyLong_FromLongLong(base + a);
        if (row == NULL)
            goto undo_ids;
        PyObject *now = PyDict_SetDefault(id_rows, id, row);  /* borrowed */
        fresh = now == row;
        Py_DECREF(row);
        if (now == NULL)
            goto undo_ids;
        if (fresh)
            a++;
    }
    if (!fresh) {
        res = Py_NewRef(Py_None);
        goto undo_ids;
    }

    /* Pass 2: the columns. Only now are str_ids and strs extended (in _columns_only's order). */
    art_sq = PyBytes_FromStringAndSize(NULL, n_art * 8);
    art_tq = PyBytes_FromStringAndSize(NULL, n_art * 8);
    sizes = PyBytes_FromStringAndSize(NULL, n_art * 8);
    sha = PyBytes_FromStringAndSize(NULL, n_art * 32);
    pins = PyBytes_FromStringAndSize(NULL, n_art);
    cols = PyTuple_New(9);
    lcodes = PyBytes_FromStringAndSize(NULL, n_labels * 4);
    missing = PyList_New(0);
    lends = PyBytes_FromStringAndSize(NULL, n_art * 8);
    mcodes = PyBytes_FromStringAndSize(NULL, n_metrics * 4);
    mvals = PyList_New(n_metrics);
    mends = PyBytes_FromStringAndSize(NULL, n_art * 8);
    derived = PyList_New(0);
    pin_evs = PyList_New(0);
    if (!art_sq || !art_tq || !sizes || !sha || !pins || !cols || !lcodes || !missing || !lends || !mcodes || !mvals || !mends || !derived
        || !pin_evs)
        goto done;
    int32_t none_code = -1;
    for (int f = 0; f < 9; f++) {
        PyObject *col = PyBytes_FromStringAndSize(NULL, n_art * 4);
        if (col == NULL)
            goto done;
        PyTuple_SET_ITEM(cols, f, col);
        int32_t *codes = (int32_t *)PyBytes_AS_STRING(col);
        /* Neighbouring rows often share a value (one run's artifacts come together): compared first. */
        const unsigned char *prev = NULL;
        uint32_t prev_len = 0;
        a = 0;
        for (Py_ssize_t j = 0; j < n; j++) {
            pevent *e = &evs[j];
            if (e->is_pin)
                continue;
            const unsigned char *v = e->str[f];
            uint32_t len = e->len[f];
            if (a > 0 && len == prev_len && (v == NULL ? prev == NULL : prev != NULL && same_bytes(v, prev, len))) {
                codes[a] = codes[a - 1];
                a++;
                continue;
            }
            if (intern_span(&strtab, v, len, str_ids, strs, &none_code, &codes[a++]) < 0)
                goto done;
            prev = v;
            prev_len = len;
        }
    }
    int32_t *lc = (int32_t *)PyBytes_AS_STRING(lcodes);
    Py_ssize_t li = 0, mi = 0;
    a = 0;
    for (Py_ssize_t j = 0; j < n; j++) {
        pevent *e = &evs[j];
        if (e->is_pin) {
            PyObject *aid = make_str(e->id, e->id_len);
            PyObject *pe = aid == NULL ? NULL : Py_BuildValue("(LOO)", (long long)seqs[j], aid,
                                                              e->pinned ? Py_True : Py_False);
            Py_XDECREF(aid);
            int err = pe == NULL || PyList_Append(pin_evs, pe) < 0;
            Py_XDECREF(pe);
            if (err)
                goto done;
            continue;
        }
        memcpy(PyBytes_AS_STRING(art_sq) + a * 8, &seqs[j], 8);
        memcpy(PyBytes_AS_STRING(art_tq) + a * 8, &tss[j], 8);
        memcpy(PyBytes_AS_STRING(sizes) + a * 8, &e->size, 8);
        memcpy(PyBytes_AS_STRING(sha) + a * 32, e->sha, 32);
        PyBytes_AS_STRING(pins)[a] = (char)e->pinned;
        const unsigned char *q = e->labels;
        for (uint32_t t = 0; t < e->n_labels; t++, li++) {
            const unsigned char *start = q;
            mpv k = {0}, v = {0};
            mp_read(&q, end, &k);  /* checked by pass 1 */
            mp_read(&q, end, &v);
            uint32_t len = (uint32_t)(q - start);
            uint64_t h = span_hash(start, len);
            sslot *s = st_find(&pairtab, start, len, h);
            if (s == NULL)
                goto done;
            if (s->s == NULL) {
                PyObject *key, *item;
                if (label_objects(&k, &v, &key, &item) < 0)
                    goto done;
                PyObject *code = PyDict_GetItemWithError(pair_ids, key);
                long c = -1;
                if (code == NULL && PyErr_Occurred()) {
                    Py_DECREF(key);
                    Py_DECREF(item);
                    goto done;
                }
                if (code != NULL) {
                    c = PyLong_AsLong(code);
                    if ((c == -1 && PyErr_Occurred()) || c > INT32_MAX || c < 0) {
                        if (!PyErr_Occurred())
                            PyErr_SetString(PyExc_OverflowError, "pair code does not fit a C int");
                        Py_DECREF(key);
                        Py_DECREF(item);
                        goto done;
                    }
                    Py_CLEAR(key);
                    Py_CLEAR(item);
                }
                s->h = h;
                s->s = start;
                s->n = len;
                s->code = (int32_t)c;
                s->key = key;
                s->item = item;
                pairtab.used++;
            }
            lc[li] = s->code;
            if (s->code < 0) {
                PyObject *m = Py_BuildValue("(nOO)", li, s->key, s->item);
                int err = m == NULL || PyList_Append(missing, m) < 0;
                Py_XDECREF(m);
                if (err)
                    goto done;
            }
        }
        lpos += e->n_labels;
        memcpy(PyBytes_AS_STRING(lends) + a * 8, &lpos, 8);
        if (e->n_derived) {
            PyObject *parents = PyList_New(e->n_derived);
            if (parents == NULL)
                goto done;
            q = e->derived;
            for (uint32_t t = 0; t < e->n_derived; t++) {
                mpv s = {0};
                mp_read(&q, end, &s);
                PyObject *o = make_str(s.s, s.n);
                if (o == NULL) {
                    Py_DECREF(parents);
                    goto done;
                }
                PyList_SET_ITEM(parents, t, o);
            }
            PyObject *d = Py_BuildValue("(LnN)", (long long)seqs[j], a, parents);
            int err = d == NULL || PyList_Append(derived, d) < 0;
            Py_XDECREF(d);
            if (err)
                goto done;
        }
        a++;
    }
    /* Metric names are interned after the label pairs, as in _columns_only. */
    int32_t *mc = (int32_t *)PyBytes_AS_STRING(mcodes);
    a = 0;
    for (Py_ssize_t j = 0; j < n; j++) {
        pevent *e = &evs[j];
        if (e->is_pin)
            continue;
        const unsigned char *q = e->metrics;
        for (uint32_t t = 0; t < e->n_metrics; t++, mi++) {
            mpv k = {0}, v = {0};
            mp_read(&q, end, &k);
            mp_read(&q, end, &v);
            if (intern_span(&strtab, k.s, k.n, str_ids, strs, &none_code, &mc[mi]) < 0)
                goto done;
            PyObject *val = make_scalar(&v);
            if (val == NULL)
                goto done;
            PyList_SET_ITEM(mvals, mi, val);
        }
        mpos += e->n_metrics;
        memcpy(PyBytes_AS_STRING(mends) + a * 8, &mpos, 8);
        a++;
    }
    res = PyTuple_Pack(15, art_sq, art_tq, ids, sizes, sha, pins, cols, lcodes, missing, lends, mcodes, mvals,
                       mends, derived, pin_evs);
    goto done;
undo_ids:
    {
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        for (Py_ssize_t k = 0; k < a; k++)
            if (PyDict_DelItem(id_rows, PyList_GET_ITEM(ids, k)) < 0)
                PyErr_Clear();  /* it is there: added above, and nothing ran in between */
        PyErr_Restore(et, ev, tb);
    }
done:
    PyMem_Free(evs);
    st_free(&strtab);
    st_free(&pairtab);
    Py_XDECREF(ids);
    Py_XDECREF(sizes);
    Py_XDECREF(sha);
    Py_XDECREF(pins);
    Py_XDECREF(cols);
    Py_XDECREF(lcodes);
    Py_XDECREF(missing);
    Py_XDECREF(lends);
    Py_XDECREF(mcodes);
    Py_XDECREF(mvals);
    Py_XDECREF(mends);
    Py_XDECREF(derived);
    Py_XDECREF(pin_evs);
    Py_XDECREF(art_sq);
    Py_XDECREF(art_tq);
    return res;
}

/* ------------------------------------------------------------------ module */

static PyMethodDef methods[] = {
    {"scan_chain", (PyCFunction)(void (*)(void))scan_chain, METH_FASTCALL, scan_chain_doc},
    {"scan_payloads", (PyCFunction)(void (*)(void))scan_payloads, METH_FASTCALL, scan_payloads_doc},
    {"crc32c", (PyCFunction)(void (*)(void))crc32c_py, METH_VARARGS | METH_KEYWORDS, crc32c_doc},
    {"group_rows", (PyCFunction)(void (*)(void))group_rows, METH_VARARGS | METH_KEYWORDS, group_rows_doc},
    {"intern", (PyCFunction)(void (*)(void))intern_codes, METH_FASTCALL, intern_doc},
    {"lookup", (PyCFunction)(void (*)(void))lookup, METH_FASTCALL, lookup_doc},
    {"columns", (PyCFunction)(void (*)(void))columns, METH_FASTCALL, columns_doc},
    {"payload_columns", (PyCFunction)(void (*)(void))payload_columns, METH_FASTCALL, payload_columns_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_speedups",
    "Optional C versions of the replay's hot loops (pure-Python twins in framing.py and catalog.py).",
    -1, methods,
};

PyMODINIT_FUNC PyInit__speedups(void)
{
    crc_table_init();
    field_words_init();
    for (int c = 0; c < 256; c++)
        hex_value[c] = (int8_t)(c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1);
    if (!(s_artifact_id = PyUnicode_InternFromString("artifact_id")) || !(s_size = PyUnicode_InternFromString("size"))
        || !(s_sha256 = PyUnicode_InternFromString("sha256")) || !(s_pinned = PyUnicode_InternFromString("pinned"))
        || !(s_labels = PyUnicode_InternFromString("labels"))
        || !(s_metrics = PyUnicode_InternFromString("metrics"))
        || !(s_derived_from = PyUnicode_InternFromString("derived_from"))
        || !(s_f = PyUnicode_InternFromString("f")))
        return NULL;
#ifdef AL_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("sse4.2")) {
        crc_update = crc_sse42;
        crc_hw = 1;
    }
#endif
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
    if (sha256_md == NULL) {
        PyErr_SetString(PyExc_ImportError, "libcrypto has no SHA-256");
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "MAX_BODY", AL_MAX_BODY) < 0
        || PyModule_AddIntConstant(m, "CRC_HARDWARE", crc_hw) < 0
        || PyModule_AddIntConstant(m, "EVENT_SCHEMA", 1) < 0 || add_field_names(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
