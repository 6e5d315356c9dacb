//! Verifying proposed tokens (speculative decoding) with the sequence's own sampler.
//!
//! A sequence that proposed `d_1..d_k` gets `k + 1` rows of target logits in one forward: row
//! `j` is the distribution after `d_1..d_j`. Rows are sampled in order, each exactly as a plain
//! decode step would sample it (same processing, same RNG, one uniform per sampled row); the
//! sampled token is kept, and the next row is looked at only if that token equals the proposal.
//! So the tokens emitted are, bit for bit, those the sequence would have produced one step at a
//! time: greedy or seeded, with or without speculation, the output is the same.
//!
//! This is Leviathan et al.'s rejection rule for a proposal that is a point mass `q = δ(d)`:
//! "accept `d` with probability `min(1, p(d)/q(d)) = p(d)`, else resample from
//! `norm(max(0, p - q))`", i.e. from `p` without `d`. Drawing `t ~ p` and accepting when
//! `t = d` does exactly that: `t = d` has probability `p(d)`, and given `t ≠ d`, `t` is
//! distributed as `p` without `d`. Both proposers here (prompt lookup, and a draft model
//! taking its argmax) propose point masses, so no proposal distribution is needed.

use candle_core::{DType, Tensor};
use rayon::prelude::*;

use crate::error::{EngineError, Result};
use crate::sample::sampler::{SampledToken, SequenceSamplingState};

/// For each sequence, samples its rows (`proposals[i].len() + 1` consecutive rows of `logits`,
/// `(rows, vocab)`) in order while the sampled token equals the proposed one. Returns each
/// sequence's tokens: the accepted proposals, then the first token that differs (or, when all
/// were accepted, the token after the last). With no proposals this is one sample per row.
pub fn sample_and_verify(
    logits: &Tensor,
    seqs: &mut [&mut SequenceSamplingState],
    proposals: &[&[u32]],
) -> Result<Vec<Vec<SampledToken>>> {
    let (rows, vocab) = logits.dims2().map_err(|_| {
        EngineError::InvalidBatch(format!(
            "logits of shape {:?}, expected (rows, vocab)",
            logits.dims()
        ))
    })?;
    let wanted: usize = proposals.iter().map(|p| p.len() + 1).sum();
    if seqs.len() != proposals.len() || rows != wanted {
        return Err(EngineError::InvalidBatch(format!(
            "{rows} rows of logits for {} sequences wanting {wanted}",
            seqs.len()
        )));
    }
    if rows == 0 {
        return Ok(Vec::new());
    }
    if vocab == 0 {
        return Err(EngineError::InvalidBatch(
            "logits with an empty vocabulary".into(),
        ));
    }
    // One host copy for the whole batch; each row is then the scratch space of its sequence.
    let mut data = logits.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let mut per_seq = Vec::with_capacity(seqs.len());
    let mut rest = data.as_mut_slice();
    for p in proposals {
        let (mine, tail) = rest.split_at_mut((p.len() + 1) * vocab);
        per_seq.push(mine);
        rest = tail;
    }
    Ok(per_seq
        .into_par_iter()
        .zip(seqs.par_iter_mut())
        .zip(proposals.par_iter())
        .map(|((rows, seq), proposal)| {
            let mut out = Vec::with_capacity(proposal.len() + 1);
            for (j, row) in rows.chunks_mut(vocab).enumerate() {
                let sampled = seq.sample(row);
                let accepted = proposal.get(j) == Some(&sampled.token);
                out.push(sampled);
                if !accepted {
                    break;
                }
            }
            out
        })
        .collect())
}

/// As [`sample_and_verify`] for one sequence whose rows the output head reduced to their argmax
/// (every row [`argmax_suffices`](SequenceSamplingState::argmax_suffices)): `argmax` holds its
/// `proposal.len() + 1` greedy tokens.
pub fn verify_greedy(
    seq: &mut SequenceSamplingState,
    argmax: &[u32],
    proposal: &[u32],
) -> Result<Vec<SampledToken>> {
    if argmax.len() != proposal.len() + 1 {
        return Err(EngineError::InvalidBatch(format!(
            "{} greedy tokens for {} proposed",
            argmax.len(),
            proposal.len()
        )));
    }
    let mut out = Vec::with_capacity(argmax.len());
    for (j, &token) in argmax.iter().enumerate() {
        out.push(seq.take_greedy(token));
        if proposal.get(j) != Some(&token) {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
