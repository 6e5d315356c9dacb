//! wick's HTTP server and command line.

pub mod chat_template;
