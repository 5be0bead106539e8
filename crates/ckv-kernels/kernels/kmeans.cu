// K-means of the keys of every KV head on the GPU, the twin of `ckv_cluster::kmeans`: rows
// normalised once; each iteration assigns every row to its most cosine-similar centroid
// (ties to the lower id) with tensor-core products of unit rows and unit centroids in f16
// (f32 accumulation), lists the members of every cluster in ascending token order (a
// stable counting sort: per-block counts, one scan, a stable scatter), and moves every
// non-empty centroid to the mean of its members' raw rows (f32 sums in member order:
// deterministic, no atomics on values). Heads are independent: blockIdx.y is the head,
// except in kmeans_scan (blockIdx.x). Any number of clusters: the counts and the scatter
// keep theirs in shared memory up to MAX_K, in global memory beyond. The index the selection
// ranks takes an f16 copy of the final centroids (kmeans_centroids_f16).
//
// Shapes (row-major, per head h, `n` rows of dimension `d`, `k` clusters, `dp` = d rounded
// up to a multiple of 16, the padding zero):
//   keys      [heads, _, d] f16, `head_stride` apart
//   x         [heads, n, d] f32 (raw rows)        xn [heads, n, dp] f16 (unit rows)
//   centroids [heads, k, d] f32                   cn [heads, k, dp] f16 (unit centroids)
//   labels    [heads, n] u32                      changed [heads] u32
//   counts    [heads, k, blocks] u32 (rows of each cluster in each block of COUNT_ROWS)
//   sizes, offsets [heads, k] u32                 members [heads, n] u32: ids `first + row`
//   out       [heads, k, d] f16 (kmeans_centroids_f16: the centroids rounded)

#include <cuda_fp16.h>

#define MAX_K 4096
#define ASSIGN_WARPS 4
#define ASSIGN_ROWS (16 * ASSIGN_WARPS)
#define ASSIGN_CENTROIDS 32
#define COUNT_ROWS 1024
#define NEG_INF __int_as_float(0xff800000)

// One warp per row: x = the row in f32, xn = x / |x| in f16 (zero rows stay zero).
extern "C" __global__ void kmeans_normalize(const __half* __restrict__ keys, long long head_stride,
                                            int n, int d, int dp, float* __restrict__ x,
                                            __half* __restrict__ xn) {
    const int warps = blockDim.x / 32, lane = threadIdx.x % 32;
    const long long row = (long long)blockIdx.x * warps + threadIdx.x / 32;
    if (row >= n) return;
    const long long at = (long long)blockIdx.y * n + row;
    const __half* key = keys + blockIdx.y * head_stride + row * d;
    float sq = 0.0f;
    for (int e = lane; e < d; e += 32) {
        const float v = __half2float(key[e]);
        x[at * d + e] = v;
        sq += v * v;
    }
    sq = warp_sum(sq);
    const float inv = sq > 0.0f ? rsqrtf(sq) : 0.0f;
    for (int e = lane; e < dp; e += 32) xn[at * dp + e] = __float2half_rn(e < d ? x[at * d + e] * inv : 0.0f);
}

