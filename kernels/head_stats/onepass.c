/* One pass over the logits of a range of heads, given each row's log-sum-exp.
 *
 * Compiled at first use by kernels/head_stats/native.py (cc -O3 -march=native -fopenmp, GCC
 * vector types). With lse known from the forward's flash attention, every statistic is one sweep:
 *
 *     s_tj = scale q_t . k_j     p_tj = exp(s_tj - lse_t)
 *     entropy_t  = -sum_j p_tj (s_tj - lse_t)       max_prob_t = exp(max_j s_tj - lse_t)
 *     argmax_t   = first j with s_tj = max_j s_tj   sink_t = sum_{j < sink} p_tj
 *     local_t    = sum_{tpos - window < j <= tpos} p_tj       col_j += sum_t p_tj
 *
 * where query t sits at key position tpos = t + M - N and, when causal, sees keys j <= tpos.
 * Keys the query may not see (causal, or 0 in the padding mask) add nothing anywhere. Rows whose
 * lse is -inf (no visible key) get entropy 0, max_prob 0, argmax -1, masses 0 and add nothing to
 * col. `wb_lse` is the pass before it for callers with no lse (online max and sum, as flash
 * attention). Logits live only in an R x KB block: no N x M tensor.
 *
 * Layouts (all contiguous): q float [B, Hq, N, d]; kt float [B, Hkv, d, M] (keys transposed, so a
 * key block is a run of floats); kmask uint8 [B, M + VL] (1 = real key; the VL bytes past each row
 * are padding that is never kept) or NULL; lse, entropy, max_prob, sink, local float [B, Hq, N];
 * argmax int64 [B, Hq, N] or NULL; col float [B, Hq, M] or NULL (added to, so zero it first).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define R 8     /* query rows per block: each key vector loaded once serves R rows */
#define KB 256  /* keys per block: R x KB logits and probabilities stay in L1 */
#define VL 16   /* lanes of the vector type below (GCC splits it to the machine's width) */

typedef float vf __attribute__((vector_size(VL * sizeof(float))));

typedef int32_t vi __attribute__((vector_size(VL * sizeof(int32_t))));

typedef uint8_t vb __attribute__((vector_size(VL)));

/* lanes j .. j+VL-1 of a row: kept if j + lane < wr and the key is real (km == NULL: all are) */
static inline vi keep_lanes(int j, int wr, const uint8_t *km) {
    vi lane;
    for (int i = 0; i < VL; i++) lane[i] = i;
    vi keep = lane < wr - j;
    if (km) {
        vb bytes;
        memcpy(&bytes, km + j, sizeof bytes);
        keep &= __builtin_convertvector(bytes, vi) != 0;
    }
    return keep;
}

static inline vf vselect(vi mask, vf a, vf b) {  /* mask lanes are -1 (take a) or 0 (take b) */
    return (vf)(((vi)a & mask) | ((vi)b & ~mask));
}

static inline vf vbroadcast(float x) {
    return x - (vf){0};
}

/* exp(x), lane by lane, for x in [-87, 88] (callers clamp): Cephes expf, a Cody-Waite reduction
 * by ln 2 and a degree-6 polynomial, about 1 ulp; written with vector types so that it always
 * vectorizes. n = round(x log2 e) by the 1.5 * 2^23 trick (no fast-math here to undo it). */
static inline vf vexp(vf x) {
    const float magic = 12582912.0f;
    vf fn = (x * 1.44269504088896341f + magic) - magic;
    vi n = __builtin_convertvector(fn, vi);
    x = x - fn * 0.693359375f + fn * 2.12194440e-4f;
    vf z = x * x;
    vf y = ((((1.9875691500e-4f * x + 1.3981999507e-3f) * x + 8.3334519073e-3f) * x + 4.1665795894e-2f) * x
            + 1.6666665459e-1f) * x + 5.0000001201e-1f;
    y = y * z + x + 1.0f;
    return y * (vf)((n + 127) << 23);
}

/* x clamped to [-87, 88]: below e^-87 no float32 sum changes, above e^88 float32 overflows */
static inline vf vclamp(vf x) {
    x = vselect(x < -87.0f, vbroadcast(-87.0f), x);
    return vselect(x > 88.0f, vbroadcast(88.0f), x);
}

