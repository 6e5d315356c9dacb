//! The local models `wick serve` runs: each one's weights (in its own `dtype`, else
//! `engine.dtype`), its draft model's when it speculates with one, its chat template, and its
//! engine. A draft runs inside its target's engine and is not a model of its own here.

use std::sync::Arc;

use anyhow::{Context, Result};
use wick_config::{Config, ModelConfig, Speculative};
use wick_engine::model::loader::{self, LoadedModel};
use wick_engine::spec::{SpeculativeConfig, SpeculativeMethod};
use wick_engine::Engine;

use crate::api::chat_template::ChatTemplate;
use crate::cli::config::engine_config;
use crate::cli::model::{chat_template, load_options, resolve_model};
use crate::tools::{self, parser::ToolCallFormat};

/// One local model, started: its engine and what the API needs beside it.
pub struct LocalModel {
    /// The config's id (routes name it).
    pub config_id: String,
    /// The name clients pass as `model`.
    pub model_id: String,
    pub engine: Arc<Engine>,
    pub template: Option<ChatTemplate>,
    pub tool_format: Option<ToolCallFormat>,
}

/// One local model, loaded (weights on the device; no engine yet).
struct Loaded {
    config_id: String,
    model_id: String,
    loaded: LoadedModel,
    /// The draft model's weights, with speculation by a draft model.
    draft: Option<LoadedModel>,
    speculative: Option<SpeculativeConfig>,
    template: Option<ChatTemplate>,
    tool_format: Option<ToolCallFormat>,
}

/// Loads every local model (`Config::local_models`) and its draft, then starts their engines.
pub fn start(cfg: &Config) -> Result<Vec<LocalModel>> {
    // wick-config validated that one local model is the served one; routes may name more.
    let models = cfg.local_models();
    anyhow::ensure!(!models.is_empty(), "no local model to serve");
    // Every model's weights first, then the engines: on a GPU each engine's KV pool takes its
    // share of the memory left once all weights are in.
    let loaded = models.iter().map(|m| load(cfg, m)).collect::<Result<Vec<_>>>()?;
    let count = loaded.len();
    let mut out = Vec::with_capacity(count);
    for (i, m) in loaded.into_iter().enumerate() {
        let mut engine_config = engine_config(&cfg.engine);
        engine_config.gpu_memory_share = 1.0 / (count - i) as f64;
        engine_config.speculative = m.speculative;
        let engine = match m.draft {
            // Refuses a draft whose vocabulary differs from the target's, naming both sizes.
            Some(draft) => Engine::with_draft(m.loaded, draft, engine_config),
            None => Engine::new(m.loaded, engine_config),
        }
        .with_context(|| format!("starting the engine of `{}`", m.config_id))?;
        if let Some(spec) = m.speculative {
            let method = match spec.method {
                SpeculativeMethod::Ngram { .. } => "ngram",
                SpeculativeMethod::DraftModel => "draft model",
            };
            tracing::info!(
                model = %m.model_id,
                method,
                k = spec.num_speculative_tokens,
                max_batch = spec.max_batch,
                "speculative decoding on"
            );
        }
        out.push(LocalModel {
            config_id: m.config_id,
            model_id: m.model_id,
            engine: Arc::new(engine),
            template: m.template,
            tool_format: m.tool_format,
        });
    }
    Ok(out)
}

/// `model`'s weights, held as its `dtype` (else `engine.dtype`) says; `draft_for` names the
/// target a draft is loaded for.
fn weights(cfg: &Config, model: &ModelConfig, draft_for: Option<&str>) -> Result<(LoadedModel, String)> {
    let source = resolve_model(model.source.as_deref())?;
    let name = model.served_name.clone().unwrap_or_else(|| source.display_name());
    let dtype = model.dtype.as_deref().or(cfg.engine.dtype.as_deref());
    let opts = load_options(&cfg.engine.device, dtype)?;
    match draft_for {
        Some(target) => {
            tracing::info!(model = %name, dtype = dtype.unwrap_or("auto"), draft_for = target, "loading draft")
        }
        None => tracing::info!(model = %name, dtype = dtype.unwrap_or("auto"), "loading"),
    }
    let loaded = loader::load(&source, &opts).with_context(|| format!("loading model `{}`", model.id))?;
    Ok((loaded, name))
}

