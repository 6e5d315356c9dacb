//! Checks that a deserialized configuration can start: everything that serde's types cannot say
//! (sizes above zero, device and dtype names, references between models, routes and
//! `server.model`). Every problem is collected, not only the first.

use std::collections::HashSet;

use crate::error::did_you_mean;
use crate::schema::{Capability, Config, MAX_NUM_SPECULATIVE_TOKENS};

/// The weight formats the loader accepts (`WeightFormat::parse` in wick-engine), and `auto`:
/// as stored (the loader's default, which a model's `dtype` may ask for under a dense
/// `engine.dtype`).
pub const DTYPES: &[&str] = &["auto", "f32", "f16", "bf16", "q8_0", "q4_0"];
/// What `engine.kv_cache_dtype` takes.
pub const KV_CACHE_DTYPES: &[&str] = &["auto", "f32", "f16"];

/// (field path, message, suggestion) for each problem; the caller adds where it came from.
pub type Finding = (String, String, Option<String>);

pub fn validate(cfg: &Config) -> Vec<Finding> {
    let mut out: Vec<Finding> = Vec::new();
    let mut bad = |field: &str, msg: String| out.push((field.to_string(), msg, None));
    let s = &cfg.server;
    if s.host.trim().is_empty() {
        bad("server.host", "must not be empty".into());
    }
    if s.port == 0 {
        // Probes, Services and clients need a known port.
        bad("server.port", "must be between 1 and 65535".into());
    }
    if s.max_body_bytes == 0 {
        bad("server.max_body_bytes", "must be greater than 0".into());
    }
    if s.max_tools == 0 {
        bad("server.max_tools", "must be greater than 0".into());
    }
    if s.max_schema_bytes == 0 {
        bad("server.max_schema_bytes", "must be greater than 0".into());
    }
    if s.responses_store_max == 0 {
        bad("server.responses_store_max", "must be greater than 0".into());
    }
    if s.responses_store_max_bytes == 0 {
        bad(
            "server.responses_store_max_bytes",
            "must be greater than 0".into(),
        );
    }
    if s.responses_store_ttl_secs == 0 {
        bad("server.responses_store_ttl_secs", "must be greater than 0".into());
    }
    for (i, key) in s.api_keys.iter().enumerate() {
        if key.expose().trim().is_empty() {
            bad(&format!("server.api_keys[{i}]"), "must not be empty".into());
        }
    }
    for (i, origin) in s.cors_allow_origins.iter().enumerate() {
        if origin != "*" && !origin.starts_with("http://") && !origin.starts_with("https://") {
            bad(
                &format!("server.cors_allow_origins[{i}]"),
                format!("`{origin}` is not an origin (`*`, or `https://host[:port]`)"),
            );
        }
    }

    let e = &cfg.engine;
    if let Err(msg) = check_device(&e.device) {
        bad("engine.device", msg);
    }
    for (field, value) in [
        ("engine.block_size", e.block_size),
        ("engine.max_num_seqs", e.max_num_seqs),
        ("engine.max_num_batched_tokens", e.max_num_batched_tokens),
        ("engine.max_waiting_requests", e.max_waiting_requests),
    ] {
        if value == 0 {
            bad(field, "must be greater than 0".into());
        }
    }
    if e.kv_cache_mib == Some(0) {
        bad("engine.kv_cache_mib", "must be greater than 0".into());
    }
    if e.max_model_len == Some(0) {
        bad("engine.max_model_len", "must be greater than 0".into());
    }
    if cfg.logging.level.trim().is_empty() {
        bad("logging.level", "must not be empty (e.g. `info`)".into());
    }
    if let Some(dtype) = &e.dtype {
        if !DTYPES.contains(&dtype.as_str()) {
            out.push((
                "engine.dtype".into(),
                format!("unknown dtype `{dtype}`; expected one of {}", DTYPES.join(", ")),
                did_you_mean(dtype, DTYPES.iter().copied()),
            ));
        }
    }

    if !KV_CACHE_DTYPES.contains(&e.kv_cache_dtype.as_str()) {
        out.push((
            "engine.kv_cache_dtype".into(),
            format!(
                "unknown KV cache dtype `{}`; expected one of {}",
                e.kv_cache_dtype,
                KV_CACHE_DTYPES.join(", ")
            ),
            did_you_mean(&e.kv_cache_dtype, KV_CACHE_DTYPES.iter().copied()),
        ));
    }

    check_models(cfg, &mut out);
    check_speculation(cfg, &mut out);
    check_routes(cfg, &mut out);
    out
}

