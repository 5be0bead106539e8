// K-means of one KV head's keys on the GPU, the twin of `ckv_cluster::kmeans`: rows
// normalised once; each iteration assigns every row to its most cosine-similar centroid
// (ties to the lower id), lists the members of every cluster in ascending token order
// (a stable counting sort), and moves every non-empty centroid to the mean of its
// members' raw rows (f32 sums in member order: deterministic, no atomics on values).
// Heads are independent: every kernel takes the head as blockIdx.y.
//
// Shapes (row-major, per head h, `n` rows of dimension `d`, `k` clusters):
//   keys      [heads, n, d] f16, `head_stride` apart
//   x, xn     [heads, n, d] f32 (raw, unit rows)
//   centroids [heads, k, d] f32          cn      [heads, k, d] f32 (unit centroids)
//   labels    [heads, n] u32             changed [heads] u32
//   sizes, offsets [heads, k] u32        members [heads, n] u32: token ids `first + row`

#include <cuda_fp16.h>

#define TILE_ROWS 32
#define TILE_CENTROIDS 32
#define ASSIGN_THREADS 256

__device__ __forceinline__ float warp_sum(float x) {
    for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
    return x;
}

// One warp per row: x = the row in f32, xn = x / |x| (zero rows stay zero).
extern "C" __global__ void kmeans_normalize(const __half* __restrict__ keys, long long head_stride,
                                            int n, int d, float* __restrict__ x,
                                            float* __restrict__ xn) {
    const int warps = blockDim.x / 32, lane = threadIdx.x % 32;
    const long long row = (long long)blockIdx.x * warps + threadIdx.x / 32;
    if (row >= n) return;
    const long long base = ((long long)blockIdx.y * n + row) * d;
    const __half* key = keys + blockIdx.y * head_stride + row * d;
    float sq = 0.0f;
    for (int e = lane; e < d; e += 32) {
        const float v = __half2float(key[e]);
        x[base + e] = v;
        sq += v * v;
    }
    sq = warp_sum(sq);
    const float inv = sq > 0.0f ? rsqrtf(sq) : 0.0f;
    for (int e = lane; e < d; e += 32) xn[base + e] = x[base + e] * inv;
}

// A block labels TILE_ROWS rows: centroids come through shared memory TILE_CENTROIDS at a
// time; thread t scores row t / 8 against centroids t % 8, t % 8 + 8, ... of each tile,
// and the 8 threads of a row agree on the best (score descending, ties to the lower id).
// Dynamic shared memory: (TILE_ROWS + TILE_CENTROIDS) * d floats.
extern "C" __global__ void __launch_bounds__(ASSIGN_THREADS) kmeans_assign(
    const float* __restrict__ xn, int n, const float* __restrict__ cn, int k, int d,
    unsigned* __restrict__ labels, unsigned* __restrict__ changed) {
    extern __shared__ float tile[];
    float* rows = tile;
    float* cents = tile + TILE_ROWS * d;
    const int head = blockIdx.y;
    const long long first = (long long)blockIdx.x * TILE_ROWS;
    const float* head_xn = xn + (long long)head * n * d;
    const float* head_cn = cn + (long long)head * k * d;
    for (int i = threadIdx.x; i < TILE_ROWS * d; i += blockDim.x) {
        const long long r = first + i / d;
        rows[i] = r < n ? head_xn[r * d + i % d] : 0.0f;
    }
    const int my_row = threadIdx.x / 8, my_lane = threadIdx.x % 8;
    float best = __int_as_float(0xff800000);
    unsigned best_id = 0;
    for (int c0 = 0; c0 < k; c0 += TILE_CENTROIDS) {
        __syncthreads();
        for (int i = threadIdx.x; i < TILE_CENTROIDS * d; i += blockDim.x) {
            const int c = c0 + i / d;
            cents[i] = c < k ? head_cn[(long long)c * d + i % d] : 0.0f;
        }
        __syncthreads();
        for (int j = my_lane; j < TILE_CENTROIDS && c0 + j < k; j += 8) {
            float s = 0.0f;
            for (int e = 0; e < d; ++e) s += rows[my_row * d + e] * cents[j * d + e];
            const unsigned id = c0 + j;
            if (s > best || (s == best && id < best_id)) {
                best = s;
                best_id = id;
            }
        }
    }
    // The 8 threads of a row are consecutive lanes of one warp.
    for (int offset = 4; offset > 0; offset >>= 1) {
        const float other = __shfl_xor_sync(0xffffffffu, best, offset);
        const unsigned other_id = __shfl_xor_sync(0xffffffffu, best_id, offset);
        if (other > best || (other == best && other_id < best_id)) {
            best = other;
            best_id = other_id;
        }
    }
    const long long row = first + my_row;
    if (my_lane == 0 && row < n) {
        unsigned* label = labels + (long long)head * n + row;
        if (*label != best_id) {
            *label = best_id;
            atomicAdd(changed + head, 1u);
        }
    }
}

