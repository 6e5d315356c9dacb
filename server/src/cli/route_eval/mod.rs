//! `wick route-eval`: measure a labelled set against any OpenAI-compatible endpoint, one or more
//! model names at a time (`--model small --model large --model auto`: the cheap tier alone, the
//! fallback alone and the cascade), and report accuracy, who answered (`x-wick-backend`, else the
//! body's `model`), latency, tokens and cost against always asking the fallback.
//!
//! The data is JSONL, one item a line: `{"id": "...", "messages": [...] | "prompt": "...",
//! "check": {...}}` with optional `tools`, `tool_choice`, `max_tokens`, `temperature` (default
//! 0). A `prompt` is sent as one user message; every request is a non-streamed
//! `POST /chat/completions`. Checks: [`checkers`]. Figures: [`report`]. Score-mode headers
//! and the fallback's work: [`headers`]. Threshold calibration (`--calibrate`): [`calibrate`].

pub mod calibrate;
pub mod checkers;
pub mod headers;
mod plan;
pub mod report;
mod text;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::ops::http_client::error_chain;
use calibrate::{CalibrateError, Calibration};
use checkers::{Check, CheckSpec};
use plan::CalibratePlan;
pub use report::{ItemRecord, ModelReport, Prices};

#[derive(Debug, thiserror::Error)]
pub enum RouteEvalError {
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("{path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}:{line}: {message}")]
    Line {
        path: String,
        line: usize,
        message: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Calibrate(#[from] CalibrateError),
}

#[derive(Debug, Clone, clap::Args)]
pub struct RouteEvalArgs {
    /// The labelled set: JSONL, one item a line (see docs/router.md, "route-eval").
    #[arg(long)]
    pub data: PathBuf,
    /// Base URL of the OpenAI-compatible API, up to and including `/v1`.
    #[arg(long, default_value = "http://127.0.0.1:8080/v1")]
    pub url: String,
    /// Model name to evaluate; repeat to compare (e.g. the cheap tier, the fallback, the route).
    #[arg(long, required_unless_present = "calibrate")]
    pub model: Vec<String>,
    /// Bearer token for the server.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// `max_tokens` for items that set none.
    #[arg(long, default_value_t = 64)]
    pub max_tokens: u64,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout_secs: u64,
    /// Print the report as JSON (with every item's outcome) instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Price of a backend in dollars per million input and output tokens, `BACKEND=IN,OUT`
    /// (repeat for each backend; the backend as `x-wick-backend` or `model` names it).
    #[arg(long, value_parser = report::parse_price)]
    pub price: Vec<(String, (f64, f64))>,
    /// Fit a score-mode route's thresholds: evaluates ROUTE, its cheap tier and its fallback
    /// (added to --model when missing) and prints the accuracy / cheap-share curves and the
    /// policy to paste.
    #[arg(long, value_name = "ROUTE")]
    pub calibrate: Option<String>,
    /// The fallback model: with --calibrate, instead of the route's last tier; for the `fb`
    /// columns, the model whose own usage is the fallback's work (other plain models count 0).
    #[arg(long, value_name = "NAME")]
    pub fallback: Option<String>,
    /// With --calibrate: the cheap model, instead of the route's first tier.
    #[arg(long, value_name = "NAME", requires = "calibrate")]
    pub cheap: Option<String>,
    /// With --calibrate: the accuracy the recommended thresholds must reach, in [0, 1]
    /// (default: the fallback's accuracy minus 0.03).
    #[arg(long, value_name = "A", requires = "calibrate", value_parser = parse_fraction)]
    pub target_accuracy: Option<f64>,
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(x) if (0.0..=1.0).contains(&x) => Ok(x),
        _ => Err(format!("{s:?}: expected a number from 0 to 1")),
    }
}

