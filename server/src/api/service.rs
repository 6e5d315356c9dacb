//! The local model service: an OpenAI request for a model this process runs becomes engine
//! requests (checked by `validation`, the chat template and tools applied, submitted through
//! `infer`), and the engine's events become OpenAI's response or SSE stream (`sse`). The HTTP
//! handlers call it for a request that names a local model; the router's local tier calls it
//! directly ([`handle`]). It knows neither the handlers nor the router.

use std::sync::Arc;

use axum::body::Bytes;
use axum::response::{AppendHeaders, IntoResponse, Response};
use axum::Json;

use crate::api::errors::ApiError;
use crate::api::infer::{self, ChoiceOutput};
use crate::api::local_model::{LocalModel, LocalModels};
use crate::api::openai::*;
use crate::api::sse::{self, StreamKind};
use crate::api::validation::{
    chat_logprobs, chat_messages, check_fits_context, check_functions, completion_prompts, parse_json,
    sampling_params, MAX_COMPLETION_LOGPROBS,
};
use crate::ops::metrics::RequestTimer;
use crate::tools::{self, ToolConstraint, ToolSetup};
use wick_engine::sample::constraint::Constraint;
use wick_engine::sample::params::SamplingParams;

/// Which API a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
}

impl Endpoint {
    /// The path under `/v1`.
    pub fn path(self) -> &'static str {
        match self {
            Self::Chat => "chat/completions",
            Self::Completions => "completions",
        }
    }
}

/// A request body for `endpoint` whose `model` is a local model, answered (errors included) as
/// the HTTP handler would answer it.
pub async fn handle(models: &LocalModels, endpoint: Endpoint, body: Bytes) -> Response {
    let result = match endpoint {
        Endpoint::Chat => chat(models, &body).await,
        Endpoint::Completions => completions(models, &body).await,
    };
    result.into_response()
}

/// A chat request made ready for the engine: rendered, tokenized, its grammar compiled. The
/// Responses API (`api::responses`) plans its requests as chat requests too.
pub(crate) struct ChatPlan {
    pub model: Arc<LocalModel>,
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    pub compiled: Option<Constraint>,
    pub tool_setup: Option<Arc<ToolSetup>>,
    pub stream: bool,
    pub include_usage: bool,
}

/// Everything a chat request needs before the engine, none of it async: parsing, the template,
/// tokenizing, compiling the tools' or the schema's grammar. It runs on the blocking pool
/// ([`off_runtime`]): with 128 tools it is a fraction of a second of CPU.
fn plan_chat(models: &LocalModels, body: &Bytes) -> Result<ChatPlan, ApiError> {
    let (req, sampling): (ChatCompletionRequest, SamplingFields) = parse_json(body)?;
    plan_chat_request(models, &req, &sampling)
}

/// [`plan_chat`] for a parsed request (the Responses API builds one from its own request).
pub(crate) fn plan_chat_request(
    models: &LocalModels,
    req: &ChatCompletionRequest,
    sampling: &SamplingFields,
) -> Result<ChatPlan, ApiError> {
    let model = models.get(&req.model)?;
    check_functions(req.functions.as_ref(), req.function_call.as_ref())?;
    if req.audio.as_ref().is_some_and(|a| !a.is_null()) {
        return Err(ApiError::invalid(
            "audio",
            "audio output is not supported by this model",
        ));
    }
    let messages = chat_messages(&req.messages)?;
    let template = model
        .template
        .as_ref()
        .ok_or_else(|| ApiError::bad_request("the model has no chat template; use /v1/completions"))?;
    let prepared = tools::prepare(template, model.tool_format, req, messages, &models.limits)?;
    let max_model_len = model.engine.limits().max_model_len;
    check_fits_context(
        model.engine.tokenizer(),
        &prepared.prompt,
        max_model_len,
        "messages",
    )?;
    // The template writes BOS itself where the model wants one.
    let prompt = model.engine.tokenizer().encode(&prepared.prompt, false)?;
    let max_tokens = req.max_completion_tokens.or(sampling.max_tokens);
    let mut params = sampling_params(sampling, max_tokens, models.limits.max_schema_bytes)?;
    chat_logprobs(&mut params, req.logprobs, req.top_logprobs)?;
    let mut compiled = None;
    match prepared.constraint {
        Some(ToolConstraint::Forced(_)) if params.constraint.is_some() => {
            return Err(ApiError::invalid(
                "response_format",
                "response_format cannot be combined with a tool_choice that forces a call",
            ));
        }
        Some(ToolConstraint::Forced(spec)) => {
            // Compiled here so that a schema llguidance rejects is blamed on `tools`.
            compiled = Some(model.engine.compile_constraint(&spec, "tools")?);
            params.constraint = Some(spec);
        }
        // `auto` with response_format: the answer's format wins; calls are still parsed.
        Some(ToolConstraint::Triggered(_)) if params.constraint.is_some() => {}
        Some(ToolConstraint::Triggered(spec)) => match model.engine.compile_constraint(&spec, "tools") {
            Ok(c) => {
                compiled = Some(c);
                params.constraint = Some(spec);
            }
            // `auto` never needed a grammar to work: a schema llguidance cannot compile leaves
            // the calls unconstrained (and parsed afterwards) rather than failing the request.
            Err(e) => tracing::warn!("tool_choice auto without a grammar: {e}"),
        },
        None => {}
    }
    if let (None, Some(spec)) = (&compiled, &params.constraint) {
        compiled = Some(model.engine.compile_constraint(spec, "response_format")?);
    }
    let tool_setup = prepared.tools.map(Arc::new);
    if tool_setup.as_ref().is_some_and(|t| !t.generic) {
        // Tool markup such as <|python_tag|> or [TOOL_CALLS] is a special token: keep it for
        // the parser (it never reaches the client as content).
        params.skip_special_tokens = false;
    }
    Ok(ChatPlan {
        model,
        prompt,
        params,
        compiled,
        tool_setup,
        stream: sampling.stream.unwrap_or(false),
        include_usage: sampling.stream_options.as_ref().is_some_and(|o| o.include_usage),
    })
}

