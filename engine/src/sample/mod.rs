//! From logits to tokens and text: what a request asks for ([`params`]), the sampler
//! ([`sampler`]: penalties, temperature, top-k/p/min-p, seeds, logprobs), grammar constraints
//! through llguidance ([`constraint`]) and stop handling ([`stop`]: when a sequence ends, and
//! which text may be streamed), and the verification of speculative proposals ([`verify`]).

pub mod constraint;
pub mod params;
pub mod sampler;
pub mod stop;
pub mod verify;
