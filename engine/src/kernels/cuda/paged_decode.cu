// Fused paged-attention decode for wick: one query token per sequence, K/V read straight from the
// paged pool through the sequence's block table, softmax computed online (one pass over the
// context, no score buffer, no gather copy, no padding).
//
// Layouts (all contiguous, see engine/src/paged_decode.rs, which validates them before launch):
//   q      (tokens, heads, head_dim)              rows of the batch; decode rows are picked by table
//   k, v   (kv_heads, num_slots, head_dim)        the paged pool of one layer
//   table  (seqs, 2 + max_blocks) u32             per sequence: batch row, context length, blocks
//   out    (seqs, heads, head_dim)
//
// Grid: (heads, seqs). Block: WARPS warps. Each warp takes every WARPS-th context position; per
// position, the 32 lanes split the head dimension (lane d, d + 32, ...), reduce the dot product
// with shuffles, and update a running max / sum / accumulator. The warps' partial states are then
// merged through shared memory. Accumulation is f32 whatever the storage type.
// GQA: query head h reads KV head h / (heads / kv_heads); sibling heads of a group run in
// neighbouring blocks and find the same K/V lines in L2.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace {

constexpr int WARPS = 4;
constexpr int MAX_HEAD_DIM = 256;

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
  return __float2bfloat16(x);
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

// EPL: elements of the head dimension per lane, ceil(head_dim / 32) rounded up to 2, 4 or 8.
template <typename T, int EPL>
__device__ void paged_decode(const T* __restrict__ q, const T* __restrict__ k_pool,
                             const T* __restrict__ v_pool, const uint32_t* __restrict__ table,
                             T* __restrict__ out, uint32_t heads, uint32_t kv_heads,
                             uint32_t head_dim, uint32_t num_slots, uint32_t block_size,
                             uint32_t table_stride, float scale) {
  const uint32_t head = blockIdx.x;
  const uint32_t seq = blockIdx.y;
  const uint32_t warp = threadIdx.x / 32;
  const uint32_t lane = threadIdx.x % 32;

  const uint32_t* entry = table + (size_t)seq * table_stride;
  const uint32_t row = entry[0];
  const uint32_t context_len = entry[1];
  const uint32_t* blocks = entry + 2;
  const uint32_t kv_head = head / (heads / kv_heads);

  // The scale is folded into q once instead of into every score.
  const T* qh = q + ((size_t)row * heads + head) * head_dim;
  float qr[EPL];
  float acc[EPL];
#pragma unroll
  for (int e = 0; e < EPL; ++e) {
    const uint32_t d = lane + 32 * e;
    qr[e] = d < head_dim ? to_f32(qh[d]) * scale : 0.f;
    acc[e] = 0.f;
  }

  const size_t head_base = (size_t)kv_head * num_slots * head_dim;
  float m = -INFINITY;  // running max of the scores seen by this warp
  float l = 0.f;        // running sum of exp(score - m)
  for (uint32_t pos = warp; pos < context_len; pos += WARPS) {
    const uint32_t slot = blocks[pos / block_size] * block_size + pos % block_size;
    const T* kr = k_pool + head_base + (size_t)slot * head_dim;
    const T* vr = v_pool + head_base + (size_t)slot * head_dim;
    float s = 0.f;
#pragma unroll
    for (int e = 0; e < EPL; ++e) {
      const uint32_t d = lane + 32 * e;
      if (d < head_dim) s += qr[e] * to_f32(kr[d]);
    }
    s = warp_sum(s);
    const float m_new = fmaxf(m, s);
    const float correction = expf(m - m_new);  // 0 on the first position (m = -inf)
    const float p = expf(s - m_new);
    l = l * correction + p;
#pragma unroll
    for (int e = 0; e < EPL; ++e) {
      const uint32_t d = lane + 32 * e;
      const float v = d < head_dim ? to_f32(vr[d]) : 0.f;
      acc[e] = acc[e] * correction + p * v;
    }
    m = m_new;
  }

  __shared__ float warp_max[WARPS];
  __shared__ float warp_sum_exp[WARPS];
  __shared__ float warp_acc[WARPS][MAX_HEAD_DIM];
  if (lane == 0) {
    warp_max[warp] = m;
    warp_sum_exp[warp] = l;
  }
#pragma unroll
  for (int e = 0; e < EPL; ++e) {
    const uint32_t d = lane + 32 * e;
    if (d < head_dim) warp_acc[warp][d] = acc[e];
  }
  __syncthreads();

  float global_max = -INFINITY;
#pragma unroll
  for (int w = 0; w < WARPS; ++w) global_max = fmaxf(global_max, warp_max[w]);
  T* oh = out + ((size_t)seq * heads + head) * head_dim;
  for (uint32_t d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float total = 0.f;
    float o = 0.f;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) {
      // A warp that saw no position (context shorter than WARPS) contributes nothing.
      const float f = warp_sum_exp[w] > 0.f ? expf(warp_max[w] - global_max) : 0.f;
      total += warp_sum_exp[w] * f;
      o += warp_acc[w][d] * f;
    }
    oh[d] = from_f32<T>(o / total);
  }
}

}  // namespace

#define WICK_PAGED_DECODE(NAME, T, EPL)                                                          \
  extern "C" __global__ void __launch_bounds__(WARPS * 32)                                       \
      NAME(const T* q, const T* k, const T* v, const uint32_t* table, T* out, uint32_t heads,    \
           uint32_t kv_heads, uint32_t head_dim, uint32_t num_slots, uint32_t block_size,        \
           uint32_t table_stride, float scale) {                                                 \
    paged_decode<T, EPL>(q, k, v, table, out, heads, kv_heads, head_dim, num_slots, block_size, \
                         table_stride, scale);                                                   \
  }

WICK_PAGED_DECODE(paged_decode_f32_e2, float, 2)
WICK_PAGED_DECODE(paged_decode_f32_e4, float, 4)
WICK_PAGED_DECODE(paged_decode_f32_e8, float, 8)
WICK_PAGED_DECODE(paged_decode_f16_e2, __half, 2)
WICK_PAGED_DECODE(paged_decode_f16_e4, __half, 4)
WICK_PAGED_DECODE(paged_decode_f16_e8, __half, 8)
WICK_PAGED_DECODE(paged_decode_bf16_e2, __nv_bfloat16, 2)
WICK_PAGED_DECODE(paged_decode_bf16_e4, __nv_bfloat16, 4)
WICK_PAGED_DECODE(paged_decode_bf16_e8, __nv_bfloat16, 8)
