/* Small C helpers for the frame engine: XOR masking on machine words (SSE2 /
 * AVX2 on x86-64, 64-bit words elsewhere), an incremental UTF-8 validator
 * that fails on the first invalid byte, and a per-thread scratch read buffer.
 *
 * Everything here is plain C with no Python calls, so it can run without the
 * GIL and is easy to test through the Cython twins in _frames.pyx.
 */
#ifndef FASTWS_SPEEDUPS_H
#define FASTWS_SPEEDUPS_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* This header is included by every engine module that cimports _frames.pxd; not all of them
   call every helper. */
#if defined(__GNUC__)
#define FASTWS_MAYBE_UNUSED __attribute__((unused))
#else
#define FASTWS_MAYBE_UNUSED
#endif

#if defined(__GNUC__) && (defined(__x86_64__) || defined(_M_X64))
#define FASTWS_X86 1
#include <immintrin.h>
#endif

/* ------------------------------------------------------------------ mask */

/* XOR `n` bytes of `src` into `dst` with the 4-byte `key`, starting at key
 * position `offset` (the payload offset of src[0] within its frame).
 * `dst` may equal `src` (in-place unmasking). */

static inline void fastws_mask_tail(uint8_t *dst, const uint8_t *src, size_t n,
                                    const uint8_t *k4)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = src[i] ^ k4[i & 3];
}

FASTWS_MAYBE_UNUSED static void fastws_mask_words(uint8_t *dst, const uint8_t *src, size_t n,
                              const uint8_t *k4)
{
    uint64_t k8;
    uint32_t k;
    memcpy(&k, k4, 4);
    k8 = ((uint64_t)k << 32) | k;
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        uint64_t a, b, c, d;
        memcpy(&a, src + i, 8);
        memcpy(&b, src + i + 8, 8);
        memcpy(&c, src + i + 16, 8);
        memcpy(&d, src + i + 24, 8);
        a ^= k8; b ^= k8; c ^= k8; d ^= k8;
        memcpy(dst + i, &a, 8);
        memcpy(dst + i + 8, &b, 8);
        memcpy(dst + i + 16, &c, 8);
        memcpy(dst + i + 24, &d, 8);
    }
    for (; i + 8 <= n; i += 8) {
        uint64_t a;
        memcpy(&a, src + i, 8);
        a ^= k8;
        memcpy(dst + i, &a, 8);
    }
    fastws_mask_tail(dst + i, src + i, n - i, k4);
}

#ifdef FASTWS_X86
FASTWS_MAYBE_UNUSED static void fastws_mask_sse2(uint8_t *dst, const uint8_t *src, size_t n,
                             const uint8_t *k4)
{
    int32_t k;
    memcpy(&k, k4, 4);
    __m128i kv = _mm_set1_epi32(k);
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        __m128i a = _mm_loadu_si128((const __m128i *)(src + i));
        __m128i b = _mm_loadu_si128((const __m128i *)(src + i + 16));
        __m128i c = _mm_loadu_si128((const __m128i *)(src + i + 32));
        __m128i d = _mm_loadu_si128((const __m128i *)(src + i + 48));
        _mm_storeu_si128((__m128i *)(dst + i), _mm_xor_si128(a, kv));
        _mm_storeu_si128((__m128i *)(dst + i + 16), _mm_xor_si128(b, kv));
        _mm_storeu_si128((__m128i *)(dst + i + 32), _mm_xor_si128(c, kv));
        _mm_storeu_si128((__m128i *)(dst + i + 48), _mm_xor_si128(d, kv));
    }
    for (; i + 16 <= n; i += 16) {
        __m128i a = _mm_loadu_si128((const __m128i *)(src + i));
        _mm_storeu_si128((__m128i *)(dst + i), _mm_xor_si128(a, kv));
    }
    fastws_mask_words(dst + i, src + i, n - i, k4);
}

__attribute__((target("avx2")))
FASTWS_MAYBE_UNUSED static void fastws_mask_avx2(uint8_t *dst, const uint8_t *src, size_t n,
                             const uint8_t *k4)
{
    int32_t k;
    memcpy(&k, k4, 4);
    __m256i kv = _mm256_set1_epi32(k);
    size_t i = 0;
    for (; i + 128 <= n; i += 128) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(src + i));
        __m256i b = _mm256_loadu_si256((const __m256i *)(src + i + 32));
        __m256i c = _mm256_loadu_si256((const __m256i *)(src + i + 64));
        __m256i d = _mm256_loadu_si256((const __m256i *)(src + i + 96));
        _mm256_storeu_si256((__m256i *)(dst + i), _mm256_xor_si256(a, kv));
        _mm256_storeu_si256((__m256i *)(dst + i + 32), _mm256_xor_si256(b, kv));
        _mm256_storeu_si256((__m256i *)(dst + i + 64), _mm256_xor_si256(c, kv));
        _mm256_storeu_si256((__m256i *)(dst + i + 96), _mm256_xor_si256(d, kv));
    }
    for (; i + 32 <= n; i += 32) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(src + i));
        _mm256_storeu_si256((__m256i *)(dst + i), _mm256_xor_si256(a, kv));
    }
    fastws_mask_sse2(dst + i, src + i, n - i, k4);
}