// D += A B for one m16n8k16 tile: A 16x16 row-major, B 16x8 column-major, f16 in, f32 out.
__device__ __forceinline__ void mma_16x8x16(float* c, const unsigned* a, const unsigned* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Keeps (s, id) when it ranks before (best, best_id): higher, or equal with a lower id.
__device__ __forceinline__ void keep_best(float s, unsigned id, float& best, unsigned& best_id) {
    if (s > best || (s == best && id < best_id)) {
        best = s;
        best_id = id;
    }
}

// Copies `count` rows of `dp` halves (global, dense) into shared memory rows `stride`
// halves apart, zeros past `valid` rows; 16 bytes at a time.
__device__ __forceinline__ void load_tile(const __half* __restrict__ from, int count, int valid, int dp,
                                          int stride, __half* to) {
    const int vectors = dp / 8;
    for (int i = threadIdx.x; i < count * vectors; i += blockDim.x) {
        const int r = i / vectors, v = i % vectors;
        const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
        *reinterpret_cast<uint4*>(to + r * stride + v * 8) =
            r < valid ? reinterpret_cast<const uint4*>(from + (long long)r * dp)[v] : zero;
    }
}

// A block labels ASSIGN_ROWS rows, 16 per warp; centroids come through shared memory
// ASSIGN_CENTROIDS at a time, and each warp scores its 16 rows against them on the tensor
// cores (m16n8k16). Lane (g, t) = (lane / 4, lane % 4) holds the scores of rows g and
// g + 8 against centroids 2t and 2t + 1 of every 8; it keeps the best of each row in id
// order, then the 4 lanes of a row agree. Shared rows are dp + 8 halves apart (no bank
// conflicts). Dynamic shared memory: (ASSIGN_ROWS + ASSIGN_CENTROIDS) * (dp + 8) halves.
extern "C" __global__ void __launch_bounds__(32 * ASSIGN_WARPS) kmeans_assign(
    const __half* __restrict__ xn, int n, const __half* __restrict__ cn, int k, int dp,
    unsigned* __restrict__ labels, unsigned* __restrict__ changed) {
    extern __shared__ __align__(16) __half tile[];
    const int stride = dp + 8;
    __half* rows = tile;
    __half* cents = tile + ASSIGN_ROWS * stride;
    const int head = blockIdx.y, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane / 4, t = lane % 4;
    const long long first = (long long)blockIdx.x * ASSIGN_ROWS;
    load_tile(xn + ((long long)head * n + first) * dp, ASSIGN_ROWS, (int)min((long long)ASSIGN_ROWS, n - first),
              dp, stride, rows);
    const __half* my_rows = rows + warp * 16 * stride;
    float best[2] = {NEG_INF, NEG_INF};
    unsigned best_id[2] = {0u, 0u};
    for (int c0 = 0; c0 < k; c0 += ASSIGN_CENTROIDS) {
        __syncthreads();
        load_tile(cn + ((long long)head * k + c0) * dp, ASSIGN_CENTROIDS, min(ASSIGN_CENTROIDS, k - c0), dp,
                  stride, cents);
        __syncthreads();
        float acc[ASSIGN_CENTROIDS / 8][4];
        #pragma unroll
        for (int j = 0; j < ASSIGN_CENTROIDS / 8; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
        for (int kk = 0; kk < dp; kk += 16) {
            unsigned a[4];
            a[0] = *reinterpret_cast<const unsigned*>(my_rows + g * stride + kk + 2 * t);
            a[1] = *reinterpret_cast<const unsigned*>(my_rows + (g + 8) * stride + kk + 2 * t);
            a[2] = *reinterpret_cast<const unsigned*>(my_rows + g * stride + kk + 2 * t + 8);
            a[3] = *reinterpret_cast<const unsigned*>(my_rows + (g + 8) * stride + kk + 2 * t + 8);
            #pragma unroll
            for (int j = 0; j < ASSIGN_CENTROIDS / 8; ++j) {
                const __half* centroid = cents + (j * 8 + g) * stride + kk + 2 * t;
                unsigned b[2];
                b[0] = *reinterpret_cast<const unsigned*>(centroid);
                b[1] = *reinterpret_cast<const unsigned*>(centroid + 8);
                mma_16x8x16(acc[j], a, b);
            }
        }
        #pragma unroll
        for (int j = 0; j < ASSIGN_CENTROIDS / 8; ++j) {
            #pragma unroll
            for (int e = 0; e < 2; ++e) {
                const unsigned id = c0 + j * 8 + 2 * t + e;
                if (id < (unsigned)k) {
                    keep_best(acc[j][e], id, best[0], best_id[0]);
                    keep_best(acc[j][2 + e], id, best[1], best_id[1]);
                }
            }
        }
    }
    #pragma unroll
    for (int r = 0; r < 2; ++r) {
        for (int offset = 1; offset < 4; offset <<= 1) {
            const float other = __shfl_xor_sync(0xffffffffu, best[r], offset);
            const unsigned other_id = __shfl_xor_sync(0xffffffffu, best_id[r], offset);
            keep_best(other, other_id, best[r], best_id[r]);
        }
        const long long row = first + warp * 16 + g + 8 * r;
        if (t == 0 && row < n) {
            unsigned* label = labels + (long long)head * n + row;
            if (*label != best_id[r]) {
                *label = best_id[r];
                atomicAdd(changed + head, 1u);
            }
        }
    }
}

// Block (b, head) counts its COUNT_ROWS rows per cluster: counts[head][c][b]. Up to MAX_K
// clusters count in shared memory; more count straight into the block's column of `counts`
// (global atomics), so that any number of clusters is counted.
extern "C" __global__ void kmeans_block_counts(const unsigned* __restrict__ labels, int n, int k,
                                               unsigned* __restrict__ counts) {
    __shared__ unsigned count[MAX_K];
    const int head = blockIdx.y, b = blockIdx.x, blocks = gridDim.x;
    const int end = min(n, (b + 1) * COUNT_ROWS);
    const unsigned* head_labels = labels + (long long)head * n;
    if (k > MAX_K) {
        unsigned* column = counts + (long long)head * k * blocks + b;
        for (int c = threadIdx.x; c < k; c += blockDim.x) column[(long long)c * blocks] = 0u;
        __syncthreads();
        for (int i = b * COUNT_ROWS + threadIdx.x; i < end; i += blockDim.x) {
            atomicAdd(column + (long long)head_labels[i] * blocks, 1u);
        }
        return;
    }
    for (int c = threadIdx.x; c < k; c += blockDim.x) count[c] = 0u;
    __syncthreads();
    for (int i = b * COUNT_ROWS + threadIdx.x; i < end; i += blockDim.x) atomicAdd(&count[head_labels[i]], 1u);
    __syncthreads();
    for (int c = threadIdx.x; c < k; c += blockDim.x) counts[((long long)head * k + c) * blocks + b] = count[c];
}

// One block of 1024 threads per head: the counts become, in place, the exclusive prefix
// over (cluster, block) in that order, where each block's rows of each cluster start;
// sizes and offsets follow.
extern "C" __global__ void __launch_bounds__(1024) kmeans_scan(unsigned* __restrict__ counts, int n, int k,
                                                              int blocks, unsigned* __restrict__ sizes,
                                                              unsigned* __restrict__ offsets) {
    __shared__ unsigned partial[1024];
    const int head = blockIdx.x;
    const long long total = (long long)k * blocks;
    unsigned* base = counts + head * total;
    block_exclusive_scan(base, total, partial);
    for (int c = threadIdx.x; c < k; c += blockDim.x) {
        const unsigned start = base[(long long)c * blocks];
        const unsigned next = c + 1 < k ? base[(long long)(c + 1) * blocks] : (unsigned)n;
        offsets[(long long)head * k + c] = start;
        sizes[(long long)head * k + c] = next - start;
    }
}

// One warp per (block, head): the block's rows in order, each to the next slot of its
// cluster (from the scanned counts), so every cluster lists its rows in ascending order.
// The cursors are in shared memory for up to MAX_K clusters; beyond, the block's column of
// `starts` itself (advanced in place: the scanned counts are not read again).
extern "C" __global__ void kmeans_scatter(const unsigned* __restrict__ labels, int n, int k,
                                          unsigned* __restrict__ starts, unsigned first,
                                          unsigned* __restrict__ members) {
    __shared__ unsigned shared_cursor[MAX_K];
    const int head = blockIdx.y, b = blockIdx.x, blocks = gridDim.x, lane = threadIdx.x;
    unsigned* column = starts + (long long)head * k * blocks + b;
    const bool in_shared = k <= MAX_K;
    if (in_shared) {
        for (int c = lane; c < k; c += 32) shared_cursor[c] = column[(long long)c * blocks];
    }
    unsigned* cursor = in_shared ? shared_cursor : column;
    const long long step = in_shared ? 1 : blocks;
    __syncwarp();
    const int end = min(n, (b + 1) * COUNT_ROWS);
    for (int base = b * COUNT_ROWS; base < end; base += 32) {
        const int i = base + lane;
        const bool valid = i < end;
        const unsigned label = valid ? labels[(long long)head * n + i] : 0xffffffffu;
        const unsigned peers = __match_any_sync(0xffffffffu, label);
        const unsigned rank = __popc(peers & ((1u << lane) - 1u));
        if (valid) members[(long long)head * n + cursor[label * step] + rank] = first + (unsigned)i;
        __syncwarp();
        if (valid && rank == 0) cursor[label * step] += __popc(peers);
        __syncwarp();
    }
}

// One block per (cluster, head), threads over d: a non-empty centroid becomes the mean of
// its members' raw rows (summed in member order), an empty one stays; cn is its unit copy
// in f16, zero-padded to dp.
extern "C" __global__ void kmeans_update(const float* __restrict__ x, int n, int k, int d, int dp,
                                         unsigned first, const unsigned* __restrict__ sizes,
                                         const unsigned* __restrict__ offsets,
                                         const unsigned* __restrict__ members,
                                         float* __restrict__ centroids, __half* __restrict__ cn) {
    __shared__ float norm_sq[32];
    const int head = blockIdx.y, cluster = blockIdx.x;
    const unsigned size = sizes[(long long)head * k + cluster];
    const unsigned* list = members + (long long)head * n + offsets[(long long)head * k + cluster];
    float* centroid = centroids + ((long long)head * k + cluster) * d;
    float sq = 0.0f;
    for (int e = threadIdx.x; e < d; e += blockDim.x) {
        if (size > 0) {
            float s = 0.0f;
            for (unsigned m = 0; m < size; ++m) s += x[((long long)head * n + (list[m] - first)) * d + e];
            centroid[e] = s / (float)size;
        }
        sq += centroid[e] * centroid[e];
    }
    sq = warp_sum(sq);
    if (threadIdx.x % 32 == 0) norm_sq[threadIdx.x / 32] = sq;
    __syncthreads();
    float total = 0.0f;
    for (int w = 0; w < (blockDim.x + 31) / 32; ++w) total += norm_sq[w];
    const float inv = total > 0.0f ? rsqrtf(total) : 0.0f;
    __half* unit = cn + ((long long)head * k + cluster) * dp;
    for (int e = threadIdx.x; e < dp; e += blockDim.x) unit[e] = __float2half_rn(e < d ? centroid[e] * inv : 0.0f);
}

// The f16 copy of `len` centroid values that the selection reads: each rounded to the
// nearest f16, ties to even (as `half::f16::from_f32` rounds).
extern "C" __global__ void kmeans_centroids_f16(const float* __restrict__ centroids, long long len,
                                                __half* __restrict__ out) {
    const long long threads = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < len; i += threads) {
        out[i] = __float2half_rn(centroids[i]);
    }
}
