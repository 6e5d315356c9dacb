//! wick's HTTP server and command line. Layout after TGI's router: [`server`] (routes),
//! [`validation`] (request checks), [`infer`] (the engine interface), [`chat_template`],
//! [`openai`] (wire types), [`stream`] (SSE) and [`errors`]; [`state`] is what handlers share,
//! [`local_model`] what a model this process runs consists of, [`model_list`] `/v1/models`.

pub mod bench;
pub mod chat_template;
pub mod errors;
pub mod http_client;
pub mod infer;
pub mod json_schema;
pub mod local_model;
pub mod metrics;
pub mod model_list;
pub mod openai;
pub mod route_eval;
pub mod router;
pub mod server;
pub mod state;
pub mod stream;
pub mod tool_grammar;
pub mod tool_parser;
pub mod tools;
pub mod validation;
