// ClusterKV selection on the GPU, the twin of `ClusterKvSelector::choose` (ckv-select) on
// the CPU. A selection is a KV head under PerKvHead, a query head under PerQueryHead: it
// scores every cluster of its KV head (`q · centroid`, q the selection's query rows summed,
// the f16 centroids read as float, f32 sums), ranks the clusters (score descending as
// `f32::total_cmp` orders it, ties to the lower cluster id; any number of clusters) and
// copies the members of whole clusters in rank order until `count` ids are taken, the last
// cluster cut to its first members.
//
// The ranking sorts 64-bit keys, `rank_key(score) << 32 | cluster id`, ascending: ascending
// keys are the rank order, and keys are distinct (ids are). A NaN score is keyed as the
// positive NaN the GPU's arithmetic yields, which total_cmp puts above +inf: it ranks
// first, the NaNs among themselves by id. Padding keys are all ones, after every cluster.
// Clusters are ranked in runs of TILE:
//   1. clusterkv_select, block (selection, run): scores the run's clusters and bitonic-sorts
//      their keys in shared memory. With one run (clusters <= TILE) it takes the ids itself
//      (the fast path, one launch); else it writes its sorted run to `sorted`.
//   2. clusterkv_select_rank (clusters > TILE), a thread per key: its rank is its position
//      in its run plus, for every other run, how many of that run's keys are smaller (a
//      binary search); order[rank] = its cluster id.
//   3. clusterkv_select_take (clusters > TILE), a block per selection: the ranked sizes,
//      their exclusive scan and the copy, as the fast path does in shared memory.
//
// Shapes (row-major, per selection s):
//   queries    [selections, rows_per_selection, d] f32
//   centroids  [clusters, d] f16 of the selection's KV head (`centroid_stride` apart per head)
//   sizes, offsets [heads, index_stride] u32: each cluster's size and the start of its
//              members in the head's members [heads, members_stride] u32 (token ids)
//   out        [selections, out_stride] u32: the `count` chosen ids (in rank order) from
//              position `out_offset` of each list (after the sink's ids)
//   sorted     [selections, clusters] u64 scratch: the sorted runs (run r at r * TILE), then
//              the ranked sizes (u32, in the first half of each selection's row)
//   order      [selections, clusters] u32 scratch: the cluster ids in rank order
//
// The launcher checks d <= 256 (the shared query) and sizes the scratch (clusters > TILE).

#include <cuda_fp16.h>

#define TILE 4096
#define THREADS 1024
#define RANK_THREADS 256
#define PADDING_KEY 0xffffffffffffffffull

// The high half of a ranking key: ascending keys order scores descending, as
// `b.total_cmp(&a)` does (-0 after +0); any NaN is keyed as the positive NaN 0x7fffffff.
__device__ __forceinline__ unsigned rank_key(float score) {
    const unsigned bits = score != score ? 0x7fffffffu : __float_as_uint(score);
    return (bits & 0x80000000u) ? bits : ~bits & 0x7fffffffu;
}

// Copies, in rank order, the members of every ranked cluster that starts before `count`, the
// last one cut. `taken` holds the `clusters` sizes in rank order (written before a
// __syncthreads) and becomes their exclusive scan, each cluster's place in the output;
// `order` the cluster ids in rank order. A warp per ranked cluster.
__device__ void take_ranked(const unsigned* order, unsigned* taken, int clusters, int count,
                            const unsigned* __restrict__ head_sizes, const unsigned* __restrict__ head_offsets,
                            const unsigned* __restrict__ head_members, unsigned* __restrict__ sel_out,
                            unsigned* partial) {
    block_exclusive_scan(taken, clusters, partial);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
    for (int r = warp; r < clusters; r += warps) {
        const unsigned start = taken[r];
        if (start >= (unsigned)count) break;  // the starts ascend with the rank
        const unsigned c = order[r];
        const unsigned n = min(head_sizes[c], (unsigned)count - start);
        const unsigned* from = head_members + head_offsets[c];
        for (unsigned i = lane; i < n; i += 32) sel_out[start + i] = from[i];
    }
}