/// `cpu`, `cuda` or `cuda:N` (the syntax `wick_engine::device_from_spec` takes).
pub fn check_device(device: &str) -> Result<(), String> {
    match device {
        "cpu" | "cuda" => Ok(()),
        d => match d.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(_)) => Ok(()),
            _ => Err(format!(
                "`{device}` is not a device (expected `cpu`, `cuda` or `cuda:N`)"
            )),
        },
    }
}

fn check_models(cfg: &Config, out: &mut Vec<Finding>) {
    let mut ids = HashSet::new();
    let mut names = HashSet::new();
    for (i, m) in cfg.models.iter().enumerate() {
        let at = |f: &str| format!("models[{i}].{f}");
        if m.id.trim().is_empty() {
            out.push((at("id"), "every model needs an `id`".into(), None));
        } else if !ids.insert(m.id.as_str()) {
            out.push((at("id"), format!("duplicate model id `{}`", m.id), None));
        }
        if let Some(name) = &m.served_name {
            if !names.insert(name.as_str()) {
                out.push((at("served_name"), format!("`{name}` is served twice"), None));
            }
        }
        match (&m.source, &m.url) {
            (Some(_), Some(_)) => out.push((
                at("url"),
                "a model is local (`source`) or remote (`url`), not both".into(),
                None,
            )),
            (None, Some(url)) if !url.starts_with("http://") && !url.starts_with("https://") => {
                out.push((at("url"), format!("`{url}` is not an http(s) URL"), None));
            }
            (Some(src), None) if src.trim().is_empty() => {
                out.push((at("source"), "must not be empty".into(), None));
            }
            _ => {}
        }
        if m.url.is_none() {
            for (field, set) in [
                ("api_key_env", m.api_key_env.is_some()),
                ("timeout_secs", m.timeout_secs.is_some()),
                ("max_concurrency", m.max_concurrency.is_some()),
            ] {
                if set {
                    out.push((at(field), "only applies to a remote model (`url`)".into(), None));
                }
            }
        }
        if let Some(var) = &m.api_key_env {
            let ok = !var.is_empty()
                && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !var.starts_with(|c: char| c.is_ascii_digit());
            if !ok {
                out.push((
                    at("api_key_env"),
                    format!("`{var}` is not an environment variable name"),
                    None,
                ));
            }
        }
        if m.timeout_secs == Some(0) {
            out.push((at("timeout_secs"), "must be greater than 0".into(), None));
        }
        if m.max_concurrency == Some(0) {
            out.push((at("max_concurrency"), "must be greater than 0".into(), None));
        }
        if !m.is_remote() {
            for c in m.capabilities.iter().flatten() {
                if !Capability::LOCAL.contains(c) {
                    out.push((
                        at("capabilities"),
                        format!("`{}`: wick's local models read text only", c.as_str()),
                        None,
                    ));
                }
            }
        }
        for (field, v) in [
            ("price_input_per_mtok", m.price_input_per_mtok),
            ("price_output_per_mtok", m.price_output_per_mtok),
        ] {
            if v.is_some_and(|v| v < 0.0 || !v.is_finite()) {
                out.push((at(field), "must be a price of at least 0".into(), None));
            }
        }
    }
    let local: Vec<&str> = cfg
        .models
        .iter()
        .filter(|m| !m.is_remote())
        .map(|m| m.id.as_str())
        .collect();
    // A model that only drafts for another is not a candidate for serving (`served_model_index`).
    let servable: Vec<&str> = local
        .iter()
        .copied()
        .filter(|id| !crate::is_draft(cfg, id))
        .collect();
    match &cfg.server.model {
        Some(id) => match cfg.models.iter().find(|m| &m.id == id) {
            None if !cfg.models.is_empty() => out.push((
                "server.model".into(),
                format!("no model has id `{id}`"),
                did_you_mean(id, local.iter().copied()),
            )),
            Some(m) if m.is_remote() => out.push((
                "server.model".into(),
                format!("`{id}` is remote (`url`); this process can only serve a local model"),
                None,
            )),
            _ => {}
        },
        None if servable.len() > 1 => out.push((
            "server.model".into(),
            format!(
                "several local models ({}): say which this process serves (`server.model` or --model-id)",
                servable.join(", ")
            ),
            None,
        )),
        None => {}
    }
}

