// Device functions every kernel source may use: NVRTC compiles each source with this
// prelude in front (`ckv_kernels::PRELUDE`).

// The sum of `x` over the 32 lanes of a warp, in every lane.
__device__ __forceinline__ float warp_sum(float x) {
    for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
    return x;
}

// Replaces a[0, len) by its exclusive prefix sums. Every thread of the block calls it
// (blockDim.x <= 1024): each sums a run of the array, the runs' sums are scanned through
// `partial` (blockDim.x values of shared memory), then each thread rewrites its run.
__device__ void block_exclusive_scan(unsigned* a, long long len, unsigned* partial) {
    const long long per = (len + blockDim.x - 1) / blockDim.x;
    const long long begin = threadIdx.x * per, end = min(len, begin + per);
    unsigned local = 0;
    for (long long i = begin; i < end; ++i) local += a[i];
    partial[threadIdx.x] = local;
    __syncthreads();
    for (int offset = 1; offset < blockDim.x; offset <<= 1) {
        const unsigned v = threadIdx.x >= offset ? partial[threadIdx.x - offset] : 0u;
        __syncthreads();
        partial[threadIdx.x] += v;
        __syncthreads();
    }
    unsigned run = partial[threadIdx.x] - local;
    for (long long i = begin; i < end; ++i) {
        const unsigned t = a[i];
        a[i] = run;
        run += t;
    }
    __syncthreads();
}
