// The KV side of a decode step: appending the new token's K/V to every KV head of a
// sequence, and the id lists the attention reads (sink, chosen, tail, current). The twins
// of `HeadKv::append` (ckv-cache) and `select_step` (ckv-select) on the CPU.
//
// Shapes (row-major):
//   key, value     [heads, d] f32, the new token's rows
//   keys, values   [heads, capacity, d] f16, `head_stride` = capacity * d apart
//   ids            [lists, stride] u32; n_ids [lists] i32

#include <cuda_fp16.h>

// One block per KV head: row `position` becomes the new rows, rounded to the nearest f16
// (ties to even), as `half::f16::from_f32` rounds.
extern "C" __global__ void kv_append(const float* __restrict__ key, const float* __restrict__ value,
                                     int d, long long head_stride, int position,
                                     __half* __restrict__ keys, __half* __restrict__ values) {
    const long long row = blockIdx.x * head_stride + (long long)position * d;
    for (int e = threadIdx.x; e < d; e += blockDim.x) {
        keys[row + e] = __float2half_rn(key[blockIdx.x * d + e]);
        values[row + e] = __float2half_rn(value[blockIdx.x * d + e]);
    }
}

// One block per id list of a step whose current token is `current`: the sink's ids
// [0, sink) first, then `chosen` ids (the whole clustered region [sink, clustered_end) when
// `fill_clustered`, else left to the selection kernel), then the tail [clustered_end,
// current) and the current token; n_ids[list] = their count. With `ids` null only n_ids is
// written (dense attention reads rows 0..n).
extern "C" __global__ void step_ids(unsigned* __restrict__ ids, int stride, int sink, int chosen,
                                    int fill_clustered, int clustered_end, int current,
                                    int* __restrict__ n_ids) {
    const int tail = current - clustered_end;
    const int n = sink + chosen + tail + 1;
    if (threadIdx.x == 0) n_ids[blockIdx.x] = n;
    if (ids == nullptr) return;
    unsigned* list = ids + (long long)blockIdx.x * stride;
    for (int i = threadIdx.x; i < sink; i += blockDim.x) list[i] = i;
    if (fill_clustered) {
        for (int i = threadIdx.x; i < chosen; i += blockDim.x) list[sink + i] = sink + i;
    }
    for (int i = threadIdx.x; i < tail; i += blockDim.x) list[sink + chosen + i] = clustered_end + i;
    if (threadIdx.x == 0) list[n - 1] = current;
}