// One block per (cluster, head): the cluster's members in ascending row order, found by
// scanning the labels in order (a stable counting sort: O(k n) work, deterministic).
// offsets must hold the exclusive prefix of sizes (kmeans_sizes below).
extern "C" __global__ void kmeans_members(const unsigned* __restrict__ labels, int n, int k,
                                          unsigned first, const unsigned* __restrict__ offsets,
                                          unsigned* __restrict__ members) {
    __shared__ unsigned warp_counts[32];
    __shared__ unsigned base;
    const int head = blockIdx.y;
    const unsigned cluster = blockIdx.x;
    const unsigned* head_labels = labels + (long long)head * n;
    unsigned* out = members + (long long)head * n + offsets[(long long)head * k + cluster];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
    if (threadIdx.x == 0) base = 0;
    __syncthreads();
    for (long long start = 0; start < n; start += blockDim.x) {
        const long long i = start + threadIdx.x;
        const bool mine = i < n && head_labels[i] == cluster;
        const unsigned ballot = __ballot_sync(0xffffffffu, mine);
        if (lane == 0) warp_counts[warp] = __popc(ballot);
        __syncthreads();
        unsigned before = base;
        for (int w = 0; w < warp; ++w) before += warp_counts[w];
        if (mine) out[before + __popc(ballot & ((1u << lane) - 1u))] = first + (unsigned)i;
        __syncthreads();
        if (threadIdx.x == 0) {
            for (int w = 0; w < warps; ++w) base += warp_counts[w];
        }
        __syncthreads();
    }
}

// One block per head: sizes[c] = rows labelled c, offsets = their exclusive prefix
// (k <= 4096; blockDim.x = 1024).
extern "C" __global__ void kmeans_sizes(const unsigned* __restrict__ labels, int n, int k,
                                        unsigned* __restrict__ sizes, unsigned* __restrict__ offsets) {
    __shared__ unsigned count[4096];
    const int head = blockIdx.x;
    for (int c = threadIdx.x; c < k; c += blockDim.x) count[c] = 0;
    __syncthreads();
    for (long long i = threadIdx.x; i < n; i += blockDim.x) atomicAdd(&count[labels[(long long)head * n + i]], 1u);
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned run = 0;
        for (int c = 0; c < k; ++c) {
            sizes[(long long)head * k + c] = count[c];
            offsets[(long long)head * k + c] = run;
            run += count[c];
        }
    }
}

// One block per (cluster, head), threads over d: a non-empty centroid becomes the mean of
// its members' raw rows (summed in member order), an empty one stays; cn is its unit copy.
extern "C" __global__ void kmeans_update(const float* __restrict__ x, int n, int k, int d, unsigned first,
                                         const unsigned* __restrict__ sizes,
                                         const unsigned* __restrict__ offsets,
                                         const unsigned* __restrict__ members,
                                         float* __restrict__ centroids, float* __restrict__ cn) {
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
    for (int e = threadIdx.x; e < d; e += blockDim.x) cn[((long long)head * k + cluster) * d + e] = centroid[e] * inv;
}