/// Per-model `dtype` and speculative decoding: `draft` names another local model that does not
/// speculate itself, `speculative` is not given beside it, and the tuning keys come with one
/// of the two.
fn check_speculation(cfg: &Config, out: &mut Vec<Finding>) {
    for (i, m) in cfg.models.iter().enumerate() {
        let at = |f: &str| format!("models[{i}].{f}");
        if m.is_remote() {
            for (field, set) in [
                ("dtype", m.dtype.is_some()),
                ("draft", m.draft.is_some()),
                ("speculative", m.speculative.is_some()),
                ("num_speculative_tokens", m.num_speculative_tokens.is_some()),
                ("speculative_max_batch", m.speculative_max_batch.is_some()),
                ("speculative_measure", m.speculative_measure.is_some()),
                ("draft_vocab", m.draft_vocab.is_some()),
                ("draft_lookup", m.draft_lookup.is_some()),
            ] {
                if set {
                    out.push((at(field), "only applies to a local model (`source`)".into(), None));
                }
            }
            continue;
        }
        if let Some(dtype) = &m.dtype {
            if !DTYPES.contains(&dtype.as_str()) {
                out.push((
                    at("dtype"),
                    format!("unknown dtype `{dtype}`; expected one of {}", DTYPES.join(", ")),
                    did_you_mean(dtype, DTYPES.iter().copied()),
                ));
            }
        }
        if let (Some(_), Some(method)) = (&m.draft, m.speculative) {
            out.push((
                at("speculative"),
                format!(
                    "`draft` and `speculative = \"{}\"` together: speculate with a draft model or \
                     without one, not both",
                    method.as_str()
                ),
                None,
            ));
        }
        if let Some(id) = &m.draft {
            let found = cfg.models.iter().find(|d| &d.id == id);
            let problem = match found {
                _ if id == &m.id => Some((
                    format!("`{id}` is this model; a draft is another, smaller model with its vocabulary"),
                    None,
                )),
                None => {
                    let others = cfg
                        .models
                        .iter()
                        .filter(|d| !d.is_remote() && d.id != m.id)
                        .map(|d| d.id.as_str());
                    Some((format!("no model has id `{id}`"), did_you_mean(id, others)))
                }
                Some(d) if d.is_remote() => Some((
                    format!("`{id}` is remote (`url`); a draft runs in this process, beside its target"),
                    None,
                )),
                // Drafts of drafts would need an engine inside the draft's engine.
                Some(d) if d.speculates() => Some((
                    format!("`{id}` speculates itself (`draft` or `speculative`); a draft model cannot"),
                    None,
                )),
                Some(_) => None,
            };
            if let Some((message, suggestion)) = problem {
                out.push((at("draft"), message, suggestion));
            }
        }
        let needs = "only applies with `draft` or `speculative`";
        if let Some(k) = m.num_speculative_tokens {
            if !m.speculates() {
                out.push((at("num_speculative_tokens"), needs.into(), None));
            } else if !(1..=MAX_NUM_SPECULATIVE_TOKENS).contains(&k) {
                out.push((
                    at("num_speculative_tokens"),
                    format!("must be between 1 and {MAX_NUM_SPECULATIVE_TOKENS}"),
                    None,
                ));
            }
        }
        if let Some(b) = m.speculative_max_batch {
            if !m.speculates() {
                out.push((at("speculative_max_batch"), needs.into(), None));
            } else if b == 0 {
                out.push((at("speculative_max_batch"), "must be greater than 0".into(), None));
            }
        }
        if m.speculative_measure.is_some() && !m.speculates() {
            out.push((at("speculative_measure"), needs.into(), None));
        }
        if let Some(v) = m.draft_vocab {
            if m.draft.is_none() {
                out.push((at("draft_vocab"), "only applies with `draft`".into(), None));
            } else if v == 0 {
                out.push((at("draft_vocab"), "must be greater than 0".into(), None));
            }
        }
        if m.draft_lookup.is_some() && m.draft.is_none() {
            out.push((at("draft_lookup"), "only applies with `draft`".into(), None));
        }
    }
}

