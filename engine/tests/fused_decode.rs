//! The fused paged-attention decode op against the portable candle-ops path (the reference), on
//! the device named by `WICK_TEST_DEVICE` (default `cpu`; `scripts/gpu-check` sets `cuda:0`, so
//! the same tests check the CUDA kernel). On the CPU the op runs its Rust transcription of the
//! kernel, which checks the host side: the packed table, block-table walking, GQA head mapping,
//! row order in mixed prefill/decode batches.

mod common;

use candle_core::{DType, Tensor};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use wick_engine::engine::generate::{greedy, StepOutput};
use wick_engine::kv::block_manager::BlockManager;
use wick_engine::kv::cache::{BlockTable, PagedKvCache};
use wick_engine::model::attention::AttentionBackend;
use wick_engine::model::config::LlamaConfig;
use wick_engine::model::loader::LoadOptions;
use wick_engine::model::weights::WeightFormat;
use wick_engine::runner::attention::{AttentionImpl, PagedAttention, PagedAttentionMetadata, SequenceSpan};
use wick_engine::runner::{kv_shape, ModelRunner};

fn config(heads: usize, kv_heads: usize, head_dim: usize) -> LlamaConfig {
    LlamaConfig {
        architecture: Default::default(),
        vocab_size: 32,
        hidden_size: heads * head_dim,
        intermediate_size: 8,
        num_hidden_layers: 1,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: None,
        max_position_embeddings: 4096,
        tie_word_embeddings: true,
    }
}

/// One layer of attention over a mixed batch (decodes with contexts from 1 to a few blocks, two
/// prefill chunks), sequences scattered over a shuffled pool. Each implementation writes the
/// same K/V into its own pool and attends; returns the two outputs as f32.
fn one_layer(
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    block_size: usize,
    dtype: DType,
    imp: AttentionImpl,
) -> (Tensor, Tensor) {
    let device = common::test_device();
    let mut rng = StdRng::seed_from_u64(head_dim as u64 * 31 + heads as u64);
    // (new tokens, context): decodes of every length class, two prefill chunks.
    let shapes = [
        (1, 1),
        (3, 3),
        (1, 17),
        (1, 2 * block_size),
        (5, 40),
        (1, 97),
        (1, block_size + 1),
    ];
    let num_blocks: usize = shapes.iter().map(|&(_, c)| c.div_ceil(block_size)).sum::<usize>() * 2 + 3;
    let mut free: Vec<u32> = (0..num_blocks as u32).collect();
    free.shuffle(&mut rng);
    let mut spans = Vec::new();
    let mut start = 0;
    // Batch order is not sequence order: a prefill between decodes.
    for &(q_len, ctx) in &shapes {
        spans.push(SequenceSpan {
            query_start: start,
            query_len: q_len,
            context_len: ctx,
            // One spare block beyond the context: the table may own more than it uses.
            block_table: BlockTable(
                (0..ctx.div_ceil(block_size) + 1)
                    .map(|_| free.pop().unwrap())
                    .collect(),
            ),
        });
        start += q_len;
    }
    let tokens = start;
    let cfg = config(heads, kv_heads, head_dim);
    let rand = |shape: (usize, usize, usize), rng: &mut StdRng| {
        let n = shape.0 * shape.1 * shape.2;
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect();
        Tensor::from_vec(v, shape, &device)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    };
    let q = rand((tokens, heads, head_dim), &mut rng);
    // The context before the new tokens: written through a prefill of every sequence first.
    let history: Vec<(Tensor, Tensor)> = spans
        .iter()
        .map(|s| {
            let n = s.context_len - s.query_len;
            (
                rand((n.max(1), kv_heads, head_dim), &mut rng),
                rand((n.max(1), kv_heads, head_dim), &mut rng),
            )
        })
        .collect();
    let k = rand((tokens, kv_heads, head_dim), &mut rng);
    let v = rand((tokens, kv_heads, head_dim), &mut rng);
    let run = |imp: AttentionImpl| {
        let cache = PagedKvCache::new(kv_shape(&cfg), block_size, num_blocks, dtype, &device).unwrap();
        for (s, (hk, hv)) in spans.iter().zip(&history) {
            let n = s.context_len - s.query_len;
            if n == 0 {
                continue;
            }
            let span = SequenceSpan {
                query_start: 0,
                query_len: n,
                context_len: n,
                block_table: s.block_table.clone(),
            };
            let meta = PagedAttentionMetadata::new(
                &[span],
                block_size,
                kv_heads,
                head_dim,
                dtype,
                dtype,
                &device,
                AttentionImpl::Portable,
            )
            .unwrap();
            let hq = Tensor::zeros((n, heads, head_dim), dtype, &device).unwrap();
            PagedAttention {
                cache: &cache,
                meta: &meta,
            }
            .attend(0, &hq, hk, hv)
            .unwrap();
        }
        let meta =
            PagedAttentionMetadata::new(&spans, block_size, kv_heads, head_dim, dtype, dtype, &device, imp)
                .unwrap();
        PagedAttention {
            cache: &cache,
            meta: &meta,
        }
        .attend(0, &q, &k, &v)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
    };
    (run(imp), run(AttentionImpl::Portable))
}

