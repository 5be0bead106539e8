// ClusterKV selection on the GPU, one block per selection (a KV head under PerKvHead, a
// query head under PerQueryHead): score every cluster (`q · centroid`, the query rows of
// the selection summed), rank them (score descending, ties to the lower cluster id, any
// number of clusters up to MAX_CLUSTERS) with a bitonic sort in shared memory, then copy
// the members of the best clusters until `count` ids are taken, the last cluster cut.
// The twin of `ClusterKvSelector::choose` (ckv-select) on the CPU.
//
// Shapes (row-major, per selection s):
//   queries    [selections, rows_per_selection, d] f32
//   centroids  [clusters, d] f32 of the selection's KV head (`centroid_stride` apart per head)
//   sizes, offsets [heads, index_stride] u32: each cluster's size and the start of its
//              members in the head's members [heads, members_stride] u32 (token ids)
//   out        [selections, out_stride] u32: the `count` chosen ids (in rank order) from
//              position `out_offset` of each list (after the sink's ids)
//
// The launcher checks clusters <= MAX_CLUSTERS and d <= 256 (the shared arrays' sizes).

#define MAX_CLUSTERS 4096
#define THREADS 1024

// The ranking order: `a` before `b` when its score is higher, or equal with a lower id.
__device__ __forceinline__ bool before(float sa, unsigned ia, float sb, unsigned ib) {
    return sa > sb || (sa == sb && ia < ib);
}

extern "C" __global__ void __launch_bounds__(THREADS) clusterkv_select(
    const float* __restrict__ queries, int rows_per_selection, int d,
    const float* __restrict__ centroids, long long centroid_stride, int selections_per_head,
    const unsigned* __restrict__ sizes, const unsigned* __restrict__ offsets,
    const unsigned* __restrict__ members, long long members_stride, long long index_stride,
    int clusters, int count,
    unsigned* __restrict__ out, int out_stride, int out_offset) {
    __shared__ float score[MAX_CLUSTERS];
    __shared__ unsigned id[MAX_CLUSTERS];
    __shared__ float query[256];
    __shared__ unsigned partial[THREADS];
    const int sel = blockIdx.x;
    const int head = sel / selections_per_head;
    const float* c_head = centroids + head * centroid_stride;
    const unsigned* head_sizes = sizes + head * index_stride;
    const unsigned* head_offsets = offsets + head * index_stride;
    const unsigned* head_members = members + head * members_stride;

    // The selection's query: its rows summed (d <= 256).
    for (int e = threadIdx.x; e < d; e += blockDim.x) {
        float s = 0.0f;
        for (int r = 0; r < rows_per_selection; ++r) {
            s += queries[((long long)sel * rows_per_selection + r) * d + e];
        }
        query[e] = s;
    }
    __syncthreads();

    // Scores, one warp per cluster (coalesced reads of its centroid row); slots past the
    // last cluster sort last.
    int padded = 1;
    while (padded < clusters) padded <<= 1;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
    for (int c = warp; c < padded; c += warps) {
        float s = 0.0f;
        if (c < clusters) {
            const float* centroid = c_head + (long long)c * d;
            for (int e = lane; e < d; e += 32) s += query[e] * centroid[e];
            for (int offset = 16; offset > 0; offset >>= 1) s += __shfl_xor_sync(0xffffffffu, s, offset);
        }
        if (lane == 0) {
            score[c] = c < clusters ? s : __int_as_float(0xff800000);
            id[c] = c;
        }
    }
    __syncthreads();

    // Bitonic sort of `padded` (score, id) pairs into ranking order.
    for (int size = 2; size <= padded; size <<= 1) {
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int i = threadIdx.x; i < padded; i += blockDim.x) {
                const int j = i ^ stride;
                if (j > i) {
                    const bool ascending = (i & size) == 0;
                    const bool swap = ascending ? before(score[j], id[j], score[i], id[i])
                                                : before(score[i], id[i], score[j], id[j]);
                    if (swap) {
                        const float ts = score[i];
                        score[i] = score[j];
                        score[j] = ts;
                        const unsigned ti = id[i];
                        id[i] = id[j];
                        id[j] = ti;
                    }
                }
            }
            __syncthreads();
        }
    }

    // Tokens before each ranked cluster: an exclusive scan of the ranked sizes, in the
    // score buffer (the scores are no longer needed).
    unsigned* taken = reinterpret_cast<unsigned*>(score);
    for (int r = threadIdx.x; r < padded; r += blockDim.x) {
        taken[r] = r < clusters ? head_sizes[id[r]] : 0u;
    }
    __syncthreads();
    block_exclusive_scan(taken, padded, partial);

    // Copy the members of every ranked cluster that starts before `count`, the last cut.
    unsigned* sel_out = out + (long long)sel * out_stride + out_offset;
    for (int r = 0; r < clusters; ++r) {
        const unsigned start = taken[r];
        if (start >= (unsigned)count) break;
        const unsigned c = id[r];
        const unsigned n = min(head_sizes[c], (unsigned)count - start);
        const unsigned* from = head_members + head_offsets[c];
        for (unsigned i = threadIdx.x; i < n; i += blockDim.x) sel_out[start + i] = from[i];
    }
}
