//! wick's HTTP server and command line, one room per part (docs/architecture.md;
//! `scripts/check-layers` keeps the arrows one way):
//! - [`api`]: the OpenAI API over HTTP: axum routes and thin handlers (`routes`), what they share
//!   (`state`), the local model service (`service`: an OpenAI request to the engine and back,
//!   with `validation`, `infer`, `sse`), and the wire vocabulary (`openai` types, `errors`,
//!   `chat_template`);
//! - [`tools`]: tool-call formats, parsers, grammars and JSON Schema;
//! - [`router`]: routes, tiers, cascade, failover and breakers;
//! - [`ops`]: metrics, authentication, draining and the outgoing HTTP client;
//! - [`cli`]: the subcommands other than `serve` (`generate`, `config`, `bench`, `route-eval`),
//!   and the command line's configuration glue.

pub mod api;
pub mod cli;
pub mod ops;
pub mod router;
pub mod tools;
