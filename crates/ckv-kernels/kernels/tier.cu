// The device tier of ClusterKV's offload on the GPU, the twin of `ckv_cache::DeviceTier`:
// per KV head, slots of KV rows for the attended set. A step marks the rows its id lists
// need, frees the slots no step of the last `reuse` attended, gives each missing row a
// free slot and copies it from the host tier (pinned host memory mapped into the GPU's
// address space: the kernel reads it over the bus, no staging copy), then writes the
// lists as slots for the attention kernel.
//
// Shapes (row-major, per KV head h; `lists` id lists per head of `stride` ids):
//   ids        [heads * lists, stride] u32 tokens; slot_ids the same as slots; n_ids [heads * lists]
//   host K, V  [heads, _, d] f16 at `host_stride` apart (mapped host memory)
//   tier K, V  [heads, slots, d] f16
//   slot_of    [heads, tokens] u32 (NONE: not held)      token_of, last_used [heads, slots] u32
//   missing, free [heads, slots] u32 (scratch)             stats [heads, 5] u64: attended,
//              hits, fetched (the current token aside; steps after the first), rows beyond
//              the slots (must stay 0), rows the first step fetched into the empty tier

#include <cuda_fp16.h>

#define NONE 0xffffffffu
#define PENDING 0xfffffffeu
#define TIER_THREADS 1024

extern "C" __global__ void __launch_bounds__(TIER_THREADS) tier_step(
    const unsigned* __restrict__ ids, unsigned* __restrict__ slot_ids, const int* __restrict__ n_ids,
    int lists, int stride,
    const __half* __restrict__ host_keys, const __half* __restrict__ host_values, long long host_stride,
    __half* __restrict__ keys, __half* __restrict__ values, int slots, int d,
    unsigned* __restrict__ slot_of, int tokens, unsigned* __restrict__ token_of,
    unsigned* __restrict__ last_used, unsigned* __restrict__ missing, unsigned* __restrict__ free_slots,
    unsigned step, unsigned reuse, unsigned current, unsigned long long* __restrict__ stats) {
    __shared__ unsigned n_missing, n_free, attended, hits, fetched;
    const int head = blockIdx.x;
    unsigned* head_slot_of = slot_of + (long long)head * tokens;
    unsigned* head_token_of = token_of + (long long)head * slots;
    unsigned* head_last = last_used + (long long)head * slots;
    unsigned* head_missing = missing + (long long)head * slots;
    unsigned* head_free = free_slots + (long long)head * slots;
    if (threadIdx.x == 0) n_missing = n_free = attended = hits = fetched = 0;
    __syncthreads();

    // Mark what the lists need: held rows are stamped with this step, missing rows listed
    // once (the first thread to claim a token lists it).
    for (int l = 0; l < lists; ++l) {
        const int list = head * lists + l;
        const unsigned* list_ids = ids + (long long)list * stride;
        for (int i = threadIdx.x; i < n_ids[list]; i += blockDim.x) {
            const unsigned id = list_ids[i];
            const unsigned slot = head_slot_of[id];
            if (slot == NONE) {
                if (atomicCAS(&head_slot_of[id], NONE, PENDING) == NONE) {
                    // Only `slots` rows can be placed: those beyond are counted, not listed
                    // (they stay PENDING until the lists are written).
                    const unsigned m = atomicAdd(&n_missing, 1u);
                    if (m < (unsigned)slots) head_missing[m] = id;
                    if (id != current) {
                        atomicAdd(&attended, 1u);
                        atomicAdd(&fetched, 1u);
                    }
                }
            } else if (slot != PENDING) {
                if (atomicExch(&head_last[slot], step) != step && id != current) {
                    atomicAdd(&attended, 1u);
                    atomicAdd(&hits, 1u);
                }
            }
        }
        __syncthreads();
    }

    // Free every slot no step of the last `reuse` attended. A held slot was last used at a
    // step no later than this one (a row is placed with its step), so the difference does
    // not wrap, and any `reuse` (u32 max: keep everything) compares as it should.
    for (int s = threadIdx.x; s < slots; s += blockDim.x) {
        const unsigned token = head_token_of[s];
        if (token != NONE && step - head_last[s] >= reuse) {
            head_slot_of[token] = NONE;
            head_token_of[s] = NONE;
        }
        if (head_token_of[s] == NONE) head_free[atomicAdd(&n_free, 1u)] = s;
    }
    __syncthreads();

    // Each missing row takes a free slot and is copied from the host tier. Rows beyond the
    // free slots (listed or not), which the launcher's sizing rules out, are counted in
    // stats[3] (the launcher fails the step on it) and left unheld: they stay PENDING until
    // the lists are written, which resets them to NONE and reads slot 0 for them rather
    // than out of bounds. placed <= n_free <= slots: every placed row was listed.
    const unsigned placed = min(n_missing, n_free);
    for (unsigned m = threadIdx.x; m < placed; m += blockDim.x) {
        const unsigned id = head_missing[m], slot = head_free[m];
        head_slot_of[id] = slot;
        head_token_of[slot] = id;
        head_last[slot] = step;
    }
    __syncthreads();
    const int words = d / 2;  // d is even: rows move as pairs of halves
    for (long long w = threadIdx.x; w < (long long)placed * words; w += blockDim.x) {
        const unsigned m = (unsigned)(w / words), e = (unsigned)(w % words);
        const unsigned id = head_missing[m], slot = head_slot_of[id];
        const long long from = head * host_stride + (long long)id * d;
        const long long to = ((long long)head * slots + slot) * d;
        reinterpret_cast<__half2*>(keys + to)[e] = reinterpret_cast<const __half2*>(host_keys + from)[e];
        reinterpret_cast<__half2*>(values + to)[e] = reinterpret_cast<const __half2*>(host_values + from)[e];
    }
    __syncthreads();

    // The lists as slots.
    for (int l = 0; l < lists; ++l) {
        const int list = head * lists + l;
        const unsigned* list_ids = ids + (long long)list * stride;
        unsigned* list_slots = slot_ids + (long long)list * stride;
        for (int i = threadIdx.x; i < n_ids[list]; i += blockDim.x) {
            const unsigned id = list_ids[i], slot = head_slot_of[id];
            if (slot == PENDING) head_slot_of[id] = NONE;  // not placed: not held
            list_slots[i] = slot < (unsigned)slots ? slot : 0u;
        }
    }
    if (threadIdx.x == 0) {
        unsigned long long* s = stats + head * 5;
        if (step == 1) {
            s[4] += fetched;
        } else {
            s[0] += attended;
            s[1] += hits;
            s[2] += fetched;
        }
        s[3] += n_missing - placed;
    }
}
