//! Speculative decoding end to end through `Engine::submit`: prompt lookup and draft models
//! change how many forwards a request takes, never its tokens.
//!
//! Verification samples each row as plain decoding would (same processing, same RNG draws), so
//! greedy and seeded outputs must equal the engine without speculation token for token, alone
//! or batched, with stop strings, logprobs, grammars, `n > 1`, preemption and disconnects.
//! (Speculation runs in every eligible step here: `measure_payoff` off, so that the tests do
//! not depend on this machine's speed.)

mod common;

use wick_engine::engine::{EngineEvent, EngineStats, Usage};
use wick_engine::model::loader::LoadedModel;
use wick_engine::sample::constraint::ConstraintSpec;
use wick_engine::sample::params::SamplingParams;
use wick_engine::sample::stop::FinishReason;
use wick_engine::sched::scheduler::SchedulerConfig;
use wick_engine::spec::SpeculativeConfig;
use wick_engine::{DType, Engine, EngineConfig, GenerateRequest, GenerationStream};

const TEXTS: [&str; 16] = [
    "Repeat this list exactly: apples, pears, plums, cherries, apples, pears, plums, cherries.",
    "Write a Python function that returns the sum of a list of numbers.",
    "Summarize: The cat sat on the mat. The cat was happy on the mat because the mat was warm.",
    "What is the capital of France?",
    "Count from one to twenty in words.",
    "Write a haiku about the sea.",
    "Explain what a hash map is in two sentences.",
    "Translate to French: good morning, good evening, good night.",
    "List the days of the week.",
    "Write a SQL query that selects all rows from a table named users.",
    "Give three tips for writing clear code.",
    "What is 12 times 12?",
    "Describe a rainbow to a child.",
    "Write a JSON object with keys name and age for a person called Ana who is 30.",
    "Name five planets of the solar system.",
    "Write the alphabet in capital letters separated by commas.",
];

#[derive(Debug, Clone, Default, PartialEq)]
struct Choice {
    tokens: Vec<u32>,
    text: String,
    finish: Option<FinishReason>,
    logprobs: Vec<f32>,
}

fn chat(engine: &Engine, text: &str) -> Vec<u32> {
    let prompt = format!("<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n");
    engine.tokenizer().encode(&prompt, false).expect("tokenizes")
}

fn collect(stream: GenerationStream) -> Vec<Choice> {
    collect_with_usage(stream).0
}

fn collect_with_usage(mut stream: GenerationStream) -> (Vec<Choice>, Usage) {
    let mut choices: Vec<Choice> = Vec::new();
    while let Some(event) = stream.blocking_recv() {
        let at = |choices: &mut Vec<Choice>, i: usize| {
            if choices.len() <= i {
                choices.resize(i + 1, Choice::default());
            }
        };
        match event {
            EngineEvent::Token(t) => {
                at(&mut choices, t.index);
                let c = &mut choices[t.index];
                assert!(c.finish.is_none(), "a token after the finish");
                c.tokens.push(t.token);
                c.text.push_str(&t.text);
                c.logprobs.extend(t.logprob);
            }
            EngineEvent::Finished {
                index, reason, text, ..
            } => {
                at(&mut choices, index);
                choices[index].text.push_str(&text);
                choices[index].finish = Some(reason);
            }
            EngineEvent::Done(usage) => {
                let generated: usize = choices.iter().map(|c| c.tokens.len()).sum();
                assert_eq!(
                    usage.completion_tokens, generated,
                    "usage counts every token once"
                );
                if let Some(s) = usage.speculative {
                    assert!(s.accepted <= s.proposed, "{s:?}");
                    // Each choice's first token is the prefill's, never a proposal.
                    assert!(
                        s.accepted + choices.len() <= usage.completion_tokens,
                        "accepted proposals counted past the completion: {s:?}, {usage:?}"
                    );
                }
                return (choices, usage);
            }
            EngineEvent::PromptLogprobs(_) => {}
            EngineEvent::Error(e) => panic!("engine error: {e}"),
        }
    }
    panic!("stream ended without Done");
}

/// Each request alone, one after another.
fn alone(engine: &Engine, requests: &[GenerateRequest]) -> Vec<Vec<Choice>> {
    requests
        .iter()
        .map(|r| collect(engine.submit(r.clone()).expect("accepted")))
        .collect()
}

