//! The server's side of the engine: submit one engine request per prompt, and read their events
//! as one ordered stream tagged with the prompt's index (completions may carry several prompts;
//! chat has one). Dropping the [`MergedEvents`] drops every engine stream, which cancels them.

use std::sync::Arc;

use tokio::sync::mpsc;
use wick_engine::engine::{EngineEvent, PromptTokenLogprob, Usage};
use wick_engine::sample::constraint::Constraint;
use wick_engine::sample::params::SamplingParams;
use wick_engine::sample::stop::FinishReason;
use wick_engine::{Engine, GenerateRequest};

use crate::api::errors::ApiError;
use crate::ops::metrics::RequestTimer;

pub struct MergedEvents {
    rx: mpsc::UnboundedReceiver<(usize, EngineEvent)>,
    remaining: usize,
    usage: Usage,
    /// Choices per prompt.
    n: usize,
    timer: RequestTimer,
}

/// What a merged stream yields.
pub enum Merged {
    /// An event of prompt `.0` (never `Done`: usages are summed instead).
    Event(usize, EngineEvent),
    /// Every prompt finished: the summed usage.
    Done(Usage),
}

/// Submits every prompt (all or nothing: a refused prompt cancels those already submitted). A
/// prompt too long for the context is blamed on `prompt_param`.
pub fn submit_all(
    engine: &Arc<Engine>,
    prompts: Vec<Vec<u32>>,
    params: &SamplingParams,
    compiled: Option<&Constraint>,
    timer: RequestTimer,
    prompt_param: &str,
) -> Result<MergedEvents, ApiError> {
    let mut streams = Vec::with_capacity(prompts.len());
    for prompt in prompts {
        let mut request = GenerateRequest::new(prompt, params.clone());
        request.compiled_constraint = compiled.cloned();
        streams.push(
            engine
                .submit(request)
                .map_err(|e| ApiError::from_engine(e, prompt_param))?,
        );
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let remaining = streams.len();
    for (i, mut stream) in streams.into_iter().enumerate() {
        let tx = tx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    // The client went away: dropping `stream` cancels the request.
                    _ = tx.closed() => break,
                    event = stream.recv() => match event {
                        Some(e) => {
                            let last = matches!(e, EngineEvent::Done(_) | EngineEvent::Error(_));
                            if tx.send((i, e)).is_err() || last {
                                break;
                            }
                        }
                        None => break,
                    },
                }
            }
        });
    }
    Ok(MergedEvents {
        rx,
        remaining,
        usage: Usage::default(),
        n: params.n,
        timer,
    })
}

impl MergedEvents {
    /// The next event; `None` after `Done` or an error, or if the engine went away.
    pub async fn next(&mut self) -> Option<Merged> {
        if self.remaining == 0 {
            return None;
        }
        loop {
            let (i, event) = self.rx.recv().await?;
            match event {
                EngineEvent::Done(u) => {
                    self.usage.add(&u);
                    self.timer.queued(u.queue_time);
                    self.remaining -= 1;
                    if self.remaining == 0 {
                        self.timer.done();
                        return Some(Merged::Done(self.usage));
                    }
                }
                EngineEvent::Error(e) => {
                    self.remaining = 0;
                    return Some(Merged::Event(i, EngineEvent::Error(e)));
                }
                other => {
                    match &other {
                        EngineEvent::Token(t) => self.timer.token(i * self.n + t.index),
                        EngineEvent::Finished { reason, .. } => self.timer.finished(reason.as_str()),
                        _ => {}
                    }
                    return Some(Merged::Event(i, other));
                }
            }
        }
    }
}

/// One finished choice, for non-streaming responses.
#[derive(Debug, Clone, Default)]
pub struct ChoiceOutput {
    pub text: String,
    pub tokens: Vec<u32>,
    /// Per token: its logprob and the top alternatives (when asked for).
    pub logprobs: Vec<(f32, Vec<(u32, f32)>)>,
    pub finish: Option<FinishReason>,
    /// The prompt's token logprobs (asked for by completions' `echo` with `logprobs`).
    pub prompt_logprobs: Option<Vec<PromptTokenLogprob>>,
}

/// Reads everything: choices indexed `prompt * n + index`, and the summed usage.
pub async fn collect(
    mut events: MergedEvents,
    n: usize,
    num_prompts: usize,
) -> Result<(Vec<ChoiceOutput>, Usage), ApiError> {
    let mut choices = vec![ChoiceOutput::default(); n * num_prompts];
    while let Some(item) = events.next().await {
        match item {
            Merged::Done(usage) => return Ok((choices, usage)),
            Merged::Event(p, EngineEvent::Token(t)) => {
                let c = &mut choices[p * n + t.index];
                c.text.push_str(&t.text);
                c.tokens.push(t.token);
                if let Some(lp) = t.logprob {
                    c.logprobs.push((lp, t.top_logprobs));
                }
            }
            Merged::Event(
                p,
                EngineEvent::Finished {
                    index, reason, text, ..
                },
            ) => {
                let c = &mut choices[p * n + index];
                c.text.push_str(&text);
                c.finish = Some(reason);
            }
            Merged::Event(p, EngineEvent::PromptLogprobs(entries)) => {
                for c in &mut choices[p * n..(p + 1) * n] {
                    c.prompt_logprobs = Some(entries.clone());
                }
            }
            Merged::Event(_, EngineEvent::Error(e)) => return Err(ApiError::internal(e)),
            Merged::Event(_, EngineEvent::Done(_)) => {}
        }
    }
    Err(ApiError::unavailable(
        "the engine stopped before the request finished",
    ))
}