/// One line of the data file, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawItem {
    id: Option<String>,
    messages: Option<Value>,
    prompt: Option<String>,
    tools: Option<Value>,
    tool_choice: Option<Value>,
    max_tokens: Option<u64>,
    temperature: Option<f64>,
    check: CheckSpec,
}

/// One labelled item, ready to send.
#[derive(Debug, Clone)]
pub struct Item {
    pub id: String,
    pub messages: Value,
    pub tools: Option<Value>,
    pub tool_choice: Option<Value>,
    pub max_tokens: Option<u64>,
    pub temperature: f64,
    pub check: Check,
}

/// Parses the JSONL text (blank lines and lines starting with `//` skipped); errors name the
/// line.
pub fn parse_items(path: &str, text: &str) -> Result<Vec<Item>, RouteEvalError> {
    let mut items = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with("//") {
            continue;
        }
        let bad = |message: String| RouteEvalError::Line {
            path: path.to_string(),
            line: line_no,
            message,
        };
        let raw: RawItem = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let messages = match (raw.messages, raw.prompt) {
            (Some(m @ Value::Array(_)), None) => m,
            (Some(_), None) => return Err(bad("`messages` must be an array".into())),
            (None, Some(p)) => json!([{"role": "user", "content": p}]),
            _ => return Err(bad("give exactly one of `messages` and `prompt`".into())),
        };
        items.push(Item {
            id: raw.id.unwrap_or_else(|| format!("line{line_no}")),
            messages,
            tools: raw.tools,
            tool_choice: raw.tool_choice,
            max_tokens: raw.max_tokens,
            temperature: raw.temperature.unwrap_or(0.0),
            check: Check::new(raw.check).map_err(bad)?,
        });
    }
    if items.is_empty() {
        return Err(RouteEvalError::Invalid(format!("{path}: no items")));
    }
    Ok(items)
}

/// Everything one run produced (the `--json` output).
#[derive(Debug, Serialize)]
pub struct RouteEvalReport {
    pub url: String,
    pub data: String,
    pub models: Vec<ModelReport>,
    /// `--calibrate`'s curves and recommendation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
}

/// Runs every model over the items on its own tokio runtime and prints the table or the JSON.
pub fn run(args: RouteEvalArgs) -> Result<RouteEvalReport, RouteEvalError> {
    if args.concurrency == 0 {
        return Err(RouteEvalError::Invalid("--concurrency must be at least 1".into()));
    }
    let path = args.data.display().to_string();
    let text = std::fs::read_to_string(&args.data).map_err(|source| RouteEvalError::Read {
        path: path.clone(),
        source,
    })?;
    let items = parse_items(&path, &text)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| RouteEvalError::Invalid(format!("starting the runtime: {e}")))?;
    let (mut report, plan) = runtime.block_on(run_async(&args, items))?;
    // A failed calibration still prints what was measured, then the error.
    let calibration = plan.map(|p| p.calibrate(&report.models, args.target_accuracy));
    let failed = match calibration {
        Some(Ok(c)) => {
            report.calibration = Some(c);
            None
        }
        Some(Err(e)) => Some(e),
        None => None,
    };
    print(&args, &report)?;
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(report),
    }
}

fn print(args: &RouteEvalArgs, report: &RouteEvalReport) -> Result<(), RouteEvalError> {
    if args.json {
        let text =
            serde_json::to_string_pretty(&report).map_err(|e| RouteEvalError::Invalid(e.to_string()))?;
        println!("{text}");
    } else {
        println!(
            "wick route-eval: {} on {} ({} items)",
            report.url,
            report.data,
            text_items(report)
        );
        print!("{}", report::table(&report.models));
        for m in &report.models {
            if let Some(e) = m.records.iter().find_map(|r| r.error.as_ref()) {
                println!("{}: {} failed; first error: {e}", m.model, m.errors);
            }
            if let Some(c) = m.cost.as_ref().filter(|c| !c.unpriced.is_empty()) {
                println!(
                    "{}: no --price for {} (counted as free)",
                    m.model,
                    c.unpriced.join(", ")
                );
            }
        }
        if let Some(c) = &report.calibration {
            print!("{}", text::calibration(c));
        }
    }
    Ok(())
}