/// All requests at once.
fn together(engine: &Engine, requests: &[GenerateRequest]) -> Vec<Vec<Choice>> {
    let streams: Vec<GenerationStream> = requests
        .iter()
        .map(|r| engine.submit(r.clone()).expect("accepted"))
        .collect();
    streams.into_iter().map(collect).collect()
}

/// Speculation in every step (a batch of 16 included).
fn config(speculative: Option<SpeculativeConfig>) -> EngineConfig {
    EngineConfig {
        num_blocks: Some(512),
        speculative: speculative.map(|s| SpeculativeConfig {
            max_batch: 16,
            measure_payoff: false,
            ..s
        }),
        ..EngineConfig::default()
    }
}

fn greedy(max_tokens: usize) -> SamplingParams {
    SamplingParams {
        max_tokens: Some(max_tokens),
        ..SamplingParams::greedy()
    }
}

fn seeded(seed: u64, max_tokens: usize) -> SamplingParams {
    SamplingParams {
        max_tokens: Some(max_tokens),
        temperature: 0.8,
        top_p: 0.95,
        seed: Some(seed),
        ..SamplingParams::default()
    }
}

fn acceptance(stats: &EngineStats) -> f64 {
    stats.spec_accepted_tokens_total as f64 / stats.spec_draft_tokens_total.max(1) as f64
}

fn tokens(out: &[Vec<Choice>]) -> Vec<Vec<Vec<u32>>> {
    out.iter()
        .map(|cs| cs.iter().map(|c| c.tokens.clone()).collect())
        .collect()
}

fn requests(engine: &Engine, params: impl Fn(usize) -> SamplingParams) -> Vec<GenerateRequest> {
    TEXTS
        .iter()
        .enumerate()
        .map(|(i, t)| GenerateRequest::new(chat(engine, t), params(i)))
        .collect()
}

#[test]
fn ngram_speculation_gives_plain_decodings_tokens_greedy_and_seeded() {
    let plain = Engine::new(common::load_default(None), config(None)).unwrap();
    let spec = Engine::new(
        common::load_default(None),
        config(Some(SpeculativeConfig::ngram())),
    )
    .unwrap();
    for (label, params) in [
        (
            "greedy",
            Box::new(|_| greedy(64)) as Box<dyn Fn(usize) -> SamplingParams>,
        ),
        ("seeded", Box::new(|i| seeded(100 + i as u64, 64))),
    ] {
        let reqs = requests(&plain, params);
        let expected = tokens(&alone(&plain, &reqs));
        assert_eq!(tokens(&alone(&spec, &reqs)), expected, "{label}, alone");
        assert_eq!(tokens(&together(&spec, &reqs)), expected, "{label}, 16 at once");
    }
    let stats = common::settled(&spec);
    eprintln!(
        "n-gram: {} proposed, {} accepted ({:.1}%)",
        stats.spec_draft_tokens_total,
        stats.spec_accepted_tokens_total,
        100.0 * acceptance(&stats)
    );
    assert!(stats.spec_accepted_tokens_total > 0, "{stats:?}");
    assert!(acceptance(&stats) < 1.0, "{stats:?}");
    assert_eq!(stats.used_blocks, 0);
}

/// The draft is the target itself (same file, same kernels): every proposal is the target's own
/// greedy choice, so all are accepted.
#[test]
fn a_draft_identical_to_the_target_has_every_proposal_accepted() {
    let plain = Engine::new(common::load_default(None), config(None)).unwrap();
    let spec = Engine::with_draft(
        common::load_default(None),
        common::load_default(None),
        config(Some(SpeculativeConfig::draft_model())),
    )
    .unwrap();
    let reqs = requests(&plain, |_| greedy(48));
    let expected = tokens(&alone(&plain, &reqs[..8]));
    assert_eq!(tokens(&alone(&spec, &reqs[..8])), expected);
    let stats = common::settled(&spec);
    eprintln!(
        "identical draft: {} proposed, {} accepted",
        stats.spec_draft_tokens_total, stats.spec_accepted_tokens_total
    );
    assert!(stats.spec_draft_tokens_total > 0);
    assert_eq!(stats.spec_accepted_tokens_total, stats.spec_draft_tokens_total);
    assert_eq!((stats.used_blocks, stats.draft_used_blocks), (0, 0));
}