fn assert_close(heads: usize, kv_heads: usize, head_dim: usize, block_size: usize, dtype: DType, tol: f32) {
    let (fused, portable) = one_layer(
        heads,
        kv_heads,
        head_dim,
        block_size,
        dtype,
        AttentionImpl::FusedDecode,
    );
    assert_eq!(fused.dims(), portable.dims());
    let d = common::max_abs_diff(&fused, &portable);
    eprintln!(
        "{dtype:?} heads {heads}/{kv_heads} head_dim {head_dim} block {block_size}: max |diff| {d:.2e}"
    );
    assert!(
        d <= tol,
        "{dtype:?} head_dim {head_dim}: fused vs portable max |diff| {d}"
    );
}

#[test]
fn fused_decode_matches_portable_attention_f32() {
    // The default model's shape (9/3 x 64), plain MHA, GQA by 4 with head dims that need each
    // compiled lane width (2, 4, 8) and one that is not a multiple of 32.
    for (heads, kv_heads, head_dim, block) in [
        (9, 3, 64, 16),
        (4, 4, 32, 16),
        (8, 2, 128, 8),
        (4, 1, 80, 16),
        (2, 1, 256, 32),
    ] {
        assert_close(heads, kv_heads, head_dim, block, DType::F32, 2e-5);
    }
}

/// Half precision: the fused op accumulates in f32 and rounds once; the portable path rounds
/// scores and probabilities to the storage type, so the bound is the type's rounding.
#[test]
fn fused_decode_matches_portable_attention_f16_bf16() {
    for (heads, kv_heads, head_dim) in [(9, 3, 64), (8, 2, 128)] {
        assert_close(heads, kv_heads, head_dim, 16, DType::F16, 1e-2);
        assert_close(heads, kv_heads, head_dim, 16, DType::BF16, 6e-2);
    }
}

/// A broken op must be caught: the comparison above is not vacuous (the outputs are far from
/// zero, and attending with a wrong scale differs).
#[test]
fn outputs_are_not_trivially_equal() {
    let (fused, _) = one_layer(9, 3, 64, 16, DType::F32, AttentionImpl::FusedDecode);
    let mean_abs = fused
        .abs()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(mean_abs > 0.05, "outputs suspiciously small: {mean_abs}");
}

