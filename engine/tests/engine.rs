//! The engine end to end on the default model: continuous batching, preemption, chunked prefill,
//! prefix caching, n > 1, cancellation, seeds and stop strings, through `Engine::submit`.
//!
//! The central invariant: a request's tokens do not depend on what else runs with it. The CPU
//! kernels are row-deterministic, so "the same" means bit-identical token ids.

mod common;

use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wick_engine::engine::{EngineEvent, Usage};
use wick_engine::sample::params::SamplingParams;
use wick_engine::sample::stop::{FinishReason, StopMatch};
use wick_engine::sched::scheduler::SchedulerConfig;
use wick_engine::{Engine, EngineConfig, EngineError, GenerateRequest, GenerationStream};

#[derive(Debug, Clone, Default, PartialEq)]
struct Choice {
    tokens: Vec<u32>,
    text: String,
    finish: Option<FinishReason>,
    stop: Option<StopMatch>,
    logprobs: Vec<f32>,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Outcome {
    choices: Vec<Choice>,
    usage: Usage,
}

fn engine(config: EngineConfig) -> Engine {
    Engine::new(common::load_default(None), config).expect("engine starts")
}

fn small_engine(num_blocks: usize, max_num_seqs: usize, max_num_batched_tokens: usize) -> Engine {
    engine(EngineConfig {
        num_blocks: Some(num_blocks),
        scheduler: SchedulerConfig {
            max_num_seqs,
            max_num_batched_tokens,
        },
        ..EngineConfig::default()
    })
}

/// Reads a stream to its end; panics on an engine error.
fn collect(mut stream: GenerationStream) -> Outcome {
    let mut out = Outcome::default();
    let choice = |out: &mut Outcome, i: usize| {
        if out.choices.len() <= i {
            out.choices.resize(i + 1, Choice::default());
        }
    };
    while let Some(event) = stream.blocking_recv() {
        match event {
            EngineEvent::Token(t) => {
                choice(&mut out, t.index);
                let c = &mut out.choices[t.index];
                assert!(c.finish.is_none(), "a token after the finish");
                c.tokens.push(t.token);
                c.text.push_str(&t.text);
                c.logprobs.extend(t.logprob);
            }
            EngineEvent::Finished {
                index,
                reason,
                stop,
                text,
            } => {
                choice(&mut out, index);
                let c = &mut out.choices[index];
                c.text.push_str(&text);
                c.finish = Some(reason);
                c.stop = stop;
            }
            EngineEvent::Done(usage) => {
                out.usage = usage;
                assert!(stream.blocking_recv().is_none(), "an event after Done");
                return out;
            }
            EngineEvent::PromptLogprobs(_) => panic!("prompt logprobs were not asked for"),
            EngineEvent::Error(e) => panic!("engine error: {e}"),
        }
    }
    panic!("stream ended without Done");
}

fn run(engine: &Engine, request: GenerateRequest) -> Outcome {
    collect(engine.submit(request).expect("request accepted"))
}

fn greedy(max_tokens: usize) -> SamplingParams {
    SamplingParams {
        max_tokens: Some(max_tokens),
        ignore_eos: true,
        ..SamplingParams::greedy()
    }
}

fn random_prompt(rng: &mut StdRng, len: usize) -> Vec<u32> {
    (0..len).map(|_| rng.random_range(17..49_000)).collect()
}

#[test]
fn batched_with_preemption_and_chunked_prefill_equals_alone() {
    let mut rng = StdRng::seed_from_u64(7);
    let requests: Vec<GenerateRequest> = (0..32)
        .map(|i| GenerateRequest::new(random_prompt(&mut rng, 3 + (i * 37) % 150), greedy(24)))
        .collect();

    // Alone: one at a time, in a roomy pool.
    let alone_engine = small_engine(256, 8, 512);
    let alone: Vec<Outcome> = requests.iter().map(|r| run(&alone_engine, r.clone())).collect();
    drop(alone_engine);

    // Together: 40 blocks of 16 cannot hold 32 sequences of up to 176 tokens, and a 64-token
    // budget splits the longer prompts into chunks.
    let engine = small_engine(40, 32, 64);
    let streams: Vec<GenerationStream> = requests
        .iter()
        .map(|r| engine.submit(r.clone()).unwrap())
        .collect();
    let together: Vec<Outcome> = streams.into_iter().map(collect).collect();
    let stats = common::settled(&engine);

    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(
            t.choices[0].tokens, a.choices[0].tokens,
            "request {i}: tokens differ"
        );
        assert_eq!(t.choices[0].text, a.choices[0].text, "request {i}: text differs");
        assert_eq!(t.choices[0].finish, Some(FinishReason::Length));
        assert_eq!(t.usage.completion_tokens, 24);
        assert_eq!(t.usage.prompt_tokens, requests[i].prompt.len());
    }
    assert!(
        stats.num_preemptions > 0,
        "the pool was meant to force preemption: {stats:?}"
    );
    assert_eq!(
        stats.used_blocks, 0,
        "blocks still in use after every request finished: {stats:?}"
    );
    assert_eq!(stats.generation_tokens_total, 32 * 24);
}

