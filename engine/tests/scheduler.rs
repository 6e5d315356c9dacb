//! The scheduling policy on its own: the real `Scheduler` and `BlockManager`, with the forward
//! pass replaced by its bookkeeping (a planned chunk's tokens become computed; a sequence whose
//! prompt is done gets one new token per step). Token choice does not matter here, only who
//! runs and how many tokens.

use wick_engine::kv::block_manager::BlockManager;
use wick_engine::sample::params::SamplingParams;
use wick_engine::sched::scheduler::{Scheduler, SchedulerConfig, SchedulerOutput};
use wick_engine::sched::sequence::Sequence;

const BUDGET: usize = 256;

fn sequence(request_id: u64, prompt_len: usize, arrival: u64) -> Sequence {
    // Distinct tokens per request: no prefix-cache hits between them.
    let prompt: Vec<u32> = (0..prompt_len as u32)
        .map(|t| t + request_id as u32 * 100_000)
        .collect();
    let params = SamplingParams {
        max_tokens: Some(64),
        ..SamplingParams::default()
    };
    let mut seq = Sequence::new(request_id, 0, &prompt, params, &[0], 1 << 20);
    seq.arrival = arrival;
    seq
}

/// Runs `out` as the engine would after the forward: chunks become computed; a sequence whose
/// tokens are all computed samples one more.
fn apply(scheduler: &mut Scheduler, out: &SchedulerOutput) {
    for chunk in &out.chunks {
        let seq = &mut scheduler.running_mut()[chunk.seq];
        seq.num_computed += chunk.num_tokens;
        if seq.num_uncomputed() == 0 {
            seq.tokens.push(7);
        }
    }
}

/// Tokens `out` plans for `request`.
fn planned(scheduler: &Scheduler, out: &SchedulerOutput, request: u64) -> usize {
    out.chunks
        .iter()
        .filter(|c| scheduler.running()[c.seq].request_id == request)
        .map(|c| c.num_tokens)
        .sum()
}

#[test]
fn a_short_request_starts_during_a_long_prefill_and_the_long_one_keeps_going() {
    let mut blocks = BlockManager::new(4096, 16).unwrap();
    let mut scheduler = Scheduler::new(SchedulerConfig {
        max_num_seqs: 8,
        max_num_batched_tokens: BUDGET,
    })
    .unwrap();
    let long_len = 20 * BUDGET;
    scheduler.add(sequence(1, long_len, 0));

    // Alone, the long prompt takes the whole budget every step.
    for _ in 0..3 {
        let out = scheduler.schedule(&mut blocks).unwrap();
        assert_eq!(planned(&scheduler, &out, 1), BUDGET);
        apply(&mut scheduler, &out);
    }

    // A short request arrives: it is admitted in the very next step, prompt whole, while the
    // long prefill still advances (on at most half of the budget).
    scheduler.add(sequence(2, 40, 1));
    let out = scheduler.schedule(&mut blocks).unwrap();
    assert_eq!(out.admitted.iter().map(|a| a.0).collect::<Vec<_>>(), [2]);
    assert_eq!(planned(&scheduler, &out, 2), 40);
    let long_chunk = planned(&scheduler, &out, 1);
    assert!((1..=BUDGET / 2).contains(&long_chunk), "long chunk {long_chunk}");
    assert!(out.num_tokens() <= BUDGET);
    apply(&mut scheduler, &out);

    // From then on the short one decodes one token per step, and with nobody waiting the long
    // prefill takes everything else.
    for _ in 0..5 {
        let out = scheduler.schedule(&mut blocks).unwrap();
        assert_eq!(planned(&scheduler, &out, 2), 1);
        assert_eq!(planned(&scheduler, &out, 1), BUDGET - 1);
        apply(&mut scheduler, &out);
    }
}

#[test]
fn the_reserve_is_only_kept_for_a_request_that_can_be_admitted() {
    let mut blocks = BlockManager::new(4096, 16).unwrap();
    // One sequence at most: a waiting request cannot be admitted while the long one runs.
    let mut scheduler = Scheduler::new(SchedulerConfig {
        max_num_seqs: 1,
        max_num_batched_tokens: BUDGET,
    })
    .unwrap();
    scheduler.add(sequence(1, 4 * BUDGET, 0));
    let out = scheduler.schedule(&mut blocks).unwrap();
    apply(&mut scheduler, &out);
    scheduler.add(sequence(2, 40, 1));
    let out = scheduler.schedule(&mut blocks).unwrap();
    assert_eq!(planned(&scheduler, &out, 1), BUDGET);
    assert!(out.admitted.is_empty());
}

#[test]
fn a_shared_prefill_chunk_is_budgeted_by_its_work_and_a_lone_one_by_its_tokens() {
    let context = 1024;
    let mut blocks = BlockManager::new(4096, 16).unwrap();
    let mut scheduler = Scheduler::new(SchedulerConfig {
        max_num_seqs: 8,
        max_num_batched_tokens: BUDGET,
    })
    .unwrap()
    .with_attention_context(context);
    scheduler.add(sequence(1, 40 * BUDGET, 0));
    // Alone: whole budgets, however deep into the prompt.
    for step in 0..12 {
        let out = scheduler.schedule(&mut blocks).unwrap();
        assert_eq!(planned(&scheduler, &out, 1), BUDGET, "step {step}");
        apply(&mut scheduler, &out);
    }
    // A short request joins (admitted on half the budget), then decodes: from then on the long
    // prefill's chunk from position p is (budget left) * context / (context + p).
    scheduler.add(sequence(2, 8, 1));
    let out = scheduler.schedule(&mut blocks).unwrap();
    let pos = 12 * BUDGET;
    assert_eq!(
        planned(&scheduler, &out, 1),
        (BUDGET / 2) * context / (context + pos)
    );
    apply(&mut scheduler, &out);
    for _ in 0..20 {
        let pos = scheduler
            .running()
            .iter()
            .find(|s| s.request_id == 1)
            .unwrap()
            .num_computed;
        let out = scheduler.schedule(&mut blocks).unwrap();
        assert_eq!(planned(&scheduler, &out, 2), 1);
        let want = ((BUDGET - 1) * context / (context + pos)).max(1);
        assert_eq!(planned(&scheduler, &out, 1), want, "from position {pos}");
        assert!(want < BUDGET / 3);
        apply(&mut scheduler, &out);
    }
}
