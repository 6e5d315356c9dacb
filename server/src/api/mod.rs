//! The OpenAI API over HTTP, in three layers (each imports only the ones below it):
//! - the HTTP surface: [`routes`] (the axum router and thin handlers, probes, `/metrics`),
//!   [`state`] (what handlers share) and [`model_list`] (`/v1/models`). Handlers parse, then hand
//!   the request to the router or to the local model service;
//! - the local model service: [`service`] (an OpenAI request for a model this process runs, to
//!   engine requests and back as a response or an SSE stream), with [`local_model`], request
//!   checks ([`validation`]), the engine glue ([`infer`]) and SSE ([`sse`]). The router's local
//!   tier calls it directly. [`responses`] (OpenAI's Responses API and its store of responses)
//!   plans its requests through the same chat planner;
//! - the wire vocabulary: [`openai`] (request and response types), [`errors`] (OpenAI's error
//!   body) and [`chat_template`].

pub mod chat_template;
pub mod errors;
pub mod infer;
pub mod local_model;
pub mod model_list;
pub mod openai;
pub mod responses;
pub mod routes;
pub mod service;
pub mod sse;
pub mod state;
pub mod validation;