#[test]
fn shared_prefix_is_reported_cached_and_output_is_unchanged() {
    let mut rng = StdRng::seed_from_u64(8);
    let prefix = random_prompt(&mut rng, 200);
    let first = GenerateRequest::new([&prefix[..], &random_prompt(&mut rng, 9)].concat(), greedy(12));
    let second = GenerateRequest::new([&prefix[..], &random_prompt(&mut rng, 17)].concat(), greedy(12));

    let uncached = engine(EngineConfig {
        num_blocks: Some(128),
        enable_prefix_caching: false,
        ..EngineConfig::default()
    });
    let want = run(&uncached, second.clone());
    assert_eq!(want.usage.cached_prompt_tokens, 0);
    drop(uncached);

    let cached = small_engine(128, 8, 512);
    let a = run(&cached, first);
    assert_eq!(a.usage.cached_prompt_tokens, 0);
    let b = run(&cached, second);
    assert_eq!(
        b.usage.cached_prompt_tokens, 192,
        "12 full blocks of the 200-token prefix"
    );
    assert_eq!(b.choices, want.choices);
    let stats = common::settled(&cached);
    assert!(stats.prefix_hit_tokens >= 192);
}

#[test]
fn n_choices_share_the_prompt_and_each_equals_its_own_seeded_request() {
    let mut rng = StdRng::seed_from_u64(9);
    let prompt = random_prompt(&mut rng, 40);
    let params = SamplingParams {
        n: 3,
        temperature: 0.9,
        top_p: 0.95,
        seed: Some(1234),
        max_tokens: Some(16),
        ignore_eos: true,
        ..SamplingParams::default()
    };
    let engine = small_engine(64, 8, 256);
    let together = run(&engine, GenerateRequest::new(prompt.clone(), params.clone()));
    assert_eq!(together.choices.len(), 3);
    assert_eq!(together.usage.completion_tokens, 48);
    for (i, choice) in together.choices.iter().enumerate() {
        let alone = run(&engine, GenerateRequest::new(prompt.clone(), params.for_child(i)));
        assert_eq!(choice, &alone.choices[0], "choice {i}");
    }
    assert_ne!(
        together.choices[0].tokens, together.choices[1].tokens,
        "children drew the same tokens"
    );
    assert_eq!(common::settled(&engine).used_blocks, 0);
}

#[test]
fn seeded_sampling_is_independent_of_batch_companions() {
    let mut rng = StdRng::seed_from_u64(10);
    let prompt = random_prompt(&mut rng, 30);
    let params = SamplingParams {
        temperature: 0.8,
        top_k: 50,
        top_p: 0.9,
        seed: Some(42),
        max_tokens: Some(20),
        ignore_eos: true,
        logprobs: true,
        top_logprobs: 3,
        ..SamplingParams::default()
    };
    let engine = small_engine(128, 16, 128);
    let alone = run(&engine, GenerateRequest::new(prompt.clone(), params.clone()));

    let companions: Vec<GenerationStream> = (0..6)
        .map(|i| {
            let p = SamplingParams {
                temperature: 1.0,
                seed: (i % 2 == 0).then_some(i),
                max_tokens: Some(10 + i as usize * 3),
                ignore_eos: true,
                ..SamplingParams::default()
            };
            let len = 5 + i as usize * 20;
            engine
                .submit(GenerateRequest::new(random_prompt(&mut rng, len), p))
                .unwrap()
        })
        .collect();
    let with_others = run(&engine, GenerateRequest::new(prompt, params));
    companions.into_iter().for_each(|s| drop(collect(s)));
    // (Usage differs: the second run finds the prompt in the prefix cache.)
    assert_eq!(with_others.choices, alone.choices);
}

