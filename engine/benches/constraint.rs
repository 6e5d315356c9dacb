//! What constrained decoding costs per decode step: computing and applying llguidance's token
//! mask for every sequence of a batch, on the default model's 49k vocabulary, under a nested
//! JSON schema. Compare with the forward's decode step at the same batch (`forward` bench).
//!
//! `cargo bench -p wick-engine --bench constraint`
//!
//! Each sequence follows random logits (argmax of what the mask allows), so it wanders through
//! strings, numbers, enums and structure as real output does; a finished sequence restarts.
//! Rows are masked one after the other on one thread here; the sampler spreads rows over the
//! rayon pool, so a step's wall time is about this figure divided by the threads.

use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wick_engine::model::loader::{self, LoadOptions};
use wick_engine::sample::constraint::{ConstraintCompiler, ConstraintSpec};
use wick_engine::sample::sampler::argmax;
use wick_engine::source::ModelSource;

fn main() {
    let loaded = loader::load(
        &ModelSource::GgufFile(wick_engine::default_model_path()),
        &LoadOptions::default(),
    )
    .expect("the default model (scripts/fetch-default-model)");
    let vocab = loaded.config().vocab_size;
    let tokenizer = &loaded.tokenizer;
    let eos = tokenizer.eos_token_ids.first().copied().unwrap_or(0);
    let start = Instant::now();
    let compiler = ConstraintCompiler::new(tokenizer, vocab).expect("compiler");
    println!(
        "compiler (token trie) built in {:.1} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 40},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "role": {"enum": ["admin", "user", "guest"]},
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
            "address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "integer"}},
                        "required": ["city", "zip"]}
        },
        "required": ["name", "age", "role", "tags", "address"]
    });
    let spec = ConstraintSpec::JsonSchema(schema);
    let start = Instant::now();
    let fresh = compiler
        .compile(&spec, "response_format")
        .expect("schema compiles");
    println!("schema compiled in {:.2} ms", start.elapsed().as_secs_f64() * 1e3);

    let mut rng = StdRng::seed_from_u64(1);
    println!("batch  steps  mask ms/step (one thread)  us/row");
    for batch in [1usize, 8, 32] {
        let mut seqs = vec![fresh.clone(); batch];
        let steps = 64;
        let mut row = vec![0f32; vocab];
        let mut elapsed = 0f64;
        for _ in 0..steps {
            for seq in seqs.iter_mut() {
                row.iter_mut().for_each(|x| *x = rng.random_range(-5.0..5.0));
                let t = Instant::now();
                seq.mask(&mut row, eos);
                elapsed += t.elapsed().as_secs_f64();
                let token = argmax(&row);
                seq.advance(token);
                if seq.is_stopped() {
                    *seq = fresh.clone();
                }
            }
        }
        let per_step = elapsed / steps as f64 * 1e3;
        println!(
            "{batch:>5}  {steps:>5}  {per_step:>24.2}  {:>6.0}",
            per_step * 1e3 / batch as f64
        );
    }
}