/// Greedy decoding of the default model through the fused op and through the portable path:
/// identical tokens, top-5 log-probabilities close, for f32 (and f16, bf16 on a GPU, where they
/// are fast).
#[test]
fn default_model_greedy_tokens_identical_fused_vs_portable() {
    let device = common::test_device();
    let mut formats = vec![DType::F32];
    if device.is_cuda() {
        formats.extend([DType::F16, DType::BF16]);
    }
    let prompts: [&[u32]; 3] = [
        &[1, 504, 3458, 282, 4649, 314],
        &[1, 2],
        &[
            1, 1073, 2442, 253, 655, 28, 281, 253, 1345, 7227, 411, 260, 5004, 30, 17, 18, 19, 20,
        ],
    ];
    for dtype in formats {
        let run = |imp: AttentionImpl| {
            let loaded = common::load_default_with(LoadOptions {
                format: WeightFormat::Dense(dtype),
                device: device.clone(),
            });
            let cfg = loaded.config().clone();
            let cache = PagedKvCache::new(kv_shape(&cfg), 16, 32, dtype, &device).unwrap();
            let mut runner = ModelRunner::new(loaded.model, cache).with_attention(imp);
            let mut blocks = BlockManager::new(32, 16).unwrap();
            prompts
                .iter()
                .map(|p| {
                    let mut dists = Vec::new();
                    let (tokens, _) = greedy(&mut runner, &mut blocks, p, 24, &[], |s: &StepOutput| {
                        dists.push(s.logprobs.clone())
                    })
                    .unwrap();
                    (tokens, dists)
                })
                .collect::<Vec<_>>()
        };
        let (fused, portable) = (run(AttentionImpl::FusedDecode), run(AttentionImpl::Portable));
        // Log-probabilities of the portable path's top 5 tokens must agree within `tol`. Tokens
        // must be identical; in half precision a step whose top-2 margin is under 2 * tol may
        // flip (both answers are within rounding), and the steps after it are not compared.
        // bf16 keeps 8 significant bits: the portable path rounds every score and probability
        // to it, the fused op only its output; measured on an H200: 0.21 after 30 layers.
        let tol = match dtype {
            DType::F32 => 1e-3,
            DType::F16 => 0.15,
            _ => 0.35,
        };
        for (i, ((ft, fd), (pt, pd))) in fused.iter().zip(&portable).enumerate() {
            let agree = ft.iter().zip(pt).take_while(|(a, b)| a == b).count();
            let mut worst = 0f32;
            for (step, (a, b)) in fd.iter().zip(pd).enumerate().take(agree + 1) {
                let mut top: Vec<usize> = (0..b.len()).collect();
                top.sort_by(|&x, &y| b[y].total_cmp(&b[x]));
                for &t in &top[..5] {
                    worst = worst.max((a[t] - b[t]).abs());
                }
                if step == agree && agree < pt.len() {
                    let margin = b[top[0]] - b[top[1]];
                    assert!(
                        dtype != DType::F32 && margin < 2.0 * tol,
                        "{dtype:?} prompt {i}: tokens differ at step {agree} (portable top-2 margin {margin})"
                    );
                }
            }
            eprintln!(
                "{dtype:?} prompt {i}: {agree} of {} tokens identical, max top-5 |logprob diff| {worst:.2e}",
                pt.len()
            );
            assert!(worst <= tol, "{dtype:?} prompt {i}: logprobs differ by {worst}");
        }
    }
}

/// Auto picks the fused op on CUDA only; on the CPU it keeps the CPU kernel (f32) or the
/// portable ops, so the fused op's slow CPU transcription never serves.
#[test]
fn auto_uses_the_fused_op_only_on_cuda() {
    let device = common::test_device();
    let (auto, portable) = one_layer(9, 3, 64, 16, DType::F16, AttentionImpl::Auto);
    let d = common::max_abs_diff(&auto, &portable);
    if device.is_cuda() {
        // Different arithmetic: not bit-identical, but close.
        assert!(d > 0.0 && d <= 1e-2, "auto vs portable on CUDA: {d}");
    } else {
        assert_eq!(d, 0.0, "auto on the CPU (f16) must be the portable path");
    }
}
