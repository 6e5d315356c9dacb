//! The engine's public face: [`Engine::submit`] a request, read its [`EngineEvent`]s.
//!
//! The model runs on its own thread ([`engine_loop`](crate::engine::engine_loop)); this handle only
//! validates requests and talks to it over channels, so it can be called from async code
//! without blocking. Events go through a tokio unbounded channel: `recv().await` in async code,
//! `blocking_recv()` elsewhere. Dropping a [`GenerationStream`] (or [`Engine::abort`]) cancels the
//! request: its sequences leave the batch and their blocks are freed at the next step.

mod engine_loop;
pub mod generate;
mod logits_layout;
mod spec_payoff;
mod speculation;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use candle_core::DType;
use tokio::sync::mpsc as tokio_mpsc;

use crate::engine::engine_loop::EngineLoop;
pub use crate::engine::spec_payoff::PayoffEstimate;
use crate::engine::speculation::Speculator;
use crate::error::{EngineError, Result};
use crate::kv::block_manager::BlockManager;
use crate::kv::cache::PagedKvCache;
use crate::model::loader::LoadedModel;
use crate::runner::attention::AttentionImpl;
use crate::runner::{kv_shape, ModelRunner};
// Part of the event API (`EngineEvent::PromptLogprobs`); defined beside the sampler's logprobs.
use crate::sample::constraint::{Constraint, ConstraintCompiler, ConstraintSpec};
use crate::sample::params::SamplingParams;
pub use crate::sample::sampler::PromptTokenLogprob;
use crate::sample::stop::{FinishReason, StopMatch};
use crate::sched::scheduler::{Scheduler, SchedulerConfig};
use crate::sched::sequence::RequestId;
use crate::spec::draft::DraftModel;
use crate::spec::SpeculativeConfig;
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub scheduler: SchedulerConfig,
    /// Tokens per KV block.
    pub block_size: usize,
    /// Bytes of KV cache (K and V, every layer); the block count follows from it. On a GPU
    /// only when `gpu_memory_headroom_bytes` is None.
    pub kv_cache_bytes: usize,
    /// On a GPU, the KV pool takes the free device memory (measured once the weights are
    /// loaded) minus this headroom, and `kv_cache_bytes` is ignored. None: `kv_cache_bytes`
    /// everywhere. No effect on the CPU.
    pub gpu_memory_headroom_bytes: Option<usize>,
    /// The part of that free memory (less the headroom) this engine's pool takes, in (0, 1]:
    /// a process running several models creates their engines one after another, each taking
    /// 1/(engines still to create) of what is free then, so they share it evenly.
    pub gpu_memory_share: f64,
    /// An exact block count, overriding `kv_cache_bytes` (tests use small pools).
    pub num_blocks: Option<usize>,
    /// Fraction of blocks kept free at admission, so running sequences can grow without
    /// being preempted right away (vLLM's 1 %).
    pub watermark: f64,
    pub enable_prefix_caching: bool,
    /// Requests waiting for admission before `submit` answers `Overloaded`.
    pub max_waiting_requests: usize,
    /// Caps the context below the model's own limit (and the KV pool's size).
    pub max_model_len: Option<usize>,
    pub attention: AttentionImpl,
    /// The KV pool's dtype. None: the model's compute dtype. F16 under an f32 model halves the
    /// pool's bytes per token (twice the tokens in the same budget, half the bytes attention
    /// reads); K and V are rounded to f16 as they are stored.
    pub kv_cache_dtype: Option<DType>,
    /// Speculative decoding: n-gram proposals, or a draft model given with
    /// [`Engine::with_draft`]. None: off.
    pub speculative: Option<SpeculativeConfig>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            scheduler: SchedulerConfig::default(),
            block_size: 16,
            kv_cache_bytes: 1 << 30,
            gpu_memory_headroom_bytes: Some(crate::model::device::DEFAULT_GPU_HEADROOM_BYTES),
            gpu_memory_share: 1.0,
            num_blocks: None,
            watermark: 0.01,
            enable_prefix_caching: true,
            max_waiting_requests: 1024,
            max_model_len: None,
            kv_cache_dtype: None,
            attention: AttentionImpl::Auto,
            speculative: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// Prompt token ids (the server tokenizes and applies the chat template).
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    /// Lower runs first; 0 by default. Equal priorities run in arrival order.
    pub priority: i32,
    /// `params.constraint` compiled already (by [`Engine::compile_constraint`], so that a caller
    /// that checks it first does not pay twice); `None`: `submit` compiles it.
    pub compiled_constraint: Option<Constraint>,
}

