//! OpenAI's Responses API (`/v1/responses`). A request is checked ([`request`]), its input
//! items normalized ([`input`]: `item_reference`s resolved from the [`store`]) and, after any
//! stored conversation it continues (`previous_response_id`), turned into a chat request
//! ([`convert`]). For a local model the chat planner renders, tokenizes and constrains it exactly
//! as `/v1/chat/completions` would, and the engine's output becomes output items ([`output`]),
//! whole or streamed ([`stream`], [`events`]). For a route ([`routed`]) the router serves the
//! chat request as it serves `/v1/chat/completions`, and the chat answer or stream becomes the
//! response or its events.
//!
//! Not supported (refused with a 400 naming the field): built-in tools, background mode,
//! reasoning, conversations and prompt templates, `truncation: auto`, non-text input parts.

pub mod convert;
pub mod events;
pub mod input;
pub mod output;
pub mod request;
pub mod routed;
mod routed_stream;
pub mod store;
pub mod stream;

use std::sync::Arc;

use axum::body::Bytes;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use wick_engine::sample::stop::FinishReason;

use crate::api::errors::ApiError;
use crate::api::infer;
use crate::api::local_model::LocalModels;
use crate::api::openai::{unix_now, ChatCompletionRequest, SamplingFields};
use crate::api::responses::convert::rename_param;
use crate::api::responses::events::Save;
use crate::api::responses::output::{output_items, usage, ResponseHead, Status};
use crate::api::responses::request::ResponsesRequest;
use crate::api::responses::store::{ResponseStore, StoredResponse};
use crate::api::service::{blocking, plan_chat_request, ChatPlan};
use crate::api::sse::chat_logprobs;
use crate::api::validation::from_value;
use crate::ops::metrics::RequestTimer;
use crate::tools;

/// A Responses request as the chat request that answers it, with what storing it takes.
struct Prepared {
    req: ResponsesRequest,
    /// The chat request body (`convert::chat_body`).
    chat: Value,
    input_items: Vec<Value>,
    previous: Option<Arc<StoredResponse>>,
}

impl Prepared {
    /// Where the finished response goes (`None`: `store: false`).
    fn save(&mut self, store: &Arc<ResponseStore>) -> Option<Save> {
        self.req.store.unwrap_or(true).then(|| Save {
            store: store.clone(),
            input_items: std::mem::take(&mut self.input_items),
            previous: self.previous.take(),
        })
    }
}

/// OpenAI's 404 for a response id that is not stored (never was, expired, evicted, deleted).
fn response_not_found(id: &str, param: Option<&str>) -> ApiError {
    let mut e = ApiError::not_found(format!("Response with id '{id}' not found."));
    e.body.error.param = param.map(str::to_string);
    if param.is_some() {
        e = e.with_code("previous_response_not_found");
    }
    e
}

/// The conversation (the stored one it continues, then its input items) as a chat request.
fn prepare(req: ResponsesRequest, store: &ResponseStore) -> Result<Prepared, ApiError> {
    let previous = match req.previous_response_id.as_deref() {
        Some(id) => Some(
            store
                .get(id)
                .ok_or_else(|| response_not_found(id, Some("previous_response_id")))?,
        ),
        None => None,
    };
    let input_items = input::normalize(req.input.as_ref(), &|id| store.item(id))?;
    if input_items.is_empty() && previous.is_none() {
        return Err(ApiError::invalid(
            "input",
            "input is required (a string or a list of items)",
        ));
    }
    let mut conversation = previous.as_ref().map(|p| p.conversation()).unwrap_or_default();
    input::check_call_outputs(&conversation, &input_items)?;
    conversation.extend(input_items.iter().cloned());
    let messages = input::chat_messages(req.instructions.as_deref(), &conversation);
    let chat = convert::chat_body(&req, messages)?;
    Ok(Prepared {
        req,
        chat,
        input_items,
        previous,
    })
}

/// A Responses request made ready for a local model's engine.
struct ResponsePlan {
    chat: ChatPlan,
    head: ResponseHead,
    prepared: Prepared,
}

/// Parsing, the conversation, and the chat planner's work (template, tokenizing, grammars): all
/// CPU, run on the blocking pool.
fn plan(models: &LocalModels, store: &ResponseStore, body: &Bytes) -> Result<ResponsePlan, ApiError> {
    let req = ResponsesRequest::parse(body)?;
    models.get(&req.model)?;
    let prepared = prepare(req, store)?;
    // The chat request as `/v1/chat/completions` would read it.
    let chat_req: ChatCompletionRequest = from_value(&prepared.chat).map_err(rename_param)?;
    let sampling: SamplingFields = from_value(&prepared.chat).map_err(rename_param)?;
    let chat = plan_chat_request(models, &chat_req, &sampling).map_err(rename_param)?;
    let head = ResponseHead::new(&prepared.req, &chat.model.id, unix_now());
    Ok(ResponsePlan { chat, head, prepared })
}