/// A short answer drafted by the target itself: the draft goes on past the end of turn and the
/// target accepts those proposals too, but they are not in the completion, so the request's
/// usage (OpenAI's `accepted_prediction_tokens`: prediction tokens that appeared in the
/// completion) does not count them; the engine's acceptance counters do.
#[test]
fn accepted_proposals_past_the_end_of_turn_are_not_in_the_usage() {
    let spec = Engine::with_draft(
        common::load_default(None),
        common::load_default(None),
        config(Some(SpeculativeConfig::draft_model())),
    )
    .unwrap();
    let questions = [
        "What is 2 + 3? Answer with the number only.",
        "Say yes.",
        "What is the capital of France?",
        "Name a color.",
        "What is 10 - 4?",
        "Is water wet? Answer yes or no.",
        "What is 6 * 7? Answer with the number only.",
        "Spell the word cat.",
        "What color is the sky?",
        "Give me one word that rhymes with moon.",
    ];
    let mut past_the_end = 0;
    for question in questions {
        let before = common::settled(&spec).spec_accepted_tokens_total;
        let prompt = chat(&spec, question);
        // collect_with_usage asserts accepted + 1 <= completion_tokens.
        let (out, usage) = collect_with_usage(spec.submit(GenerateRequest::new(prompt, greedy(32))).unwrap());
        let s = usage.speculative.expect("a speculating engine's usage");
        let by_the_target = common::settled(&spec).spec_accepted_tokens_total - before;
        eprintln!(
            "{question}: {} tokens, {:?}, {s:?}, by the target {by_the_target}",
            usage.completion_tokens, out[0].finish
        );
        assert!(s.accepted as u64 <= by_the_target, "{question}: {s:?}");
        if out[0].finish == Some(FinishReason::Stop) && (s.accepted as u64) < by_the_target {
            past_the_end += 1;
        }
    }
    assert!(
        past_the_end > 0,
        "no answer ended inside a step's accepted proposals"
    );
    let stats = common::settled(&spec);
    assert_eq!(stats.spec_accepted_tokens_total, stats.spec_draft_tokens_total);
}

/// An identical draft that may propose only the first 2048 ids (and the added tokens): where the
/// target's token is past them the proposal fails, so some proposals fail, and the output is
/// still the target's.
#[test]
fn a_draft_restricted_to_the_leading_ids_fails_only_the_proposals_it_cannot_make() {
    const LEADING: usize = 2048;
    let plain = Engine::new(common::load_default(None), config(None)).unwrap();
    let spec = Engine::with_draft(
        common::load_default(None),
        common::load_default(None),
        config(Some(SpeculativeConfig {
            draft_vocab: Some(LEADING),
            ..SpeculativeConfig::draft_model()
        })),
    )
    .unwrap();
    let reqs = requests(&plain, |_| greedy(48));
    let expected = tokens(&alone(&plain, &reqs[..8]));
    let past = expected
        .iter()
        .flatten()
        .flatten()
        .filter(|&&t| t as usize >= LEADING)
        .count();
    assert!(past > 0, "the outputs need tokens past the first {LEADING} ids");
    let (out, usages): (Vec<Vec<Choice>>, Vec<Usage>) = reqs[..8]
        .iter()
        .map(|r| collect_with_usage(spec.submit(r.clone()).expect("accepted")))
        .unzip();
    assert_eq!(tokens(&out), expected);
    let stats = common::settled(&spec);
    // Each request's usage counts its own proposals: together, the engine's counters (its
    // accepted ones only those that reached the output, not those past an end of turn).
    let counts = usages
        .iter()
        .map(|u| u.speculative.expect("a speculating engine's usage"));
    let (proposed, accepted) = counts.fold((0, 0), |(p, a), s| (p + s.proposed, a + s.accepted));
    assert_eq!(proposed as u64, stats.spec_draft_tokens_total);
    assert!(accepted as u64 <= stats.spec_accepted_tokens_total);
    let plain_usage = collect_with_usage(plain.submit(reqs[0].clone()).expect("accepted")).1;
    assert_eq!(plain_usage.speculative, None, "an engine without speculation");
    eprintln!(
        "identical draft, {LEADING} leading ids: {} proposed, {} accepted; {past} output tokens past them",
        stats.spec_draft_tokens_total, stats.spec_accepted_tokens_total
    );
    assert!(stats.spec_accepted_tokens_total > 0, "{stats:?}");
    // A proposal made where the target's token is past the prefix cannot be that token.
    assert!(
        stats.spec_accepted_tokens_total < stats.spec_draft_tokens_total,
        "{stats:?}"
    );
    assert_eq!((stats.used_blocks, stats.draft_used_blocks), (0, 0));
}