fn check_routes(cfg: &Config, out: &mut Vec<Finding>) {
    let ids: Vec<&str> = cfg.models.iter().map(|m| m.id.as_str()).collect();
    let mut names = HashSet::new();
    for (i, r) in cfg.routes.iter().enumerate() {
        let at = |f: &str| format!("routes[{i}].{f}");
        if r.name.trim().is_empty() {
            out.push((at("name"), "every route needs a `name`".into(), None));
        } else if !names.insert(r.name.as_str()) {
            out.push((at("name"), format!("duplicate route `{}`", r.name), None));
        } else if cfg
            .models
            .iter()
            .any(|m| m.served_name.as_deref() == Some(r.name.as_str()))
        {
            out.push((
                at("name"),
                format!("`{}` is also a model's served_name", r.name),
                None,
            ));
        }
        if r.tiers.is_empty() {
            out.push((at("tiers"), "needs at least one model id".into(), None));
        }
        let mut seen = HashSet::new();
        for (j, tier) in r.tiers.iter().enumerate() {
            let field = format!("routes[{i}].tiers[{j}]");
            if !ids.contains(&tier.as_str()) {
                out.push((
                    field,
                    format!("no model has id `{tier}`"),
                    did_you_mean(tier, ids.iter().copied()),
                ));
            } else if !seen.insert(tier.as_str()) {
                out.push((field, format!("`{tier}` is listed twice"), None));
            }
        }
        let p = &r.policy;
        for (field, v) in [
            ("min_mean_logprob", p.min_mean_logprob),
            ("min_token_logprob", p.min_token_logprob),
        ] {
            if let Some(v) = v {
                if v > 0.0 || v.is_nan() {
                    // A logprob is at most 0, so such a threshold would escalate every answer.
                    out.push((
                        at(&format!("policy.{field}")),
                        format!("{v} must be at most 0"),
                        None,
                    ));
                }
            }
        }
        if p.breaker_failures == 0 {
            out.push((
                at("policy.breaker_failures"),
                "must be greater than 0".into(),
                None,
            ));
        }
        match p.verify {
            Some(crate::VerifyMode::Lossless) => check_lossless(cfg, r, &at("policy.verify"), out),
            Some(crate::VerifyMode::Score) => check_score(cfg, r, &at("policy.verify"), out),
            None => {}
        }
    }
}

/// A lossless route: the fallback (its last tier) is local and drafts with a cheaper tier of
/// the route, so every answer is the fallback's, drafted by the cheap model.
fn check_lossless(cfg: &Config, r: &crate::RouteConfig, field: &str, out: &mut Vec<Finding>) {
    let Some((fallback, cheaper)) = r.tiers.split_last().filter(|(_, c)| !c.is_empty()) else {
        out.push((
            field.into(),
            "`lossless` needs two tiers: a cheap one that drafts and a fallback that verifies".into(),
            None,
        ));
        return;
    };
    let Some(model) = cfg.models.iter().find(|m| &m.id == fallback) else {
        return; // reported at the tier
    };
    let drafts_with_a_tier = model.draft.as_ref().is_some_and(|d| cheaper.contains(d));
    if model.url.is_some() {
        out.push((
            field.into(),
            format!("`lossless` verifies inside the fallback's engine, and `{fallback}` is remote (`url`)"),
            None,
        ));
    } else if !drafts_with_a_tier {
        out.push((
            field.into(),
            format!("`lossless` needs the fallback `{fallback}` to draft with a cheaper tier of the route"),
            Some(format!(
                "add `draft = \"{}\"` to the [[models]] entry `{fallback}`",
                cheaper[0]
            )),
        ));
    }
    let p = &r.policy;
    let judged =
        p.min_mean_logprob.is_some() || p.min_token_logprob.is_some() || !p.abstain_patterns.is_empty();
    if judged {
        // The fallback answers every request: there is no cheap answer to judge.
        out.push((
            field.into(),
            "`lossless` leaves nothing to judge: drop `min_mean_logprob`, `min_token_logprob` and `abstain_patterns`".into(),
            None,
        ));
    }
}

/// A score route: two tiers at least, a threshold to judge by, and a fallback that can score
/// (logprobs; a remote one also its chat template, to render the conversation as it reads it).
fn check_score(cfg: &Config, r: &crate::RouteConfig, field: &str, out: &mut Vec<Finding>) {
    let Some(fallback) = r.tiers.last().filter(|_| r.tiers.len() >= 2) else {
        out.push((
            field.into(),
            "`score` needs two tiers: a cheap one that answers and a fallback that scores it".into(),
            None,
        ));
        return;
    };
    let p = &r.policy;
    if p.min_mean_logprob.is_none() && p.min_token_logprob.is_none() {
        out.push((
            field.into(),
            "`score` judges by the fallback's logprobs and has no threshold".into(),
            Some(
                "add `min_mean_logprob` and/or `min_token_logprob` to the policy \
                 (`wick route-eval --calibrate` finds them)"
                    .into(),
            ),
        ));
    }
    let Some(model) = cfg.models.iter().find(|m| &m.id == fallback) else {
        return; // reported at the tier
    };
    if !model.capabilities().contains(&crate::Capability::Logprobs) {
        out.push((
            field.into(),
            format!("`score` reads the fallback's logprobs, and `{fallback}` does not list `logprobs` in its capabilities"),
            None,
        ));
    }
    if model.is_remote() && model.chat_template.is_none() {
        out.push((
            field.into(),
            format!(
                "`score` renders a chat request and its answer as the remote fallback `{fallback}` reads them, and it has no `chat_template`"
            ),
            Some(format!(
                "add `chat_template = \"path/to/template.jinja\"` (the model's own template) to the [[models]] entry `{fallback}`"
            )),
        ));
    }
}
