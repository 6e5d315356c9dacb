//! Golden greedy continuations written by tests/reference/reference.py (numpy, float64): the
//! file format and running its prompts through the paged path.

use serde_json::Value;
use wick_engine::kv::block_manager::BlockManager;
use wick_engine::kv::cache::PagedKvCache;
use wick_engine::model::loader::LoadedModel;
use wick_engine::runner::{kv_shape, ModelRunner};

pub struct Step {
    pub token: u32,
    pub top5: Vec<(u32, f64)>,
    pub margin: f64,
}

pub struct Case {
    pub name: String,
    pub prompt_ids: Vec<u32>,
    pub steps: Vec<Step>,
}

/// The cases of `tests/reference/<file>`, which must have been made from the model `sha256`.
pub fn cases(file: &str, sha256: &str) -> Vec<Case> {
    let path = super::reference_dir().join(file);
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(json["model_sha256"].as_str().unwrap(), sha256);
    let ids = |v: &Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    json["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().unwrap().to_string(),
            prompt_ids: ids(&c["prompt_ids"]),
            steps: c["steps"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| Step {
                    token: s["token"].as_u64().unwrap() as u32,
                    top5: s["top5"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|p| (p[0].as_u64().unwrap() as u32, p[1].as_f64().unwrap()))
                        .collect(),
                    margin: s["margin"].as_f64().unwrap(),
                })
                .collect(),
        })
        .collect()
}

/// Greedy steps of every case through the paged path: (token, full logprobs) per step.
pub fn run_all(loaded: LoadedModel, cases: &[Case]) -> Vec<Vec<(u32, Vec<f32>)>> {
    let kv = loaded.model.dtype();
    run_all_with_kv(loaded, cases, kv)
}

/// [`run_all`] with a KV pool of dtype `kv`.
pub fn run_all_with_kv(
    loaded: LoadedModel,
    cases: &[Case],
    kv: candle_core::DType,
) -> Vec<Vec<(u32, Vec<f32>)>> {
    let cfg = loaded.config().clone();
    let blocks = 64;
    let cache = PagedKvCache::new(kv_shape(&cfg), 16, blocks, kv, loaded.model.device()).unwrap();
    let mut alloc = BlockManager::new(blocks, 16).unwrap();
    let mut runner = ModelRunner::new(loaded.model, cache);
    cases
        .iter()
        .map(|case| {
            let mut steps = Vec::new();
            wick_engine::engine::generate::greedy(
                &mut runner,
                &mut alloc,
                &case.prompt_ids,
                case.steps.len(),
                &[],
                |s| steps.push((s.token, s.logprobs.clone())),
            )
            .unwrap();
            assert_eq!(alloc.num_free_blocks(), blocks, "blocks leaked");
            steps
        })
        .collect()
}

/// Exact tokens and every top-5 logprob within `bound`; returns the worst difference.
pub fn check_exact(cases: &[Case], ours: &[Vec<(u32, Vec<f32>)>], bound: f64) -> f64 {
    let mut worst = 0f64;
    for (case, steps) in cases.iter().zip(ours) {
        let got: Vec<u32> = steps.iter().map(|s| s.0).collect();
        let want: Vec<u32> = case.steps.iter().map(|s| s.token).collect();
        assert_eq!(got, want, "case {}: greedy tokens differ", case.name);
        for (i, (step, (_, lp))) in case.steps.iter().zip(steps).enumerate() {
            for &(id, ref_lp) in &step.top5 {
                let d = (lp[id as usize] as f64 - ref_lp).abs();
                worst = worst.max(d);
                assert!(
                    d <= bound,
                    "case {} step {i} token {id}: logprob {} vs {ref_lp}",
                    case.name,
                    lp[id as usize]
                );
            }
        }
    }
    worst
}

/// Tokens equal while the reference's top-1/top-2 margin is at least `min_margin` nats (past a
/// closer call either answer is right, and the continuations part), top-5 logprobs within
/// `bound` on those steps. Returns (steps compared, worst difference by rank).
pub fn check_until_close_call(
    cases: &[Case],
    ours: &[Vec<(u32, Vec<f32>)>],
    min_margin: f64,
    bound: f64,
) -> (usize, [f64; 5]) {
    let mut compared = 0;
    let mut worst_by_rank = [0f64; 5];
    for (case, steps) in cases.iter().zip(ours) {
        for (i, (step, (token, lp))) in case.steps.iter().zip(steps).enumerate() {
            if step.margin < min_margin {
                break;
            }
            assert_eq!(*token, step.token, "case {} step {i}: token differs", case.name);
            for (rank, &(id, ref_lp)) in step.top5.iter().enumerate() {
                let d = (lp[id as usize] as f64 - ref_lp).abs();
                worst_by_rank[rank] = worst_by_rank[rank].max(d);
                assert!(
                    d <= bound,
                    "case {} step {i} rank {rank} token {id}: logprob {} vs {ref_lp}",
                    case.name,
                    lp[id as usize]
                );
            }
            compared += 1;
        }
    }
    (compared, worst_by_rank)
}