// Block (selection, run) of THREADS threads: the run's keys sorted; then the ids taken (one
// run) or the sorted run written to `sorted` (several).
extern "C" __global__ void __launch_bounds__(THREADS) clusterkv_select(
    const float* __restrict__ queries, int rows_per_selection, int d,
    const __half* __restrict__ centroids, long long centroid_stride, int selections_per_head,
    const unsigned* __restrict__ sizes, const unsigned* __restrict__ offsets,
    const unsigned* __restrict__ members, long long members_stride, long long index_stride,
    int clusters, int count, unsigned* __restrict__ out, int out_stride, int out_offset,
    unsigned long long* __restrict__ sorted) {
    __shared__ unsigned long long key[TILE];
    __shared__ __align__(16) float query[256];
    __shared__ unsigned partial[THREADS];
    const int sel = blockIdx.x, head = sel / selections_per_head;
    const int first = blockIdx.y * TILE, len = min(TILE, clusters - first);
    const __half* c_head = centroids + head * centroid_stride;
    const unsigned* head_sizes = sizes + head * index_stride;

    // The selection's query: its rows summed (d <= 256).
    for (int e = threadIdx.x; e < d; e += blockDim.x) {
        float s = 0.0f;
        for (int r = 0; r < rows_per_selection; ++r) {
            s += queries[((long long)sel * rows_per_selection + r) * d + e];
        }
        query[e] = s;
    }
    __syncthreads();

    // Keys, one warp per cluster (coalesced reads of its centroid row, two halves a lane
    // at a time where d is even), four clusters at once; padding slots sort last.
    int padded = 1;
    while (padded < len) padded <<= 1;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
    for (int i0 = 4 * warp; i0 < len; i0 += 4 * warps) {
        float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        const __half* row = c_head + (long long)(first + i0) * d;
        if ((d & 1) == 0) {
            const float2* q2 = reinterpret_cast<const float2*>(query);
            for (int e = lane; e < d / 2; e += 32) {
                const float2 q = q2[e];
                #pragma unroll
                for (int u = 0; u < 4; ++u) {
                    if (i0 + u < len) {
                        const float2 v = __half22float2(reinterpret_cast<const __half2*>(row + u * d)[e]);
                        s[u] += q.x * v.x + q.y * v.y;
                    }
                }
            }
        } else {
            for (int e = lane; e < d; e += 32) {
                #pragma unroll
                for (int u = 0; u < 4; ++u) {
                    if (i0 + u < len) s[u] += query[e] * __half2float(row[u * d + e]);
                }
            }
        }
        #pragma unroll
        for (int u = 0; u < 4; ++u) {
            const float total = warp_sum(s[u]);
            if (lane == 0 && i0 + u < len) {
                key[i0 + u] = ((unsigned long long)rank_key(total) << 32) | (unsigned)(first + i0 + u);
            }
        }
    }
    for (int i = len + threadIdx.x; i < padded; i += blockDim.x) key[i] = PADDING_KEY;
    __syncthreads();

    // Bitonic sort of the `padded` keys, ascending: each thread orders pairs (i, i + stride).
    for (int size = 2; size <= padded; size <<= 1) {
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int p = threadIdx.x; p < padded / 2; p += blockDim.x) {
                const int i = 2 * p - (p & (stride - 1)), j = i + stride;
                const unsigned long long a = key[i], b = key[j];
                if ((a > b) == ((i & size) == 0)) {
                    key[i] = b;
                    key[j] = a;
                }
            }
            __syncthreads();
        }
    }

    if (gridDim.y > 1) {
        unsigned long long* run = sorted + (long long)sel * clusters + first;
        for (int i = threadIdx.x; i < len; i += blockDim.x) run[i] = key[i];
        return;
    }

    // One run: the ids in rank order and their sizes, in the key array (read first).
    unsigned* order = reinterpret_cast<unsigned*>(key);
    unsigned* taken = order + TILE;
    unsigned ids[TILE / THREADS];
    #pragma unroll
    for (int j = 0; j < TILE / THREADS; ++j) {
        const int i = threadIdx.x + j * THREADS;
        ids[j] = i < len ? (unsigned)key[i] : 0u;
    }
    __syncthreads();
    #pragma unroll
    for (int j = 0; j < TILE / THREADS; ++j) {
        const int i = threadIdx.x + j * THREADS;
        if (i < len) {
            order[i] = ids[j];
            taken[i] = head_sizes[ids[j]];
        }
    }
    __syncthreads();
    take_ranked(order, taken, len, count, head_sizes, offsets + head * index_stride,
                members + head * members_stride, out + (long long)sel * out_stride + out_offset, partial);
}

// A thread per key of the sorted runs of selection blockIdx.y: its rank among all
// `clusters` keys; order[rank] = its cluster id.
extern "C" __global__ void __launch_bounds__(RANK_THREADS) clusterkv_select_rank(
    const unsigned long long* __restrict__ sorted, int clusters, unsigned* __restrict__ order) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= clusters) return;
    const unsigned long long* keys = sorted + (long long)blockIdx.y * clusters;
    const unsigned long long k = keys[i];
    const int own = i / TILE, runs = (clusters + TILE - 1) / TILE;
    int rank = i - own * TILE;
    for (int r = 0; r < runs; ++r) {
        if (r == own) continue;
        // Keys of run r below k: the first position whose key is not below k.
        const int begin = r * TILE;
        int lo = begin, hi = min(clusters, begin + TILE);
        while (lo < hi) {
            const int mid = (lo + hi) >> 1;
            if (keys[mid] < k) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        rank += lo - begin;
    }
    order[(long long)blockIdx.y * clusters + rank] = (unsigned)k;
}

// A block of THREADS threads per selection: its ranked sizes (in its row of `sorted`,
// whose keys are no longer needed), their scan, the copy.
extern "C" __global__ void __launch_bounds__(THREADS) clusterkv_select_take(
    const unsigned* __restrict__ order, unsigned long long* __restrict__ sorted, int selections_per_head,
    const unsigned* __restrict__ sizes, const unsigned* __restrict__ offsets,
    const unsigned* __restrict__ members, long long members_stride, long long index_stride,
    int clusters, int count, unsigned* __restrict__ out, int out_stride, int out_offset) {
    __shared__ unsigned partial[THREADS];
    const int sel = blockIdx.x, head = sel / selections_per_head;
    const unsigned* head_sizes = sizes + head * index_stride;
    const unsigned* sel_order = order + (long long)sel * clusters;
    unsigned* taken = reinterpret_cast<unsigned*>(sorted + (long long)sel * clusters);
    for (int r = threadIdx.x; r < clusters; r += blockDim.x) taken[r] = head_sizes[sel_order[r]];
    __syncthreads();
    take_ranked(sel_order, taken, clusters, count, head_sizes, offsets + head * index_stride,
                members + head * members_stride, out + (long long)sel * out_stride + out_offset, partial);
}