FASTWS_MAYBE_UNUSED static int fastws_have_avx2 = -1;
#endif

/* Name of the masking kernel in use, for benchmark reports. */
FASTWS_MAYBE_UNUSED static const char *fastws_mask_impl(void)
{
#ifdef FASTWS_X86
    if (fastws_have_avx2 < 0)
        fastws_have_avx2 = __builtin_cpu_supports("avx2") ? 1 : 0;
    return fastws_have_avx2 ? "avx2" : "sse2";
#else
    return "words64";
#endif
}

FASTWS_MAYBE_UNUSED static void fastws_mask(uint8_t *dst, const uint8_t *src, size_t n,
                        const uint8_t *key, size_t offset)
{
    uint8_t k4[4];
    for (int j = 0; j < 4; j++)
        k4[j] = key[(offset + j) & 3];
    if (n < 16) {
        fastws_mask_tail(dst, src, n, k4);
        return;
    }
#ifdef FASTWS_X86
    if (fastws_have_avx2 < 0)
        fastws_have_avx2 = __builtin_cpu_supports("avx2") ? 1 : 0;
    if (fastws_have_avx2 && n >= 64)
        fastws_mask_avx2(dst, src, n, k4);
    else
        fastws_mask_sse2(dst, src, n, k4);
#else
    fastws_mask_words(dst, src, n, k4);
#endif
}

/* ------------------------------------------------------------------ UTF-8 */

/* Incremental validator. The state packs the number of continuation bytes
 * still expected and the allowed range of the next byte (RFC 3629 table:
 * no overlongs, no surrogates, nothing above U+10FFFF). State 0 = between
 * code points. Returns 0 when `p[0:n]` is valid so far, -1 at the first
 * invalid byte. */
#define FASTWS_UTF8_ACCEPT 0u

FASTWS_MAYBE_UNUSED static int fastws_utf8_validate(uint32_t *state, const uint8_t *p, size_t n)
{
    uint32_t st = *state;
    uint32_t need = st & 0xff, lo = (st >> 8) & 0xff, hi = (st >> 16) & 0xff;
    size_t i = 0;
    while (i < n) {
        if (need == 0) {
            while (i + 16 <= n) {
                uint64_t a, b;
                memcpy(&a, p + i, 8);
                memcpy(&b, p + i + 8, 8);
                if ((a | b) & 0x8080808080808080ULL)
                    break;
                i += 16;
            }
            while (i < n && p[i] < 0x80)
                i++;
            if (i >= n)
                break;
            uint8_t c = p[i++];
            if (c < 0xC2)
                return -1;
            if (c < 0xE0) {
                need = 1; lo = 0x80; hi = 0xBF;
            } else if (c < 0xF0) {
                need = 2;
                lo = (c == 0xE0) ? 0xA0 : 0x80;
                hi = (c == 0xED) ? 0x9F : 0xBF;
            } else if (c < 0xF5) {
                need = 3;
                lo = (c == 0xF0) ? 0x90 : 0x80;
                hi = (c == 0xF4) ? 0x8F : 0xBF;
            } else {
                return -1;
            }
        } else {
            uint8_t c = p[i++];
            if (c < lo || c > hi)
                return -1;
            need--;
            lo = 0x80;
            hi = 0xBF;
        }
    }
    *state = need | (lo << 8) | (hi << 16);
    return 0;
}

static inline int fastws_utf8_complete(uint32_t state)
{
    return (state & 0xff) == 0;
}

/* ------------------------------------------------------------------ scratch */

/* One read buffer per thread, shared by every connection on that thread's
 * event loop: the kernel reads into it, the parser consumes it within the
 * same callback, so an idle connection holds no read buffer at all. */
#define FASTWS_SCRATCH_SIZE (256 * 1024)

static __thread uint8_t *fastws_scratch_ptr = NULL;

static inline uint8_t *fastws_scratch(void)
{
    if (fastws_scratch_ptr == NULL)
        fastws_scratch_ptr = (uint8_t *)malloc(FASTWS_SCRATCH_SIZE);
    return fastws_scratch_ptr;
}

/* ------------------------------------------------------------------ buffer reuse */

/* A large bytes object that nobody references any more may be reused as the
 * next message buffer. Its cached hash must then be forgotten. Where the
 * layout of PyBytesObject is not known, reuse is off. */
#include <Python.h>
#if PY_VERSION_HEX >= 0x030A0000 && PY_VERSION_HEX < 0x030E0000 && !defined(Py_GIL_DISABLED)
#define FASTWS_CAN_RECYCLE 1
static inline void fastws_bytes_forget_hash(PyObject *o)
{
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#endif
    ((PyBytesObject *)o)->ob_shash = -1;
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
}
#else
#define FASTWS_CAN_RECYCLE 0
static inline void fastws_bytes_forget_hash(PyObject *o) { (void)o; }
#endif

#endif /* FASTWS_SPEEDUPS_H */