/* logits S[r][0:w) = qs[r] . kt[:, j0:j0+w) for nr rows; qs already carries the scale */
static void logits(const float *qs, int nr, int d, const float *kt, int64_t M, int64_t j0, int w,
                   float S[R][KB]) {
    int jj = 0;
    for (; jj + 2 * VL <= w; jj += 2 * VL) {  /* 2R independent accumulators hide the FMA latency */
        vf a0[R], a1[R];
        for (int r = 0; r < R; r++) a0[r] = a1[r] = (vf){0};
        for (int c = 0; c < d; c++) {
            vf k0, k1;
            memcpy(&k0, kt + c * M + j0 + jj, sizeof k0);
            memcpy(&k1, kt + c * M + j0 + jj + VL, sizeof k1);
            for (int r = 0; r < R; r++) {
                a0[r] += qs[r * d + c] * k0;
                a1[r] += qs[r * d + c] * k1;
            }
        }
        for (int r = 0; r < nr; r++) {
            memcpy(&S[r][jj], &a0[r], sizeof a0[r]);
            memcpy(&S[r][jj + VL], &a1[r], sizeof a1[r]);
        }
    }
    for (; jj + VL <= w; jj += VL) {
        vf acc[R];
        for (int r = 0; r < R; r++) acc[r] = (vf){0};
        for (int c = 0; c < d; c++) {
            vf kv;
            memcpy(&kv, kt + c * M + j0 + jj, sizeof kv);
            for (int r = 0; r < R; r++) acc[r] += qs[r * d + c] * kv;
        }
        for (int r = 0; r < nr; r++) memcpy(&S[r][jj], &acc[r], sizeof acc[r]);
    }
    for (; jj < w; jj++) {  /* the tail of the block */
        for (int r = 0; r < nr; r++) {
            float s = 0.0f;
            for (int c = 0; c < d; c++) s += qs[r * d + c] * kt[c * M + j0 + jj];
            S[r][jj] = s;
        }
    }
}

/* P[j] = exp(S[j] - L) over the kept keys of one row of a block (j < wr, km[j] != 0), zero
 * elsewhere up to KB; *e = sum of p (s - L) and *m = max of s over the kept keys */
static void row_pass(const float *S, float *P, int wr, const uint8_t *km, float L, float *e_out, float *m_out) {
    vf e = {0}, m = vbroadcast(-INFINITY), ninf = m;
    for (int j = 0; j < wr; j += VL) {
        vf s;
        memcpy(&s, S + j, sizeof s);
        vi keep = keep_lanes(j, wr, km);
        s = vselect(keep, s, ninf);
        vf z = vclamp(s - L);  /* masked lanes too: 0 * -inf would be NaN */
        vf p = vselect(keep, vexp(z), (vf){0});
        e += p * z;
        m = vselect(s > m, s, m);
        memcpy(P + j, &p, sizeof p);
    }
    for (int j = (wr + VL - 1) / VL * VL; j < KB; j++) P[j] = 0.0f;  /* keys past the row add nothing */
    float es = 0.0f, ms = -INFINITY;
    for (int i = 0; i < VL; i++) {
        es += e[i];
        ms = m[i] > ms ? m[i] : ms;
    }
    *e_out = es, *m_out = ms;
}

/* the largest kept logit of a row block, and sum exp(s - m) over the kept keys */
static float row_max(const float *S, int wr, const uint8_t *km) {
    vf m = vbroadcast(-INFINITY), ninf = m;
    for (int j = 0; j < wr; j += VL) {
        vf s;
        memcpy(&s, S + j, sizeof s);
        s = vselect(keep_lanes(j, wr, km), s, ninf);
        m = vselect(s > m, s, m);
    }
    float ms = -INFINITY;
    for (int i = 0; i < VL; i++) ms = m[i] > ms ? m[i] : ms;
    return ms;
}

static float row_sumexp(const float *S, int wr, const uint8_t *km, float m) {
    vf l = {0};
    for (int j = 0; j < wr; j += VL) {
        vf s;
        memcpy(&s, S + j, sizeof s);
        l += vselect(keep_lanes(j, wr, km), vexp(vclamp(s - m)), (vf){0});
    }
    float ls = 0.0f;
    for (int i = 0; i < VL; i++) ls += l[i];
    return ls;
}

