// Decode attention of a GQA group over selected rows of one KV head (flash-decoding):
// the ids are split into chunks, one block per (KV head, chunk); each block keeps, for
// every query row of the group, the running maximum, the running sum of exponentials and
// the weighted sum of values over its chunk; `attention_combine` merges the chunks.
// f16 KV, f32 accumulation. The twin of `ckv_attn::attend_rows` on the CPU.
//
// Shapes (row-major):
//   keys, values   [tokens, D] per KV head, `head_stride` elements apart; work head h
//                  reads KV head h / heads_per_kv (per-query-head lists: G = 1)
//   queries        [heads, G, D] f32
//   ids            [heads, ids_stride] u32, the first `n_ids[h]` used (null: 0..n_ids[h])
//   part_out       [heads, G, chunks, D] f32; part_max, part_sum [heads, G, chunks]
//   out            [heads, G, D] f32

#include <cuda_fp16.h>

// -infinity: the running maximum before any score (NVRTC has no <cmath>).
#define NEG_INF __int_as_float(0xff800000)

#define WARPS 4
#define THREADS (WARPS * 32)

// One block: chunk `blockIdx.x` of KV head `blockIdx.y`. Warp w takes the chunk's tokens
// w, w + WARPS, ...; lane l holds the elements 2l + 64k of a row (PAIRS = D / 64 pairs).
template <int G, int D>
__device__ void attention_chunk(
    const __half* __restrict__ keys, const __half* __restrict__ values, long long head_stride,
    int heads_per_kv, const float* __restrict__ queries, const unsigned* __restrict__ ids, int ids_stride,
    const int* __restrict__ n_ids, int chunk_len, float scale,
    float* __restrict__ part_out, float* __restrict__ part_max, float* __restrict__ part_sum) {
    constexpr int PAIRS = D / 64;
    const int head = blockIdx.y, chunk = blockIdx.x, chunks = gridDim.x;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int n = n_ids[head];
    const int first = chunk * chunk_len;
    const int last = min(n, first + chunk_len);
    const __half* k_head = keys + (head / heads_per_kv) * head_stride;
    const __half* v_head = values + (head / heads_per_kv) * head_stride;
    const unsigned* head_ids = ids ? ids + (long long)head * ids_stride : nullptr;

    float2 q[G][PAIRS];
    #pragma unroll
    for (int j = 0; j < G; ++j) {
        #pragma unroll
        #pragma unroll
        for (int p = 0; p < PAIRS; ++p) {
            const float* row = queries + ((long long)head * G + j) * D;
            q[j][p] = make_float2(row[2 * lane + 64 * p] * scale, row[2 * lane + 64 * p + 1] * scale);
        }
    }
    float m[G], s[G];
    float2 acc[G][PAIRS];
    #pragma unroll
    for (int j = 0; j < G; ++j) {
        m[j] = NEG_INF;
        s[j] = 0.0f;
        #pragma unroll
        for (int p = 0; p < PAIRS; ++p) acc[j][p] = make_float2(0.0f, 0.0f);
    }
    for (int i = first + warp; i < last; i += WARPS) {
        const long long t = head_ids ? (long long)head_ids[i] : (long long)i;
        const __half2* k = reinterpret_cast<const __half2*>(k_head + t * D);
        const __half2* v = reinterpret_cast<const __half2*>(v_head + t * D);
        float2 kf[PAIRS], vf[PAIRS];
        #pragma unroll
        #pragma unroll
        for (int p = 0; p < PAIRS; ++p) {
            kf[p] = __half22float2(k[lane + 32 * p]);
            vf[p] = __half22float2(v[lane + 32 * p]);
        }
        #pragma unroll
        for (int j = 0; j < G; ++j) {
            float dot = 0.0f;
            #pragma unroll
            for (int p = 0; p < PAIRS; ++p) dot += q[j][p].x * kf[p].x + q[j][p].y * kf[p].y;
            dot = warp_sum(dot);
            const float m_new = fmaxf(m[j], dot);
            const float rescale = __expf(m[j] - m_new);
            const float w = __expf(dot - m_new);
            s[j] = s[j] * rescale + w;
            #pragma unroll
            #pragma unroll
            for (int p = 0; p < PAIRS; ++p) {
                acc[j][p].x = acc[j][p].x * rescale + w * vf[p].x;
                acc[j][p].y = acc[j][p].y * rescale + w * vf[p].y;
            }
            m[j] = m_new;
        }
    }
    // Merge the warps through shared memory: each warp's (m, s, acc) per query row.
    __shared__ float sm_m[WARPS][G], sm_s[WARPS][G];
    __shared__ float2 sm_acc[WARPS][G][D / 2];
    #pragma unroll
    for (int j = 0; j < G; ++j) {
        if (lane == 0) {
            sm_m[warp][j] = m[j];
            sm_s[warp][j] = s[j];
        }
        #pragma unroll
        for (int p = 0; p < PAIRS; ++p) sm_acc[warp][j][lane + 32 * p] = acc[j][p];
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < G * (D / 2); idx += THREADS) {
        const int j = idx / (D / 2), e = idx % (D / 2);
        float mj = NEG_INF;
        for (int w = 0; w < WARPS; ++w) mj = fmaxf(mj, sm_m[w][j]);
        float sj = 0.0f;
        float2 a = make_float2(0.0f, 0.0f);
        for (int w = 0; w < WARPS; ++w) {
            const float f = sm_m[w][j] == NEG_INF ? 0.0f : __expf(sm_m[w][j] - mj);
            sj += f * sm_s[w][j];
            a.x += f * sm_acc[w][j][e].x;
            a.y += f * sm_acc[w][j][e].y;
        }
        const long long part = ((long long)head * G + j) * chunks + chunk;
        reinterpret_cast<float2*>(part_out + part * D)[e] = a;
        if (e == 0) {
            part_max[part] = mj;
            part_sum[part] = sj;
        }
    }
}

