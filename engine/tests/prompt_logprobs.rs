//! Prompt logprobs (`prompt_logprobs`, what `echo` + `logprobs` needs): every prompt token's
//! logprob given the tokens before it, computed through chunked prefill, checked against the
//! sampler's own logprobs of one-token generations of each prefix, run as separate requests.

mod common;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wick_engine::engine::{EngineEvent, PromptTokenLogprob, Usage};
use wick_engine::sample::params::SamplingParams;
use wick_engine::sched::scheduler::SchedulerConfig;
use wick_engine::{Engine, EngineConfig, GenerateRequest};

/// A generated token: id, logprob, top logprobs.
type Generated = (u32, f32, Vec<(u32, f32)>);

struct Outcome {
    prompt_logprobs: Vec<Vec<PromptTokenLogprob>>,
    /// Per choice: (token, logprob, top logprobs).
    tokens: Vec<Vec<Generated>>,
    usage: Usage,
}

fn run(engine: &Engine, prompt: Vec<u32>, params: SamplingParams) -> Outcome {
    let n = params.n;
    let mut stream = engine
        .submit(GenerateRequest::new(prompt, params))
        .expect("accepted");
    let mut out = Outcome {
        prompt_logprobs: Vec::new(),
        tokens: vec![Vec::new(); n],
        usage: Usage::default(),
    };
    while let Some(event) = stream.blocking_recv() {
        match event {
            EngineEvent::PromptLogprobs(entries) => {
                assert!(
                    out.tokens.iter().all(Vec::is_empty),
                    "prompt logprobs after a token"
                );
                out.prompt_logprobs.push(entries);
            }
            EngineEvent::Token(t) => {
                let lp = t.logprob.expect("logprobs asked for");
                out.tokens[t.index].push((t.token, lp, t.top_logprobs));
            }
            EngineEvent::Finished { .. } => {}
            EngineEvent::Done(usage) => {
                out.usage = usage;
                return out;
            }
            EngineEvent::Error(e) => panic!("engine error: {e}"),
        }
    }
    panic!("stream ended without Done");
}

fn params(max_tokens: usize, prompt_logprobs: Option<usize>) -> SamplingParams {
    SamplingParams {
        max_tokens: Some(max_tokens),
        ignore_eos: true,
        logprobs: true,
        top_logprobs: 5,
        prompt_logprobs,
        ..SamplingParams::greedy()
    }
}

#[test]
fn prompt_logprobs_match_each_prefix_generated_alone() {
    let mut rng = StdRng::seed_from_u64(21);
    let prompt: Vec<u32> = (0..45).map(|_| rng.random_range(17..49_000)).collect();
    // A 16-token budget cuts the prompt into chunks of 16, 16 and 13.
    let engine = Engine::new(
        common::load_default(None),
        EngineConfig {
            num_blocks: Some(64),
            scheduler: SchedulerConfig {
                max_num_seqs: 64,
                max_num_batched_tokens: 16,
            },
            ..EngineConfig::default()
        },
    )
    .expect("engine starts");

    // The same prompt first, so the prefix cache holds it: prompt logprobs must not use it.
    let plain = run(&engine, prompt.clone(), params(2, None));
    assert!(plain.prompt_logprobs.is_empty());
    let out = run(&engine, prompt.clone(), params(2, Some(5)));
    assert_eq!(
        out.usage.cached_prompt_tokens, 0,
        "prompt logprobs computed from cached K/V?"
    );
    assert_eq!(out.prompt_logprobs.len(), 1, "one PromptLogprobs event");
    let entries = &out.prompt_logprobs[0];
    assert_eq!(entries.len(), prompt.len() - 1);
    // Generation is unaffected by asking for prompt logprobs.
    assert_eq!(out.tokens[0], plain.tokens[0]);

    // Reference: each prefix prompt[..=j] generating one token alone. Its top-5 (raw logprobs
    // from the sampler) must equal entry j's top-5, and where prompt[j + 1] is among them, its
    // logprob too.
    let mut compared = 0;
    for (j, entry) in entries.iter().enumerate() {
        assert_eq!(entry.token, prompt[j + 1]);
        assert!(entry.logprob <= 0.0 && entry.logprob.is_finite());
        assert_eq!(entry.top_logprobs.len(), 5);
        assert!(entry.top_logprobs.windows(2).all(|w| w[0].1 >= w[1].1));
        let alone = run(&engine, prompt[..=j].to_vec(), params(1, None));
        let (_, _, top) = &alone.tokens[0][0];
        for (&(id, lp), &(want_id, want_lp)) in entry.top_logprobs.iter().zip(top) {
            assert_eq!(id, want_id, "position {j}");
            assert!((lp - want_lp).abs() <= 1e-4, "position {j}: {lp} vs {want_lp}");
        }
        if let Some(&(_, lp)) = top.iter().find(|&&(id, _)| id == entry.token) {
            assert!((entry.logprob - lp).abs() <= 1e-4, "position {j}");
            compared += 1;
        }
    }
    eprintln!("{compared} prompt tokens were in their prefix's top 5");
}

#[test]
fn n_choices_get_one_set_of_prompt_logprobs_and_a_one_token_prompt_gets_none() {
    let engine = Engine::new(common::load_default(None), EngineConfig::default()).expect("engine");
    let out = run(
        &engine,
        vec![504, 3575, 282, 4649, 314],
        SamplingParams {
            n: 3,
            temperature: 1.0,
            seed: Some(1),
            ..params(3, Some(0))
        },
    );
    assert_eq!(out.prompt_logprobs.len(), 1);
    let tokens: Vec<u32> = out.prompt_logprobs[0].iter().map(|e| e.token).collect();
    assert_eq!(tokens, vec![3575, 282, 4649, 314]);
    assert!(out.prompt_logprobs[0].iter().all(|e| e.top_logprobs.is_empty()));
    assert!(out.tokens.iter().all(|t| t.len() == 3));

    let out = run(&engine, vec![504], params(1, Some(2)));
    assert_eq!(out.prompt_logprobs, vec![Vec::new()]);
}
