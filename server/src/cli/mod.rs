//! The command line's subcommands other than `serve`: [`generate`] (one prompt, no server),
//! [`config`] (`wick config check|print`, and the configuration glue `serve` uses), [`bench`]
//! (the load generator) and [`route_eval`] (scoring routes on a labelled set). The clients
//! (`bench`, `route-eval`) speak HTTP only: they import nothing of the API they measure.
//! [`local_models`] loads and starts the models `serve` runs (drafts included).

pub mod bench;
pub mod config;
pub mod generate;
pub mod local_models;
pub mod model;
pub mod route_eval;