#[test]
fn stop_string_spanning_tokens_is_cut_and_never_emitted() {
    let mut rng = StdRng::seed_from_u64(11);
    let prompt = random_prompt(&mut rng, 25);
    let engine = small_engine(64, 8, 256);
    let free = run(&engine, GenerateRequest::new(prompt.clone(), greedy(40)));
    let tokens = &free.choices[0].tokens;
    let tokenizer = engine.tokenizer();

    // A stop string made of the end of one token's text and the start of the next, somewhere
    // past the beginning.
    let (stop, boundary) = (4..tokens.len() - 1)
        .find_map(|i| {
            let before = tokenizer.decode(&tokens[..i], false).ok()?;
            let after = tokenizer.decode(&tokens[..i + 1], false).ok()?;
            let (head, tail) = (before.chars().last()?, after[before.len()..].chars().next()?);
            (!head.is_whitespace() && !tail.is_whitespace()).then(|| (format!("{head}{tail}"), before.len()))
        })
        .expect("two adjacent tokens with printable text");
    let full = &free.choices[0].text;
    let cut = full.find(&stop).expect("the stop string is in the text");
    assert!(
        cut < boundary,
        "first occurrence at or before the chosen boundary"
    );

    let params = SamplingParams {
        stop: vec![stop.clone()],
        ..greedy(40)
    };
    let stopped = run(&engine, GenerateRequest::new(prompt, params));
    let c = &stopped.choices[0];
    assert_eq!(
        c.text,
        full[..cut],
        "text up to the stop string, which is not emitted"
    );
    assert_eq!(c.finish, Some(FinishReason::Stop));
    assert_eq!(c.stop, Some(StopMatch::String(stop)));
    assert!(c.tokens.len() < tokens.len());
    assert_eq!(c.tokens[..], tokens[..c.tokens.len()]);
}

#[test]
fn dropping_or_aborting_a_stream_frees_every_block() {
    let mut rng = StdRng::seed_from_u64(12);
    let engine = small_engine(64, 8, 256);
    let keep = engine
        .submit(GenerateRequest::new(random_prompt(&mut rng, 20), greedy(30)))
        .unwrap();
    let mut dropped = engine
        .submit(GenerateRequest::new(random_prompt(&mut rng, 70), greedy(500)))
        .unwrap();
    let mut aborted = engine
        .submit(GenerateRequest::new(random_prompt(&mut rng, 40), greedy(500)))
        .unwrap();
    for stream in [&mut dropped, &mut aborted] {
        for _ in 0..3 {
            assert!(matches!(stream.blocking_recv(), Some(EngineEvent::Token(_))));
        }
    }
    assert!(engine.stats().used_blocks > 0);
    drop(dropped);
    engine.abort(aborted.id());
    // The aborted stream ends without a Done.
    while let Some(event) = aborted.blocking_recv() {
        assert!(matches!(event, EngineEvent::Token(_)), "unexpected {event:?}");
    }
    let kept = collect(keep);
    assert_eq!(
        kept.usage.completion_tokens, 30,
        "the other request is unaffected"
    );
    let stats = common::settled(&engine);
    assert_eq!(
        (stats.num_running, stats.num_waiting, stats.used_blocks),
        (0, 0, 0),
        "{stats:?}"
    );
}

#[test]
fn a_full_waiting_queue_is_overloaded_and_priority_jumps_the_queue() {
    let mut rng = StdRng::seed_from_u64(13);
    let engine = engine(EngineConfig {
        num_blocks: Some(64),
        max_waiting_requests: 2,
        scheduler: SchedulerConfig {
            max_num_seqs: 1,
            max_num_batched_tokens: 256,
        },
        ..EngineConfig::default()
    });
    let mut running = engine
        .submit(GenerateRequest::new(random_prompt(&mut rng, 10), greedy(40)))
        .unwrap();
    assert!(matches!(running.blocking_recv(), Some(EngineEvent::Token(_))));
    let low = engine
        .submit(GenerateRequest::new(random_prompt(&mut rng, 10), greedy(4)))
        .unwrap();
    let high = engine
        .submit(GenerateRequest {
            priority: -1,
            ..GenerateRequest::new(random_prompt(&mut rng, 10), greedy(4))
        })
        .unwrap();
    let refused = engine.submit(GenerateRequest::new(random_prompt(&mut rng, 10), greedy(4)));
    assert!(
        matches!(refused, Err(EngineError::Overloaded { waiting: 2 })),
        "{refused:?}"
    );

    // One sequence at a time: whoever is admitted first finishes first.
    let finished_at = |stream: GenerationStream| {
        std::thread::spawn(move || {
            collect(stream);
            Instant::now()
        })
    };
    let (low, high) = (finished_at(low), finished_at(high));
    drop(collect(running));
    let (low, high) = (low.join().unwrap(), high.join().unwrap());
    assert!(high < low, "the priority -1 request ran after the priority 0 one");
    // The queue has room again.
    assert!(engine
        .submit(GenerateRequest::new(vec![1, 2, 3], greedy(1)))
        .is_ok());
}