// Merges the chunks of every (KV head, query row): one block each, D threads.
template <int D>
__device__ void attention_merge(
    const float* __restrict__ part_out, const float* __restrict__ part_max,
    const float* __restrict__ part_sum, int chunks, float* __restrict__ out) {
    const long long row = blockIdx.x;
    float m = NEG_INF;
    for (int c = 0; c < chunks; ++c) m = fmaxf(m, part_max[row * chunks + c]);
    for (int e = threadIdx.x; e < D; e += blockDim.x) {
        float s = 0.0f, a = 0.0f;
        for (int c = 0; c < chunks; ++c) {
            const float mc = part_max[row * chunks + c];
            const float f = mc == NEG_INF ? 0.0f : __expf(mc - m);
            s += f * part_sum[row * chunks + c];
            a += f * part_out[(row * chunks + c) * D + e];
        }
        out[row * D + e] = s > 0.0f ? a / s : 0.0f;
    }
}

#define ATTENTION(G, D)                                                                          \
    extern "C" __global__ void __launch_bounds__(THREADS) attention_chunk_g##G##_d##D(           \
        const __half* keys, const __half* values, long long head_stride, int heads_per_kv,         \
        const float* queries,                                                                   \
        const unsigned* ids, int ids_stride, const int* n_ids, int chunk_len, float scale,       \
        float* part_out, float* part_max, float* part_sum) {                                     \
        attention_chunk<G, D>(keys, values, head_stride, heads_per_kv, queries, ids, ids_stride,  \
                              n_ids,                                                           \
                              chunk_len, scale, part_out, part_max, part_sum);                   \
    }

#define MERGE(D)                                                                                 \
    extern "C" __global__ void attention_merge_d##D(const float* part_out, const float* part_max, \
                                                    const float* part_sum, int chunks,            \
                                                    float* out) {                                 \
        attention_merge<D>(part_out, part_max, part_sum, chunks, out);                           \
    }

ATTENTION(1, 64)
ATTENTION(2, 64)
ATTENTION(3, 64)
ATTENTION(4, 64)

ATTENTION(1, 128)
ATTENTION(2, 128)
ATTENTION(3, 128)
ATTENTION(4, 128)
ATTENTION(8, 128)
MERGE(64)
MERGE(128)