/// The pair: the default model dequantized to f32 as the target, the same GGUF kept
/// quantized as its draft (same tokenizer; close, not identical).
#[test]
fn an_f32_target_with_its_quantized_draft_gives_the_targets_greedy_tokens() {
    let f32_target = || common::load_default(Some(DType::F32));
    let plain = Engine::new(f32_target(), config(None)).unwrap();
    let spec = Engine::with_draft(
        f32_target(),
        common::load_default(None),
        config(Some(SpeculativeConfig::draft_model())),
    )
    .unwrap();
    let reqs = requests(&plain, |_| greedy(32));
    let expected = tokens(&alone(&plain, &reqs));
    assert_eq!(tokens(&alone(&spec, &reqs)), expected, "alone");
    assert_eq!(tokens(&together(&spec, &reqs)), expected, "16 at once");
    let stats = common::settled(&spec);
    eprintln!(
        "f32 target, Q4_1 draft: {} proposed, {} accepted ({:.1}%)",
        stats.spec_draft_tokens_total,
        stats.spec_accepted_tokens_total,
        100.0 * acceptance(&stats)
    );
    let rate = acceptance(&stats);
    assert!(rate > 0.0 && rate < 1.0, "acceptance {rate}");
    assert_eq!((stats.used_blocks, stats.draft_used_blocks), (0, 0));
}

/// A draft whose vocabulary differs from the target's is refused at start-up, naming both.
#[test]
fn a_draft_with_another_vocabulary_is_refused() {
    let err = Engine::with_draft(
        common::load_default(None),
        common::load_fallback(),
        config(Some(SpeculativeConfig::draft_model())),
    )
    .err()
    .expect("refused");
    let message = err.to_string();
    assert!(
        message.contains("151936") && message.contains("49152"),
        "{message}"
    );
}

/// Stop strings, max_tokens, logprobs, a JSON schema and n = 2 under speculation: the same
/// choices, text, finish reasons and logprobs as without.
#[test]
fn stops_limits_logprobs_grammars_and_n_are_unchanged_by_speculation() {
    let plain = Engine::new(common::load_default(None), config(None)).unwrap();
    let spec = Engine::new(
        common::load_default(None),
        config(Some(SpeculativeConfig::ngram())),
    )
    .unwrap();
    let schema = serde_json::json!({
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"]
    });
    let cases: Vec<(&str, SamplingParams)> = vec![
        ("max_tokens 3", greedy(3)),
        ("max_tokens 1", greedy(1)),
        (
            "stop string",
            SamplingParams {
                stop: vec!["pears, plums".into()],
                ..greedy(64)
            },
        ),
        (
            "logprobs",
            SamplingParams {
                logprobs: true,
                top_logprobs: 3,
                ..greedy(40)
            },
        ),
        (
            "json schema",
            SamplingParams {
                constraint: Some(ConstraintSpec::JsonSchema(schema)),
                ..greedy(40)
            },
        ),
        (
            "n = 2, seeded",
            SamplingParams {
                n: 2,
                ..seeded(7, 40)
            },
        ),
        (
            "ignore_eos, long",
            SamplingParams {
                ignore_eos: true,
                ..greedy(120)
            },
        ),
    ];
    for text in [TEXTS[0], TEXTS[13], TEXTS[15]] {
        for (label, params) in &cases {
            let request = GenerateRequest::new(chat(&plain, text), params.clone());
            let expected = collect(plain.submit(request.clone()).unwrap());
            let got = collect(spec.submit(request).unwrap());
            assert_eq!(got, expected, "{label} on {text:?}");
            if let Some(max) = params.max_tokens {
                assert!(
                    got.iter().all(|c| c.tokens.len() <= max),
                    "{label}: past max_tokens"
                );
            }
        }
    }
    let stats = common::settled(&spec);
    assert!(stats.spec_accepted_tokens_total > 0, "{stats:?}");
    assert_eq!(stats.used_blocks, 0);
}

fn small(speculative: SpeculativeConfig) -> EngineConfig {
    EngineConfig {
        // 40 blocks of 16 cannot hold 16 sequences of ~100 tokens: preemption.
        num_blocks: Some(40),
        scheduler: SchedulerConfig {
            max_num_seqs: 16,
            max_num_batched_tokens: 128,
        },
        speculative: Some(SpeculativeConfig {
            max_batch: 16,
            measure_payoff: false,
            ..speculative
        }),
        ..EngineConfig::default()
    }
}