fn load(cfg: &Config, model: &ModelConfig) -> Result<Loaded> {
    let (loaded, model_id) = weights(cfg, model, None)?;
    let template = chat_template(model.chat_template.as_ref(), &loaded.tokenizer)?;
    if template.is_none() {
        tracing::warn!(model = %model_id, "the model has no chat template: /v1/chat/completions will answer 400");
    }
    let tool_format = model.tool_call_parser.map(ToolCallFormat::from);
    if let (Some(format), Some(t)) = (tool_format, &template) {
        if tools::template_format(t, Some(format)).is_none() {
            tracing::warn!(
                model = %model_id,
                %format,
                "tool_call_parser is not used: the chat template does not render tools, so tool \
                 requests get the generic prompt and its Hermes markup"
            );
        }
    }
    let draft = match &model.draft {
        Some(id) => {
            // Validation checked that `draft` names a local model.
            let entry = cfg
                .draft_of(model)
                .with_context(|| format!("`{}`: no model has id `{id}` (its draft)", model.id))?;
            let (draft, _) = weights(cfg, entry, Some(&model.id))
                .with_context(|| format!("the draft of `{}`", model.id))?;
            Some(draft)
        }
        None => None,
    };
    Ok(Loaded {
        config_id: model.id.clone(),
        model_id,
        loaded,
        draft,
        speculative: speculative_config(model),
        template,
        tool_format,
    })
}

/// The engine's speculation settings from a `[[models]]` entry (None: it does not speculate);
/// what the entry leaves unset is the engine's default.
pub fn speculative_config(model: &ModelConfig) -> Option<SpeculativeConfig> {
    let base = match (&model.draft, model.speculative) {
        (Some(_), _) => SpeculativeConfig::draft_model(),
        (None, Some(Speculative::Ngram)) => SpeculativeConfig::ngram(),
        (None, None) => return None,
    };
    Some(SpeculativeConfig {
        num_speculative_tokens: model
            .num_speculative_tokens
            .unwrap_or(base.num_speculative_tokens),
        max_batch: model.speculative_max_batch.unwrap_or(base.max_batch),
        measure_payoff: model.speculative_measure.unwrap_or(base.measure_payoff),
        draft_vocab: model.draft_vocab.or(base.draft_vocab),
        draft_lookup: match model.draft_lookup {
            Some(false) => None,
            Some(true) => SpeculativeConfig::DRAFT_LOOKUP,
            None => base.draft_lookup,
        },
        ..base
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_keys_are_the_engines_defaults() {
        let ngram = ModelConfig {
            speculative: Some(Speculative::Ngram),
            ..ModelConfig::default()
        };
        assert_eq!(speculative_config(&ngram), Some(SpeculativeConfig::ngram()));
        let drafted = ModelConfig {
            draft: Some("d".into()),
            ..ModelConfig::default()
        };
        assert_eq!(
            speculative_config(&drafted),
            Some(SpeculativeConfig::draft_model())
        );
        assert_eq!(speculative_config(&ModelConfig::default()), None);
    }

    #[test]
    fn draft_vocab_reaches_the_engine() {
        let m = ModelConfig {
            draft: Some("small".into()),
            draft_vocab: Some(4096),
            ..ModelConfig::default()
        };
        let spec = speculative_config(&m).expect("speculates");
        assert_eq!(
            (spec.method, spec.draft_vocab),
            (SpeculativeMethod::DraftModel, Some(4096))
        );
        assert_eq!(
            speculative_config(&ModelConfig {
                draft_vocab: None,
                ..m
            })
            .map(|s| s.draft_vocab),
            Some(None)
        );
    }

    #[test]
    fn draft_lookup_reaches_the_engine() {
        let m = ModelConfig {
            draft: Some("small".into()),
            ..ModelConfig::default()
        };
        let lookup = |on| {
            speculative_config(&ModelConfig {
                draft_lookup: on,
                ..m.clone()
            })
            .and_then(|s| s.draft_lookup)
        };
        assert_eq!(lookup(None), SpeculativeConfig::draft_model().draft_lookup);
        assert_eq!(lookup(Some(true)), SpeculativeConfig::DRAFT_LOOKUP);
        assert_eq!(lookup(Some(false)), None);
    }

    #[test]
    fn tuning_keys_reach_the_engine() {
        let m = ModelConfig {
            speculative: Some(Speculative::Ngram),
            num_speculative_tokens: Some(7),
            speculative_max_batch: Some(2),
            speculative_measure: Some(false),
            ..ModelConfig::default()
        };
        let spec = speculative_config(&m).expect("speculates");
        assert_eq!(
            (
                spec.method,
                spec.num_speculative_tokens,
                spec.max_batch,
                spec.measure_payoff
            ),
            (SpeculativeMethod::Ngram { min: 2, max: 4 }, 7, 2, false)
        );
        let measured = speculative_config(&ModelConfig {
            speculative: Some(Speculative::Ngram),
            ..ModelConfig::default()
        });
        assert!(measured.expect("speculates").measure_payoff);
    }
}