/// `POST /v1/responses` for a local model.
pub async fn create(
    models: &LocalModels,
    store: &Arc<ResponseStore>,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let (models_c, store_c, body_c) = (models.clone(), store.clone(), body.clone());
    let ResponsePlan {
        chat,
        head,
        mut prepared,
    } = blocking(move || plan(&models_c, &store_c, &body_c)).await?;
    let ChatPlan {
        model,
        prompt,
        params,
        compiled,
        tool_setup,
        stream,
        ..
    } = chat;
    let timer = RequestTimer::new(model.metrics.clone());
    let events = infer::submit_all(
        &model.engine,
        vec![prompt],
        &params,
        compiled.as_ref(),
        timer,
        "input",
    )
    .map_err(rename_param)?;
    let save = prepared.save(store);
    if stream {
        let setup = stream::StreamSetup {
            head,
            tools: tool_setup,
            logprobs: params.logprobs,
            save,
        };
        return Ok(stream::sse(model, events, setup));
    }
    let (choices, engine_usage) = infer::collect(events, 1, 1).await?;
    let choice = choices.into_iter().next().unwrap_or_default();
    let status = match choice.finish {
        Some(FinishReason::Length) => Status::Incomplete,
        _ => Status::Completed,
    };
    let (text, calls, forced) = match &tool_setup {
        Some(setup) => {
            let (content, calls) = tools::message(setup, &choice.text);
            let calls = calls
                .unwrap_or_default()
                .into_iter()
                .map(|c| (c.id, c.function.name, c.function.arguments))
                .collect();
            (content, calls, setup.forced)
        }
        None => (Some(choice.text), Vec::new(), false),
    };
    let logprobs: Vec<Value> = if params.logprobs {
        chat_logprobs(model.engine.tokenizer(), &choice.tokens, &choice.logprobs)
            .content
            .iter()
            .map(|l| json!(l))
            .collect()
    } else {
        Vec::new()
    };
    let output = output_items(text, &logprobs, calls, forced, status);
    let object = head.object(status, output, Some(usage(engine_usage)), Some(unix_now()));
    if let Some(save) = save {
        save.keep(&head.id, &object);
    }
    Ok(Json(object).into_response())
}

/// `GET /v1/responses/{id}`.
pub fn retrieve(store: &ResponseStore, id: &str) -> Result<Response, ApiError> {
    let stored = store.get(id).ok_or_else(|| response_not_found(id, None))?;
    Ok(Json(stored.response.clone()).into_response())
}

/// `DELETE /v1/responses/{id}`.
pub fn delete(store: &ResponseStore, id: &str) -> Result<Response, ApiError> {
    if !store.remove(id) {
        return Err(response_not_found(id, None));
    }
    Ok(Json(json!({"id": id, "object": "response", "deleted": true})).into_response())
}

/// `GET /v1/responses/{id}/input_items`'s query (`include` is accepted and has nothing to add).
#[derive(Debug, Default, Deserialize)]
pub struct InputItemsQuery {
    pub limit: Option<usize>,
    pub order: Option<String>,
    pub after: Option<String>,
}

/// `GET /v1/responses/{id}/input_items`: the response's own input items, a page of `limit`
/// (1..=100, default 20) in `order` (`desc`, the default, or `asc`), after the item `after`.
pub fn input_items(store: &ResponseStore, id: &str, query: &InputItemsQuery) -> Result<Response, ApiError> {
    let stored = store.get(id).ok_or_else(|| response_not_found(id, None))?;
    let limit = query.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            format!("limit must be between 1 and 100, got {limit}"),
        ));
    }
    let mut items: Vec<&Value> = stored.input_items.iter().collect();
    match query.order.as_deref() {
        None | Some("desc") => items.reverse(),
        Some("asc") => {}
        Some(other) => {
            return Err(ApiError::invalid(
                "order",
                format!("order must be `asc` or `desc`, got `{other}`"),
            ))
        }
    }
    if let Some(after) = &query.after {
        let at = items
            .iter()
            .position(|i| i["id"] == after.as_str())
            .ok_or_else(|| ApiError::invalid("after", format!("no input item `{after}` in this response")))?;
        items.drain(..=at);
    }
    let has_more = items.len() > limit;
    items.truncate(limit);
    let first_id = items.first().map(|i| i["id"].clone());
    let last_id = items.last().map(|i| i["id"].clone());
    Ok(Json(json!({
        "object": "list", "data": items, "first_id": first_id, "last_id": last_id, "has_more": has_more,
    }))
    .into_response())
}

#[cfg(test)]
mod tests;
