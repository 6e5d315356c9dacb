//! The model: the Llama/Qwen2 forward ([`llama`]), its configuration ([`config`]), weights and
//! their formats ([`weights`]), the token embedding ([`embedding`]), loading a model's files
//! into all of these plus the tokenizer ([`loader`]), device choice ([`device`]) and the
//! attention interface the forward calls ([`attention`]). The model stores and reads K/V only
//! through [`attention::AttentionBackend`]: it knows neither the paged pool nor the scheduler.

pub mod attention;
pub mod config;
pub mod device;
pub mod embedding;
pub mod llama;
pub mod loader;
pub mod weights;