fn text_items(report: &RouteEvalReport) -> usize {
    report.models.first().map_or(0, |m| m.items)
}

struct Target {
    client: reqwest::Client,
    url: String,
    api_key: Option<String>,
    default_max_tokens: u64,
}

async fn run_async(
    args: &RouteEvalArgs,
    items: Vec<Item>,
) -> Result<(RouteEvalReport, Option<CalibratePlan>), RouteEvalError> {
    let client = crate::ops::http_client::builder()
        .timeout(Duration::from_secs(args.timeout_secs))
        .build()?;
    let target = Arc::new(Target {
        client,
        url: args.url.trim_end_matches('/').to_string(),
        api_key: args.api_key.clone(),
        default_max_tokens: args.max_tokens,
    });
    let tiers = route_tiers(&target).await;
    // Before any request: a calibration that cannot name its models fails fast.
    let plan = CalibratePlan::resolve(args, &tiers)?;
    let fallback = args
        .fallback
        .as_deref()
        .or(plan.as_ref().map(|p| p.fallback.as_str()));
    let prices: Prices = args.price.iter().cloned().collect();
    let items = Arc::new(items);
    let mut models = Vec::new();
    for model in &CalibratePlan::models(plan.as_ref(), &args.model) {
        let records: Vec<ItemRecord> = futures_util::stream::iter(0..items.len())
            .map(|i| {
                let (target, items, model) = (target.clone(), items.clone(), model.clone());
                async move { one_item(&target, &model, &items[i]).await }
            })
            .buffered(args.concurrency)
            .collect()
            .await;
        let tiers = tiers.get(model).cloned().unwrap_or_default();
        tracing::info!(model, "evaluated");
        models.push(ModelReport::new(model, tiers, records, &prices, fallback));
    }
    let report = RouteEvalReport {
        url: target.url.clone(),
        data: args.data.display().to_string(),
        models,
        calibration: None,
    };
    Ok((report, plan))
}

/// Route name → tiers, from wick's `GET /models` (`tiers` on route entries); empty when the
/// endpoint lists none or cannot list.
async fn route_tiers(target: &Target) -> HashMap<String, Vec<String>> {
    let mut request = target.client.get(format!("{}/models", target.url));
    if let Some(key) = &target.api_key {
        request = request.bearer_auth(key);
    }
    let body: Value = match request.send().await.and_then(|r| r.error_for_status()) {
        Ok(r) => r.json().await.unwrap_or_default(),
        Err(e) => {
            tracing::warn!(error = %e, "GET /models failed: no route tiers known");
            Value::Null
        }
    };
    body["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| {
            let id = m["id"].as_str()?;
            let tiers = m["tiers"]
                .as_array()?
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string);
            Some((id.to_string(), tiers.collect()))
        })
        .collect()
}