/// `POST /v1/chat/completions` for a local model.
pub async fn chat(models: &LocalModels, body: &Bytes) -> Result<Response, ApiError> {
    let ChatPlan {
        model,
        prompt,
        params,
        compiled,
        tool_setup,
        stream,
        include_usage,
    } = off_runtime(models, body, plan_chat).await?;
    let n = params.n;
    let timer = RequestTimer::new(model.metrics.clone());
    let events = infer::submit_all(
        &model.engine,
        vec![prompt],
        &params,
        compiled.as_ref(),
        timer,
        "messages",
    )?;
    let id = random_id("chatcmpl");
    if stream {
        let options = sse::SseOptions {
            kind: StreamKind::Chat,
            id,
            n,
            include_usage,
            logprobs: params.logprobs,
            tools: tool_setup,
        };
        return Ok(sse::sse(model, events, options));
    }
    let (choices, usage) = infer::collect(events, n, 1).await?;
    let tokenizer = model.engine.tokenizer();
    let choices = choices
        .into_iter()
        .enumerate()
        .map(|(index, c)| {
            let (content, tool_calls) = match &tool_setup {
                Some(setup) => tools::message(setup, &c.text),
                None => (Some(c.text), None),
            };
            ChatChoice {
                index,
                logprobs: params
                    .logprobs
                    .then(|| sse::chat_logprobs(tokenizer, &c.tokens, &c.logprobs)),
                finish_reason: c.finish.map(|f| tools::finish_reason(tool_calls.is_some(), f)),
                message: ChatMessageOut {
                    role: "assistant",
                    content,
                    tool_calls,
                },
            }
        })
        .collect();
    let response = Json(ChatCompletion {
        id,
        object: "chat.completion",
        created: unix_now(),
        model: model.id.clone(),
        system_fingerprint: fingerprint(),
        choices,
        usage: sse::usage(usage),
    });
    Ok((AppendHeaders(sse::draft_header(&usage)), response).into_response())
}

/// A completions request made ready for the engine.
struct CompletionPlan {
    model: Arc<LocalModel>,
    prompts: Vec<Vec<u32>>,
    params: SamplingParams,
    compiled: Option<Constraint>,
    /// With `echo`: each prompt's text, and with `logprobs` too its ids.
    echoed: Vec<String>,
    echoed_ids: Option<Vec<Vec<u32>>>,
    stream: bool,
    include_usage: bool,
}