impl GenerateRequest {
    pub fn new(prompt: Vec<u32>, params: SamplingParams) -> Self {
        Self {
            prompt,
            params,
            priority: 0,
            compiled_constraint: None,
        }
    }
}

/// One generated token of choice `index`.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenEvent {
    pub index: usize,
    pub token: u32,
    /// Text that became certain with this token: possibly empty (an incomplete character, or
    /// text that may still turn out to be a stop string), possibly more than the token's own.
    pub text: String,
    pub logprob: Option<f32>,
    pub top_logprobs: Vec<(u32, f32)>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    /// Generated tokens over all choices.
    pub completion_tokens: usize,
    /// Prompt tokens whose K/V came from the prefix cache.
    pub cached_prompt_tokens: usize,
    /// Time from `submit` until the request was first scheduled (waiting in the queue).
    pub queue_time: std::time::Duration,
    /// Speculative decoding's part in the request; None where the engine does not speculate.
    pub speculative: Option<SpeculativeUsage>,
}

impl Usage {
    /// Adds another request's counts (the prompts of one completions request).
    pub fn add(&mut self, other: &Usage) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.cached_prompt_tokens += other.cached_prompt_tokens;
        self.speculative = match (self.speculative, other.speculative) {
            (Some(a), Some(b)) => Some(SpeculativeUsage {
                proposed: a.proposed + b.proposed,
                accepted: a.accepted + b.accepted,
            }),
            (a, b) => a.or(b),
        };
    }
}

/// Proposals verified for a request's sequences, and how many of them the target accepted
/// (each accepted proposal is a token that took no decode step of its own).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpeculativeUsage {
    pub proposed: usize,
    pub accepted: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EngineEvent {
    /// With `prompt_logprobs`: one entry per prompt token after the first, sent once the
    /// prompt is computed, before any token.
    PromptLogprobs(Vec<PromptTokenLogprob>),
    Token(TokenEvent),
    /// Choice `index` ended; `text` is what was still held back (emit it before finishing).
    Finished {
        index: usize,
        reason: FinishReason,
        stop: Option<StopMatch>,
        text: String,
    },
    /// Every choice has finished; the last event of a request.
    Done(Usage),
    /// The request failed inside the engine; the last event of a request.
    Error(String),
}

/// The events of one request, in order. Dropping it cancels the request.
#[derive(Debug)]
pub struct GenerationStream {
    id: RequestId,
    events: tokio_mpsc::UnboundedReceiver<EngineEvent>,
}

impl GenerationStream {
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// The next event; `None` after the last one.
    pub async fn recv(&mut self) -> Option<EngineEvent> {
        self.events.recv().await
    }

    /// The next event, blocking the thread (not for async code).
    pub fn blocking_recv(&mut self) -> Option<EngineEvent> {
        self.events.blocking_recv()
    }
}

/// Counters and gauges for `/metrics` and benchmarks, refreshed after every step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineStats {
    pub num_running: usize,
    pub num_waiting: usize,
    pub num_blocks: usize,
    pub used_blocks: usize,
    pub prefix_query_tokens: u64,
    pub prefix_hit_tokens: u64,
    pub num_preemptions: u64,
    pub prompt_tokens_total: u64,
    pub generation_tokens_total: u64,
    pub steps: u64,
    /// Speculative decoding: tokens proposed and verified, and how many the target accepted
    /// (vLLM's `spec_decode_num_draft_tokens` / `..._accepted_tokens`).
    pub spec_draft_tokens_total: u64,
    pub spec_accepted_tokens_total: u64,
    /// Seconds the draft model has spent proposing, its catch-ups included (what a draft
    /// costs beside the verification's extra rows).
    pub spec_draft_seconds_total: f64,
    /// Blocks of the draft model's KV pool in use.
    pub draft_used_blocks: usize,
    /// Decode tokens per second with and without speculation, per batch size, as measured.
    pub spec_payoff: Vec<PayoffEstimate>,
}

