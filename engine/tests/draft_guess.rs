//! A draft model checking a guess of its next tokens (prompt lookup,
//! `SpeculativeConfig::draft_lookup`): the guess changes how many forwards the draft runs,
//! never what it proposes, so acceptance and output are those of the draft alone.

mod common;

use wick_engine::engine::EngineEvent;
use wick_engine::sample::params::SamplingParams;
use wick_engine::spec::draft::{DraftModel, DraftRequest};
use wick_engine::spec::SpeculativeConfig;
use wick_engine::{DType, Engine, EngineConfig, GenerateRequest};

const K: usize = 3;

fn chat(engine: &Engine, text: &str) -> Vec<u32> {
    let prompt = format!("<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n");
    engine.tokenizer().encode(&prompt, false).expect("tokenizes")
}

/// Proposals and the forwards they took.
fn propose(draft: &mut DraftModel, tokens: &[u32], prompt_len: usize, guess: &[u32]) -> (Vec<u32>, u64) {
    let before = draft.forwards();
    let request = DraftRequest {
        key: (1, 0),
        tokens,
        k: K,
        prompt_len,
        guess,
    };
    let p = draft.propose(&[request], 4096).unwrap().remove(0);
    (p, draft.forwards() - before)
}

/// Step after step, with guesses right, half right, wrong, short and too long, and with the
/// sequence taking all, some or none of the proposals: the guessing draft proposes exactly what
/// the plain one does, in one forward plus one per proposal past the guess's agreeing prefix.
#[test]
fn a_guess_changes_the_forwards_not_the_proposals() {
    let engine = Engine::new(common::load_default(None), EngineConfig::default()).unwrap();
    let prompt = chat(
        &engine,
        "Repeat this list exactly: apples, pears, plums, cherries.",
    );
    let (mut plain, mut guessing) = (common::default_draft(), common::default_draft());
    let mut tokens = prompt.clone();
    let mut saved = 0;
    for step in 0..15 {
        let (p, forwards) = propose(&mut plain, &tokens, prompt.len(), &[]);
        assert_eq!((p.len(), forwards), (K, K as u64), "step {step}");
        let guess: Vec<u32> = match step % 5 {
            0 => p[..K - 1].to_vec(),
            1 => vec![p[0], p[1] ^ 1],
            2 => vec![p[0] ^ 1, p[1]],
            3 => vec![p[0]],
            _ => [&p[..], &[1, 2, 3]].concat(),
        };
        let agreed = guess
            .iter()
            .take(K - 1)
            .zip(&p)
            .take_while(|(g, t)| g == t)
            .count();
        let (q, forwards) = propose(&mut guessing, &tokens, prompt.len(), &guess);
        assert_eq!(q, p, "step {step}: guess {guess:?}");
        assert_eq!(forwards, (K - agreed) as u64, "step {step}: guess {guess:?}");
        saved += K - agreed;
        // The target takes all the proposals and one token more, then the first and another
        // token, then none.
        match step % 3 {
            0 => tokens.extend(p.iter().chain([&p[0]])),
            1 => tokens.extend([p[0], p[1] ^ 1]),
            _ => tokens.push(p[0] ^ 1),
        }
    }
    assert!(saved > 0);
}

/// The pair (the default model in f32 as the target, its Q4_1 GGUF as the draft), with
/// and without guesses from prompt lookup: the target's greedy tokens, alone and batched, and
/// the same proposals, so the same counts proposed and accepted.
#[test]
fn guesses_leave_the_targets_tokens_and_the_acceptance_as_they_were() {
    let f32_target = || common::load_default(Some(DType::F32));
    let config = |lookup| EngineConfig {
        num_blocks: Some(512),
        speculative: Some(SpeculativeConfig {
            draft_lookup: lookup,
            measure_payoff: false,
            ..SpeculativeConfig::draft_model()
        }),
        ..EngineConfig::default()
    };
    let plain = Engine::new(f32_target(), EngineConfig::default()).unwrap();
    let texts = [
        "Repeat this list exactly: apples, pears, plums, cherries, apples, pears, plums, cherries.",
        "Summarize: The cat sat on the mat. The cat was happy on the mat because the mat was warm.",
        "Write a Python function that returns the sum of a list of numbers.",
        "Count from one to twenty in words.",
    ];
    let requests: Vec<GenerateRequest> = texts
        .iter()
        .map(|t| {
            let params = SamplingParams {
                max_tokens: Some(40),
                ..SamplingParams::greedy()
            };
            GenerateRequest::new(chat(&plain, t), params)
        })
        .collect();
    let run = |engine: &Engine, together: bool| -> Vec<Vec<u32>> {
        let collect = |mut stream: wick_engine::GenerationStream| {
            let mut tokens = Vec::new();
            while let Some(event) = stream.blocking_recv() {
                match event {
                    EngineEvent::Token(t) => tokens.push(t.token),
                    EngineEvent::Done(_) => break,
                    EngineEvent::Error(e) => panic!("engine error: {e}"),
                    _ => {}
                }
            }
            tokens
        };
        if together {
            let streams: Vec<_> = requests
                .iter()
                .map(|r| engine.submit(r.clone()).unwrap())
                .collect();
            streams.into_iter().map(collect).collect()
        } else {
            requests
                .iter()
                .map(|r| collect(engine.submit(r.clone()).unwrap()))
                .collect()
        }
    };
    let expected = run(&plain, false);
    let mut counts = Vec::new();
    for lookup in [None, Some((2, 4))] {
        let spec = Engine::with_draft(f32_target(), common::load_default(None), config(lookup)).unwrap();
        assert_eq!(run(&spec, false), expected, "alone, lookup {lookup:?}");
        let alone = common::settled(&spec);
        assert_eq!(run(&spec, true), expected, "together, lookup {lookup:?}");
        let stats = common::settled(&spec);
        eprintln!(
            "lookup {lookup:?}: alone {} proposed, {} accepted; then together {} and {}",
            alone.spec_draft_tokens_total,
            alone.spec_accepted_tokens_total,
            stats.spec_draft_tokens_total,
            stats.spec_accepted_tokens_total
        );
        assert_eq!((stats.used_blocks, stats.draft_used_blocks), (0, 0));
        counts.push([
            (alone.spec_draft_tokens_total, alone.spec_accepted_tokens_total),
            (stats.spec_draft_tokens_total, stats.spec_accepted_tokens_total),
        ]);
    }
    assert_eq!(counts[0], counts[1], "proposals without and with guesses");
}