/// As [`plan_chat`], for `/v1/completions` (tokenizing the prompts is the work here).
fn plan_completions(models: &LocalModels, body: &Bytes) -> Result<CompletionPlan, ApiError> {
    let (req, sampling): (CompletionRequest, SamplingFields) = parse_json(body)?;
    let model = models.get(&req.model)?;
    if let Some(best_of) = req.best_of.filter(|&b| b > 1) {
        // Generating best_of candidates to return the likeliest n is not implemented: refused
        // rather than answered as if it were.
        return Err(ApiError::invalid(
            "best_of",
            format!("best_of {best_of} is not supported (only 1)"),
        ));
    }
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid(
            "suffix",
            "suffix is not supported by this model",
        ));
    }
    let tokenizer = model.engine.tokenizer().clone();
    let max_model_len = model.engine.limits().max_model_len;
    let prompts = completion_prompts(&req.prompt, |s| {
        check_fits_context(&tokenizer, s, max_model_len, "prompt")?;
        Ok(tokenizer.encode(s, true)?)
    })?;
    // OpenAI's completions default to 16 tokens.
    let max_tokens = Some(sampling.max_tokens.unwrap_or(16));
    let mut params = sampling_params(&sampling, max_tokens, models.limits.max_schema_bytes)?;
    if let Some(k) = req.logprobs {
        if k > MAX_COMPLETION_LOGPROBS {
            return Err(ApiError::invalid(
                "logprobs",
                format!(
                    "logprobs must be between 0 and {}, got {k}",
                    MAX_COMPLETION_LOGPROBS
                ),
            ));
        }
        params.logprobs = true;
        params.top_logprobs = k as usize;
    }
    let echo = req.echo.unwrap_or(false);
    if echo && sampling.stream.unwrap_or(false) {
        return Err(ApiError::invalid("echo", "echo is not supported with stream"));
    }
    // Echo with logprobs also gives the prompt's token logprobs (lm-eval-harness' loglikelihood).
    let echoed_ids = (echo && params.logprobs).then(|| prompts.clone());
    if echoed_ids.is_some() {
        params.prompt_logprobs = Some(params.top_logprobs);
    }
    let echoed: Vec<String> = if echo {
        prompts
            .iter()
            .map(|p| tokenizer.decode(p, false))
            .collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    // Compiled once here rather than by the engine for each prompt.
    let compiled = match &params.constraint {
        Some(spec) => Some(model.engine.compile_constraint(spec, "response_format")?),
        None => None,
    };
    Ok(CompletionPlan {
        model,
        prompts,
        params,
        compiled,
        echoed,
        echoed_ids,
        stream: sampling.stream.unwrap_or(false),
        include_usage: sampling.stream_options.as_ref().is_some_and(|o| o.include_usage),
    })
}

/// `POST /v1/completions` for a local model.
pub async fn completions(models: &LocalModels, body: &Bytes) -> Result<Response, ApiError> {
    let CompletionPlan {
        model,
        prompts,
        params,
        compiled,
        echoed,
        echoed_ids,
        stream,
        include_usage,
    } = off_runtime(models, body, plan_completions).await?;
    let tokenizer = model.engine.tokenizer().clone();
    let n = params.n;
    let num_prompts = prompts.len();
    let timer = RequestTimer::new(model.metrics.clone());
    let events = infer::submit_all(
        &model.engine,
        prompts,
        &params,
        compiled.as_ref(),
        timer,
        "prompt",
    )?;
    let id = random_id("cmpl");
    if stream {
        let options = sse::SseOptions {
            kind: StreamKind::Completion,
            id,
            n,
            include_usage,
            logprobs: params.logprobs,
            tools: None,
        };
        return Ok(sse::sse(model, events, options));
    }
    let (choices, usage) = infer::collect(events, n, num_prompts).await?;
    let choices = choices
        .into_iter()
        .enumerate()
        .map(|(index, c): (usize, ChoiceOutput)| {
            let prefix = echoed.get(index / n).cloned().unwrap_or_default();
            let logprobs = params.logprobs.then(|| {
                let generated = sse::completion_logprobs(&tokenizer, &c.tokens, &c.logprobs, prefix.len());
                match (&echoed_ids, &c.prompt_logprobs) {
                    (Some(ids), Some(entries)) => {
                        let mut all = sse::prompt_logprobs(&tokenizer, &ids[index / n], entries);
                        all.append(generated);
                        all
                    }
                    _ => generated,
                }
            });
            CompletionChoice {
                index,
                logprobs,
                finish_reason: c.finish.map(|f| f.as_str()),
                text: prefix + &c.text,
            }
        })
        .collect();
    let response = Json(Completion {
        id,
        object: "text_completion",
        created: unix_now(),
        model: model.id.clone(),
        system_fingerprint: fingerprint(),
        choices,
        usage: Some(sse::usage(usage)),
    });
    Ok((AppendHeaders(sse::draft_header(&usage)), response).into_response())
}

/// Runs `plan` on tokio's blocking pool: request preparation is CPU work that can take long
/// (a long prompt to tokenize, many tools to render and compile), and on a runtime worker it
/// would hold up every other connection that worker serves.
async fn off_runtime<T: Send + 'static>(
    models: &LocalModels,
    body: &Bytes,
    plan: fn(&LocalModels, &Bytes) -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    let (models, body) = (models.clone(), body.clone());
    blocking(move || plan(&models, &body)).await
}

/// Runs `work` on tokio's blocking pool (see [`off_runtime`]).
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::internal(format!("request preparation failed: {e}")))?
}