pub(crate) enum Command {
    Submit {
        id: RequestId,
        request: Box<GenerateRequest>,
        events: tokio_mpsc::UnboundedSender<EngineEvent>,
        /// The request's compiled constraint, cloned for each of its sequences.
        constraint: Option<Box<Constraint>>,
    },
    Abort(RequestId),
    Shutdown,
}

/// State shared between the handle and the engine thread.
#[derive(Default)]
pub(crate) struct Shared {
    /// Requests submitted and not admitted yet (the bounded queue).
    pub queued: AtomicUsize,
    pub stats: Mutex<EngineStats>,
}

/// What requests are checked against.
#[derive(Debug, Clone)]
pub struct EngineLimits {
    pub max_model_len: usize,
    pub vocab_size: usize,
    pub max_waiting_requests: usize,
}

pub struct Engine {
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    next_id: AtomicU64,
    limits: EngineLimits,
    tokenizer: Arc<Tokenizer>,
    /// Built on the first constrained request (it indexes the whole vocabulary); an error
    /// says why this tokenizer cannot be constrained.
    constraints: OnceLock<std::result::Result<ConstraintCompiler, String>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Engine {
    /// Allocates the KV cache and starts the engine thread.
    pub fn new(loaded: LoadedModel, config: EngineConfig) -> Result<Self> {
        Self::build(loaded, None, config)
    }

    /// As [`new`](Self::new), with a draft model proposing tokens for the target to verify
    /// (`config.speculative` must ask for a draft model). The draft must share the target's
    /// vocabulary; it gets a KV pool of its own, with as many blocks as the target's, the two
    /// pools together within `kv_cache_bytes` (or the GPU memory the engine may take).
    pub fn with_draft(loaded: LoadedModel, draft: LoadedModel, config: EngineConfig) -> Result<Self> {
        Self::build(loaded, Some(draft), config)
    }

    fn build(loaded: LoadedModel, draft: Option<LoadedModel>, config: EngineConfig) -> Result<Self> {
        let model_cfg = loaded.config().clone();
        let kv_dtype = config.kv_cache_dtype.unwrap_or(loaded.model.dtype());
        let device = loaded.model.device().clone();
        if !(config.gpu_memory_share > 0.0 && config.gpu_memory_share <= 1.0) {
            return Err(EngineError::InvalidConfig(format!(
                "gpu_memory_share must be in (0, 1], got {}",
                config.gpu_memory_share
            )));
        }
        let num_blocks = match config.num_blocks {
            Some(n) => n,
            None => {
                // A draft model's pool has as many blocks as the target's, out of the same
                // budget: a block of the budget pays for one block of each.
                let block_bytes =
                    PagedKvCache::bytes_per_block(kv_shape(&model_cfg), config.block_size.max(1), kv_dtype)
                        + draft.as_ref().map_or(0, |d| {
                            PagedKvCache::bytes_per_block(
                                kv_shape(d.config()),
                                config.block_size.max(1),
                                d.model.dtype(),
                            )
                        });
                let budget = crate::model::device::kv_cache_budget(
                    crate::model::device::gpu_memory(&device)?,
                    config.kv_cache_bytes,
                    config.gpu_memory_headroom_bytes,
                    config.gpu_memory_share,
                    block_bytes,
                )?;
                budget / block_bytes.max(1)
            }
        };
        if !(0.0..1.0).contains(&config.watermark) {
            return Err(EngineError::InvalidConfig(format!(
                "watermark must be in [0, 1), got {}",
                config.watermark
            )));
        }
        tracing::info!(
            num_blocks,
            dtype = ?kv_dtype,
            mib = (num_blocks
                * PagedKvCache::bytes_per_block(kv_shape(&model_cfg), config.block_size.max(1), kv_dtype))
                >> 20,
            "KV cache"
        );
        let cache = PagedKvCache::new(
            kv_shape(&model_cfg),
            config.block_size,
            num_blocks,
            kv_dtype,
            &device,
        )?;
        // One sequence must always fit in the whole pool, or it could never finish.
        let max_model_len = [
            Some(model_cfg.max_position_embeddings),
            Some(num_blocks * config.block_size),
            config.max_model_len,
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(0);
        if max_model_len < 2 {
            return Err(EngineError::InvalidConfig(format!(
                "a context of {max_model_len} tokens is too small (KV cache of {num_blocks} blocks)"
            )));
        }
        let watermark_blocks = (config.watermark * num_blocks as f64) as usize;
        let blocks = BlockManager::new(num_blocks, config.block_size)?
            .with_watermark_blocks(watermark_blocks)
            .with_prefix_caching(config.enable_prefix_caching);
        // The CPU attention kernel (f32) does about a third of the multiply-adds per second
        // of the int8 matmuls (kernels bench: ~55-60 GFLOP/s at 256 rows against ~270 for a
        // default-model prefill), so there a position of attention costs three times its count.
        let attention_context = match device {
            candle_core::Device::Cpu => model_cfg.attention_context() / 3,
            _ => model_cfg.attention_context(),
        };
        let speculator = match config.speculative {
            Some(spec) => {
                let draft = draft
                    .map(|d| {
                        let vocab = spec
                            .draft_vocab
                            .map(|leading| (leading, d.tokenizer.added_token_ids()));
                        let model =
                            draft_model(d, &model_cfg, num_blocks, config.block_size, config.attention)?;
                        Ok::<_, EngineError>(match vocab {
                            Some((leading, extra)) => model.with_vocabulary(leading, &extra),
                            None => model,
                        })
                    })
                    .transpose()?;
                Some(Speculator::new(
                    spec,
                    draft,
                    config.scheduler.max_num_batched_tokens,
                )?)
            }
            None if draft.is_some() => {
                return Err(EngineError::InvalidConfig(
                    "a draft model was given but speculative decoding is not configured".into(),
                ))
            }
            None => None,
        };
        let scheduler = Scheduler::new(config.scheduler)?.with_attention_context(attention_context);
        let runner = ModelRunner::new(loaded.model, cache).with_attention(config.attention);
        let tokenizer = Arc::new(loaded.tokenizer);
        let limits = EngineLimits {
            max_model_len,
            vocab_size: model_cfg.vocab_size,
            max_waiting_requests: config.max_waiting_requests,
        };
        tracing::info!(
            num_blocks,
            block_size = config.block_size,
            max_model_len,
            max_num_seqs = config.scheduler.max_num_seqs,
            max_num_batched_tokens = config.scheduler.max_num_batched_tokens,
            "engine ready"
        );
        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::channel();
        let mut engine_loop = EngineLoop::new(
            runner,
            blocks,
            scheduler,
            tokenizer.clone(),
            max_model_len,
            rx,
            shared.clone(),
        );
        if let Some(speculator) = speculator {
            engine_loop = engine_loop.with_speculator(speculator);
        }
        let thread = std::thread::Builder::new()
            .name("wick-engine".into())
            .spawn(move || engine_loop.run())?;
        Ok(Self {
            commands: tx,
            shared,
            next_id: AtomicU64::new(0),
            limits,
            tokenizer,
            constraints: OnceLock::new(),
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    pub fn limits(&self) -> &EngineLimits {
        &self.limits
    }

    pub fn stats(&self) -> EngineStats {
        let mut stats = self.shared.stats.lock().map(|s| s.clone()).unwrap_or_default();
        // Not admitted yet: counted here, since the engine thread sees them only when it wakes.
        stats.num_waiting = stats.num_waiting.max(self.shared.queued.load(Ordering::Relaxed));
        stats
    }

    /// Checks `request` and queues it. Errors: an invalid parameter, a prompt too long for the
    /// context, a full waiting queue (`Overloaded`), a stopped engine.
    pub fn submit(&self, mut request: GenerateRequest) -> Result<GenerationStream> {
        self.validate(&request)?;
        let constraint = match (request.compiled_constraint.take(), &request.params.constraint) {
            (_, None) => None,
            (Some(compiled), Some(_)) => Some(Box::new(compiled)),
            (None, Some(spec)) => Some(Box::new(self.compile_constraint(spec, "response_format")?)),
        };
        let limit = self.limits.max_waiting_requests;
        let admitted = self
            .shared
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q < limit).then_some(q + 1)
            });
        if let Err(waiting) = admitted {
            return Err(EngineError::Overloaded { waiting });
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = tokio_mpsc::unbounded_channel();
        if self
            .send(Command::Submit {
                id,
                request: Box::new(request),
                events: tx,
                constraint,
            })
            .is_err()
        {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(EngineError::EngineStopped);
        }
        Ok(GenerationStream { id, events: rx })
    }

    /// Cancels a request (as dropping its stream does). Unknown or finished ids are ignored.
    pub fn abort(&self, id: RequestId) {
        let _ = self.send(Command::Abort(id));
    }

    /// Stops the engine thread after its current step; pending requests get an error event.
    pub fn shutdown(&self) {
        let _ = self.send(Command::Shutdown);
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(handle) = handle {
            if handle.join().is_err() {
                tracing::error!("the engine thread panicked");
            }
        }
    }

    fn send(&self, command: Command) -> std::result::Result<(), ()> {
        self.commands.send(command).map_err(|_| ())
    }

    /// Compiles a schema or grammar for this model's tokenizer; `param` is what a compile error
    /// names (the request field the spec came from).
    pub fn compile_constraint(&self, spec: &ConstraintSpec, param: &str) -> Result<Constraint> {
        let compiler = self.constraints.get_or_init(|| {
            ConstraintCompiler::new(&self.tokenizer, self.limits.vocab_size).map_err(|e| e.to_string())
        });
        match compiler {
            Ok(compiler) => compiler.compile(spec, param),
            Err(e) => Err(EngineError::InvalidRequest {
                param: param.to_string(),
                message: format!("structured output is not available for this model: {e}"),
            }),
        }
    }

    fn validate(&self, request: &GenerateRequest) -> Result<()> {
        let invalid = |message: String| EngineError::InvalidRequest {
            param: "prompt".into(),
            message,
        };
        let vocab = self.limits.vocab_size;
        if request.prompt.is_empty() {
            return Err(invalid("the prompt is empty".into()));
        }
        if let Some(&id) = request.prompt.iter().find(|&&id| id as usize >= vocab) {
            return Err(invalid(format!(
                "token id {id} in the prompt is outside the vocabulary (size {vocab})"
            )));
        }
        request.params.validate(vocab)?;
        let prompt_tokens = request.prompt.len();
        let max_model_len = self.limits.max_model_len;
        let max_tokens = request.params.max_tokens;
        if prompt_tokens >= max_model_len || prompt_tokens + max_tokens.unwrap_or(0) > max_model_len {
            return Err(EngineError::ContextLengthExceeded {
                prompt_tokens,
                max_tokens,
                max_model_len,
            });
        }
        Ok(())
    }
}

/// The draft model's runner over a pool of its own (`num_blocks` of the target's block size),
/// after checking that it shares the target's vocabulary.
fn draft_model(
    draft: LoadedModel,
    target: &crate::model::config::LlamaConfig,
    num_blocks: usize,
    block_size: usize,
    attention: AttentionImpl,
) -> Result<DraftModel> {
    let cfg = draft.config().clone();
    if cfg.vocab_size != target.vocab_size {
        return Err(EngineError::InvalidConfig(format!(
            "the draft model's vocabulary ({} tokens) differs from the target's ({} tokens): \
             a draft must share the target's tokenizer",
            cfg.vocab_size, target.vocab_size
        )));
    }
    let dtype = draft.model.dtype();
    let device = draft.model.device().clone();
    let cache = PagedKvCache::new(kv_shape(&cfg), block_size, num_blocks, dtype, &device)?;
    tracing::info!(
        num_blocks,
        mib = (num_blocks * PagedKvCache::bytes_per_block(kv_shape(&cfg), block_size, dtype)) >> 20,
        "draft model KV cache"
    );
    let runner = ModelRunner::new(draft.model, cache).with_attention(attention);
    DraftModel::new(runner, BlockManager::new(num_blocks, block_size)?)
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}