/* Heads run in parallel on OpenMP threads where the library is built with -fopenmp (linked to
 * the libgomp torch has loaded, so torch's own warm workers take the heads); else the caller
 * splits the head range over threads of its own. Each head's col row has one writer. */
#ifdef _OPENMP
#define PARALLEL_HEADS _Pragma("omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)")
int wb_openmp(void) { return 1; }
#else
#define PARALLEL_HEADS
int wb_openmp(void) { return 0; }
#endif

/* per-thread blocks of logits and probabilities */
static __thread float tls_S[R][KB], tls_P[R][KB];

/* a query row block's scaled queries, key limits and liveness; returns the block's key limit */
static int64_t setup_rows(const float *qh, int64_t t0, int nr, int64_t d, int64_t M, int64_t offset, int causal,
                          float scale, float *qs, int64_t *hi_r) {
    int64_t hi = 0;
    memset(qs, 0, sizeof(float) * R * d);
    for (int r = 0; r < nr; r++) {
        const int64_t tpos = t0 + r + offset;
        hi_r[r] = causal ? (tpos + 1 < M ? tpos + 1 : M) : M;
        if (hi_r[r] < 0) hi_r[r] = 0;
        if (hi_r[r] > hi) hi = hi_r[r];
        for (int64_t c = 0; c < d; c++) qs[r * d + c] = qh[(t0 + r) * d + c] * scale;
    }
    return hi;
}

static inline int row_width(int64_t hi_r, int64_t j0, int w) {
    return hi_r <= j0 ? 0 : (int)(hi_r - j0 < w ? hi_r - j0 : w);
}

void wb_lse(const float *q, const float *kt, const uint8_t *kmask, int64_t Hq, int64_t Hkv, int64_t N, int64_t M,
            int64_t d, int causal, float scale, int64_t head_begin, int64_t head_end, float *lse, int nthreads) {
    const int64_t G = Hq / Hkv, offset = M - N;
    (void)nthreads;
    PARALLEL_HEADS
    for (int64_t bh = head_begin; bh < head_end; bh++) {
        float(*S)[KB] = tls_S;
        float qs[R * 256];
        const int64_t b = bh / Hq, h = bh % Hq;
        const float *qh = q + bh * N * d, *kh = kt + (b * Hkv + h / G) * d * M;
        const uint8_t *km = kmask ? kmask + b * (M + VL) : 0;
        for (int64_t t0 = 0; t0 < N; t0 += R) {
            const int nr = (int)(N - t0 < R ? N - t0 : R);
            int64_t hi_r[R];
            float m[R], l[R];
            const int64_t hi = setup_rows(qh, t0, nr, d, M, offset, causal, scale, qs, hi_r);
            for (int r = 0; r < nr; r++) m[r] = -INFINITY, l[r] = 0.0f;
            for (int64_t j0 = 0; j0 < hi; j0 += KB) {
                const int w = (int)(hi - j0 < KB ? hi - j0 : KB);
                logits(qs, nr, (int)d, kh, M, j0, w, S);
                for (int r = 0; r < nr; r++) {
                    const int wr = row_width(hi_r[r], j0, w);
                    const float bm = row_max(S[r], wr, km ? km + j0 : 0);
                    if (bm == -INFINITY) continue;  /* no kept key in this block */
                    const float mn = bm > m[r] ? bm : m[r];
                    l[r] = l[r] * expf(m[r] - mn) + row_sumexp(S[r], wr, km ? km + j0 : 0, mn);
                    m[r] = mn;
                }
            }
            for (int r = 0; r < nr; r++) lse[bh * N + t0 + r] = l[r] > 0.0f ? m[r] + logf(l[r]) : -INFINITY;
        }
    }
}