#[test]
fn bad_requests_are_refused_with_the_parameter_named() {
    let engine = small_engine(8, 4, 64);
    let max_model_len = engine.limits().max_model_len;
    assert_eq!(max_model_len, 128, "capped by the 8-block pool");
    let param = |r: Result<GenerationStream, EngineError>| match r {
        Err(EngineError::InvalidRequest { param, .. }) => param,
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("accepted"),
    };
    assert_eq!(
        param(engine.submit(GenerateRequest::new(vec![], greedy(1)))),
        "prompt"
    );
    assert_eq!(
        param(engine.submit(GenerateRequest::new(vec![u32::MAX], greedy(1)))),
        "prompt"
    );
    let hot = SamplingParams {
        temperature: 3.0,
        ..SamplingParams::default()
    };
    assert_eq!(
        param(engine.submit(GenerateRequest::new(vec![1], hot))),
        "temperature"
    );
    let too_long = engine.submit(GenerateRequest::new(vec![1; 100], greedy(50)));
    match too_long {
        Err(e @ EngineError::ContextLengthExceeded { .. }) => {
            assert!(
                e.to_string().contains("maximum context length is 128 tokens"),
                "{e}"
            )
        }
        other => panic!("expected a context length error, got {:?}", other.err()),
    }
    // Without max_tokens, a prompt that fits runs until the context is full.
    let out = run(
        &engine,
        GenerateRequest::new(
            vec![1; 120],
            SamplingParams {
                ignore_eos: true,
                ..SamplingParams::greedy()
            },
        ),
    );
    assert_eq!(out.usage.completion_tokens, 8);
    assert_eq!(out.choices[0].finish, Some(FinishReason::Length));
}

/// A greedy request without logprobs takes its tokens from the output head's argmax (no logits
/// written); with logprobs it samples them from the logits. Both give the same tokens, for
/// requests run alone and 8 at once, mixed in one batch or not.
#[test]
fn the_heads_argmax_gives_the_tokens_sampled_from_the_logits() {
    let engine = engine(EngineConfig::default());
    let mut rng = StdRng::seed_from_u64(21);
    let prompts: Vec<Vec<u32>> = (0..8).map(|i| random_prompt(&mut rng, 12 + 9 * i)).collect();
    let request = |prompt: &[u32], logprobs: bool| {
        GenerateRequest::new(
            prompt.to_vec(),
            SamplingParams {
                logprobs,
                ..greedy(24)
            },
        )
    };
    let tokens = |o: Outcome| o.choices[0].tokens.clone();
    let from_logits: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| tokens(run(&engine, request(p, true))))
        .collect();
    let from_head: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| tokens(run(&engine, request(p, false))))
        .collect();
    assert_eq!(from_head, from_logits);
    // All at once from the head; then every other one with logprobs and 8 tokens only, so that
    // steps needing the logits come first and steps taking the argmax follow.
    let all = |logprobs: &dyn Fn(usize) -> bool, max: &dyn Fn(usize) -> usize| -> Vec<Vec<u32>> {
        let streams: Vec<GenerationStream> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut r = request(p, logprobs(i));
                r.params.max_tokens = Some(max(i));
                engine.submit(r).unwrap()
            })
            .collect();
        streams.into_iter().map(|s| tokens(collect(s))).collect()
    };
    assert_eq!(all(&|_| false, &|_| 24), from_logits);
    let mixed = all(&|i| i % 2 == 0, &|i| if i % 2 == 0 { 8 } else { 24 });
    for (i, (got, want)) in mixed.iter().zip(&from_logits).enumerate() {
        assert_eq!(got[..], want[..got.len()], "request {i}");
    }
}