/// Preemption mid-proposal and clients that go away: the survivors' tokens are unchanged and
/// every block of both pools comes back.
fn blocks_come_back(spec: Engine, label: &str) {
    let plain = Engine::new(common::load_default(None), config(None)).unwrap();
    let reqs = requests(&plain, |i| SamplingParams {
        ignore_eos: true,
        ..greedy(60 + i)
    });
    let expected = tokens(&alone(&plain, &reqs));
    let mut streams: Vec<Option<GenerationStream>> = reqs
        .iter()
        .map(|r| Some(spec.submit(r.clone()).unwrap()))
        .collect();
    // Every fourth client leaves after a few tokens.
    for stream in streams.iter_mut().step_by(4) {
        let mut s = stream.take().unwrap();
        for _ in 0..3 {
            assert!(matches!(s.blocking_recv(), Some(EngineEvent::Token(_))));
        }
    }
    for (i, stream) in streams.into_iter().enumerate() {
        if let Some(s) = stream {
            assert_eq!(tokens(&[collect(s)]), expected[i..=i], "{label}: request {i}");
        }
    }
    let stats = common::settled(&spec);
    eprintln!(
        "{label}: {} preemptions, {} proposed, {} accepted",
        stats.num_preemptions, stats.spec_draft_tokens_total, stats.spec_accepted_tokens_total
    );
    assert!(
        stats.num_preemptions > 0,
        "{label}: the pool was meant to force preemption"
    );
    assert!(stats.spec_draft_tokens_total > 0, "{label}: {stats:?}");
    assert_eq!(
        (stats.used_blocks, stats.draft_used_blocks),
        (0, 0),
        "{label}: {stats:?}"
    );
}

#[test]
fn ngram_speculation_frees_every_block_after_disconnects_and_preemptions() {
    let spec = Engine::new(common::load_default(None), small(SpeculativeConfig::ngram())).unwrap();
    blocks_come_back(spec, "n-gram");
}

#[test]
fn a_draft_model_frees_every_block_after_disconnects_and_preemptions() {
    let draft: LoadedModel = common::load_default(None);
    let spec = Engine::with_draft(
        common::load_default(None),
        draft,
        small(SpeculativeConfig::draft_model()),
    )
    .unwrap();
    blocks_come_back(spec, "draft model");
}

/// The draft's catch-up on generated tokens, which the engine's payoff measurement leaves out
/// when it is more than speculating step after step costs: at most the last proposal and the
/// target's token after it, and after a pause every token decoded meanwhile.
#[test]
fn a_drafts_catch_up_is_steady_only_while_it_speculates_every_step() {
    use wick_engine::spec::draft::{DraftModel, DraftRequest, STEADY_CATCH_UP};

    let prompt = chat(
        &Engine::new(common::load_default(None), config(None)).unwrap(),
        TEXTS[0],
    );
    let mut draft = common::default_draft();
    let propose = |draft: &mut DraftModel, tokens: &[u32]| {
        let request = DraftRequest {
            key: (1, 0),
            tokens,
            k: 3,
            prompt_len: prompt.len(),
            guess: &[],
        };
        let p = draft.propose(&[request], 4096).unwrap().remove(0);
        assert_eq!(p.len(), 3);
        p
    };
    let mut tokens = prompt.clone();
    let p = propose(&mut draft, &tokens);
    // The prompt is not counted (nothing has been generated yet).
    assert_eq!(draft.caught_up(), 0, "a prompt");
    // All three accepted, and the target's token after them.
    tokens.extend(&p);
    tokens.push(p[0]);
    let p = propose(&mut draft, &tokens);
    assert_eq!(draft.caught_up(), STEADY_CATCH_UP);
    // None accepted: the target's own token instead of the first proposal.
    tokens.push(p[0] ^ 1);
    let p = propose(&mut draft, &tokens);
    assert_eq!(draft.caught_up(), 1);
    let pause_after = |p: &[u32]| -> Vec<u32> {
        let pause: Vec<u32> = prompt[..10].to_vec();
        assert_ne!(pause[0], p[0], "the pause must start off the proposals");
        pause
    };
    // Ten tokens decoded without speculation (none of them what it had proposed): all ten.
    let p = pause_after(&p);
    tokens.extend(&p);
    propose(&mut draft, &tokens);
    assert_eq!(draft.caught_up(), 10);
}