async fn one_item(target: &Target, model: &str, item: &Item) -> ItemRecord {
    let max_tokens = item.max_tokens.unwrap_or(target.default_max_tokens);
    let mut record = ItemRecord {
        id: item.id.clone(),
        check: item.check.kind().to_string(),
        max_tokens,
        ..Default::default()
    };
    let mut body = json!({"model": model, "messages": item.messages, "max_tokens": max_tokens,
        "temperature": item.temperature, "stream": false});
    if let Some(t) = &item.tools {
        body["tools"] = t.clone();
    }
    if let Some(c) = &item.tool_choice {
        body["tool_choice"] = c.clone();
    }
    let mut request = target
        .client
        .post(format!("{}/chat/completions", target.url))
        .json(&body);
    if let Some(key) = &target.api_key {
        request = request.bearer_auth(key);
    }
    let start = Instant::now();
    let result = async {
        let response = request.send().await.map_err(|e| error_chain(&e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.map_err(|e| error_chain(&e))?;
        if !status.is_success() {
            return Err(format!(
                "HTTP {status}: {}",
                text.chars().take(300).collect::<String>()
            ));
        }
        let json: Value = serde_json::from_str(&text).map_err(|e| format!("response is not JSON: {e}"))?;
        Ok((headers, json))
    }
    .await;
    record.latency_ms = start.elapsed().as_secs_f64() * 1000.0;
    let (headers, json) = match result {
        Ok(r) => r,
        Err(e) => {
            record.error = Some(e);
            return record;
        }
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let list = |name: &str| -> Vec<String> {
        header(name)
            .map(|h| {
                h.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    };
    record.backend = header("x-wick-backend").or_else(|| json["model"].as_str().map(str::to_string));
    record.escalations = list("x-wick-escalation");
    record.failovers = list("x-wick-failover");
    record.prompt_tokens = json["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
    record.completion_tokens = json["usage"]["completion_tokens"].as_u64().unwrap_or(0);
    record.accepted_prediction_tokens =
        json["usage"]["completion_tokens_details"]["accepted_prediction_tokens"].as_u64();
    record.score = header("x-wick-score").as_deref().and_then(headers::parse_score);
    record.fallback = header("x-wick-fallback")
        .as_deref()
        .and_then(headers::parse_fallback);
    let message = &json["choices"][0]["message"];
    let content = message["content"].as_str().unwrap_or_default();
    let calls = message["tool_calls"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    record.correct = item.check.passes(content, calls);
    // Tool calls as `name(arguments)` (their ids are random, so runs compare equal).
    record.answer = if calls.is_empty() {
        content.to_string()
    } else {
        let call = |c: &Value| {
            let f = &c["function"];
            let args = f["arguments"]
                .as_str()
                .map_or_else(|| f["arguments"].to_string(), str::to_string);
            format!("{}({args})", f["name"].as_str().unwrap_or_default())
        };
        calls.iter().map(call).collect::<Vec<_>>().join("; ")
    };
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_parse_and_bad_lines_name_their_line() {
        let text = "{\"id\": \"a\", \"prompt\": \"2+2?\", \"check\": {\"exact\": \"4\"}}\n\n\
            {\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"max_tokens\": 8, \"check\": {\"contains\": \"hello\"}}\n";
        let items = parse_items("f.jsonl", text).expect("parses");
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].messages, json!([{"role": "user", "content": "2+2?"}]));
        assert_eq!(
            (items[1].id.as_str(), items[1].max_tokens, items[1].temperature),
            ("line3", Some(8), 0.0)
        );
        for (bad, want) in [
            ("{\"prompt\": \"x\"}", "missing field `check`"),
            ("{\"prompt\": \"x\", \"check\": {\"regex\": \"(\"}}", "bad regex"),
            ("{\"check\": {\"exact\": \"x\"}}", "exactly one of"),
            (
                "{\"prompt\": \"x\", \"promt\": 1, \"check\": {\"exact\": \"x\"}}",
                "unknown field",
            ),
            ("not json", "expected"),
        ] {
            let err = parse_items("f.jsonl", &format!("{}\n{bad}\n", text.lines().next().unwrap()))
                .expect_err(bad)
                .to_string();
            assert!(
                err.starts_with("f.jsonl:2: ") && err.contains(want),
                "{bad}: {err}"
            );
        }
        assert!(parse_items("f.jsonl", "\n").is_err());
    }

    #[test]
    fn the_shipped_sets_parse() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/route-eval");
        for (file, least) in [("mix.jsonl", 35), ("code.jsonl", 16), ("quick.jsonl", 6)] {
            let path = format!("{dir}/{file}");
            let text = std::fs::read_to_string(&path).expect(file);
            assert!(
                parse_items(&path, &text).expect("parses").len() >= least,
                "{file}"
            );
        }
    }
}