void wb_onepass(const float *q, const float *kt, const uint8_t *kmask, const float *lse, int64_t Hq, int64_t Hkv,
                int64_t N, int64_t M, int64_t d, int causal, float scale, int64_t sink_tokens, int64_t window,
                int64_t head_begin, int64_t head_end, float *entropy, float *max_prob, int64_t *argmax,
                float *sink, float *local, float *col, int nthreads) {
    const int64_t G = Hq / Hkv, offset = M - N;
    (void)nthreads;
    PARALLEL_HEADS
    for (int64_t bh = head_begin; bh < head_end; bh++) {
        float(*S)[KB] = tls_S, (*P)[KB] = tls_P;
        float qs[R * 256];  /* d <= 256, checked by the caller */
        const int64_t b = bh / Hq, h = bh % Hq;
        const float *qh = q + bh * N * d;
        const float *kh = kt + (b * Hkv + h / G) * d * M;
        const float *lh = lse + bh * N;
        const uint8_t *km = kmask ? kmask + b * (M + VL) : 0;
        float *colh = col ? col + bh * M : 0;
        for (int64_t t0 = 0; t0 < N; t0 += R) {
            const int nr = (int)(N - t0 < R ? N - t0 : R);
            int64_t hi_r[R], arg[R];
            float L[R], ent[R], mx[R], sk[R], lc[R];
            int live[R];
            int64_t hi = setup_rows(qh, t0, nr, d, M, offset, causal, scale, qs, hi_r);
            for (int r = 0; r < nr; r++) {
                L[r] = lh[t0 + r];
                live[r] = L[r] > -INFINITY && hi_r[r] > 0;
                if (!live[r]) hi_r[r] = 0;  /* a dead row reads no key */
                ent[r] = 0.0f, mx[r] = -INFINITY, sk[r] = 0.0f, lc[r] = 0.0f, arg[r] = -1;
            }
            for (int64_t j0 = 0; j0 < hi; j0 += KB) {
                const int w = (int)(hi - j0 < KB ? hi - j0 : KB);
                logits(qs, nr, (int)d, kh, M, j0, w, S);
                for (int r = 0; r < nr; r++) {
                    const int wr = row_width(hi_r[r], j0, w);
                    float e, m;
                    row_pass(S[r], P[r], wr, km ? km + j0 : 0, L[r], &e, &m);
                    if (m == -INFINITY) continue;  /* no kept key in this block */
                    ent[r] += e;
                    if (argmax && m > mx[r]) {  /* first key of this block reaching the new max */
                        for (int j = 0; j < wr; j++)
                            if (S[r][j] == m && (!km || km[j0 + j])) { arg[r] = j0 + j; break; }
                    }
                    if (m > mx[r]) mx[r] = m;
                    const int64_t tpos = t0 + r + offset;
                    if (j0 < sink_tokens) {
                        const int64_t top = sink_tokens - j0 < wr ? sink_tokens - j0 : wr;
                        for (int64_t j = 0; j < top; j++) sk[r] += P[r][j];
                    }
                    if (window > 0) {
                        int64_t lo = tpos - window + 1 - j0, up = tpos + 1 - j0;
                        if (lo < 0) lo = 0;
                        if (up > wr) up = wr;
                        for (int64_t j = lo; j < up; j++) lc[r] += P[r][j];
                    }
                }
                if (colh) {
                    float *cj = colh + j0;
                    if (nr == R) {  /* R fixed: the row sum unrolls and the key loop vectorizes */
                        for (int j = 0; j < w; j++) {
                            float sum = 0.0f;
                            for (int r = 0; r < R; r++) sum += P[r][j];
                            cj[j] += sum;
                        }
                    } else {
                        for (int r = 0; r < nr; r++)
                            for (int j = 0; j < w; j++) cj[j] += P[r][j];
                    }
                }
            }
            for (int r = 0; r < nr; r++) {
                const int64_t t = bh * N + t0 + r;
                if (!live[r]) {
                    entropy[t] = 0.0f, max_prob[t] = 0.0f, sink[t] = 0.0f, local[t] = 0.0f;
                    if (argmax) argmax[t] = -1;
                    continue;
                }
                entropy[t] = -ent[r] > 0.0f ? -ent[r] : 0.0f;
                const float mp = expf(mx[r] - L[r]);
                max_prob[t] = mp < 1.0f ? mp : 1.0f;
                sink[t] = sk[r], local[t] = lc[r];
                if (argmax) argmax[t] = arg[r];
            }
        }
    }
}
