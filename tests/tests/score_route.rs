//! Score mode (`verify = "score"`) against real processes: the default model (SmolLM2-135M) as
//! the cheap tier, Qwen2.5-Coder-0.5B (another tokenizer) as the fallback. The fallback scores
//! each cheap answer in one prefill; an answer stands exactly when its score clears the
//! threshold, and is then the cheap model's own answer, else the fallback's own. Streaming,
//! completions and tool calls go the same way; the scoring and the fallback's tokens show on
//! /metrics. A remote fallback (another `wick serve`) scores exactly as the same model in
//! process, given the template `wick config chat-template` prints; an unreachable one leaves
//! the cheap answer standing, and the response says so.

use std::process::Command;

use serde_json::{json, Value};
use wick_tests::{default_model, fallback_model, free_port, metric, post_json, wick_binary, Reply, Server};

/// The threshold of the `auto` routes. The prompts below are scored either side of it.
const MIN_MEAN: f64 = -1.0;
const MAX_TOKENS: u32 = 60;

/// Prompts whose cheap answers the fallback scores above and below [`MIN_MEAN`]: the third
/// rejected from its first token (escalated from scratch), the fourth further on (continued).
const PROMPTS: [&str; 4] = [
    "What is the capital of France? Answer in one word.",
    "What is 2+2? Answer with the number only.",
    "Name a primary color. One word.",
    "What is the largest planet in the solar system?",
];

fn write_config(name: &str, text: &str) -> String {
    let path = std::env::temp_dir().join(format!(
        "wick-score-{name}-{}-{}.toml",
        std::process::id(),
        free_port()
    ));
    std::fs::write(&path, text).expect("write config");
    path.to_string_lossy().into_owned()
}

fn models() -> String {
    format!(
        "[server]\nmodel = \"small\"\n\n[[models]]\nid = \"small\"\nsource = \"{}\"\nserved_name = \"small\"\n\n\
         [[models]]\nid = \"coder\"\nsource = \"{}\"\nserved_name = \"coder\"\n\n",
        default_model(),
        fallback_model()
    )
}

fn route(name: &str, tiers: &str, policy: &str) -> String {
    format!("[[routes]]\nname = \"{name}\"\ntiers = {tiers}\npolicy = {{ verify = \"score\", {policy} }}\n\n")
}

fn chat(model: &str, prompt: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": prompt}],
        "max_tokens": MAX_TOKENS, "temperature": 0})
}

fn content(r: &Reply) -> String {
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// A `key=value` field of one of wick's list headers (`x-wick-score`, `x-wick-fallback`).
fn header_field(r: &Reply, header: &str, key: &str) -> Option<f64> {
    r.header(header)?
        .split(", ")
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))?
        .parse()
        .ok()
}

fn score_field(r: &Reply, key: &str) -> Option<f64> {
    header_field(r, "x-wick-score", key)
}

fn fallback_work(r: &Reply, key: &str) -> u64 {
    header_field(r, "x-wick-fallback", key)
        .unwrap_or_else(|| panic!("no {key} in x-wick-fallback: {:?}", r.headers)) as u64
}

fn streamed_text(r: &Reply) -> String {
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str::<Value>(d).unwrap_or_else(|e| panic!("{e}: {d}")))
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_string))
        .collect()
}

fn counter(port: u16, name: &str, labels: &str) -> u64 {
    metric(port, &format!("{name}{{{labels}}} ")).unwrap_or(0.0) as u64
}

#[test]
fn a_score_route_keeps_the_cheap_answer_exactly_when_the_fallback_scores_it_well() {
    let cfg = format!(
        "{}{}{}{}",
        models(),
        route(
            "auto",
            "[\"small\", \"coder\"]",
            &format!("min_mean_logprob = {MIN_MEAN}")
        ),
        route(
            "lenient",
            "[\"small\", \"coder\"]",
            "min_mean_logprob = -1000.0, escalate_on_length = false"
        ),
        route(
            "strict",
            "[\"small\", \"coder\"]",
            "min_token_logprob = -0.000001"
        ),
    );
    let server = Server::start(&["--config", &write_config("local", &cfg)]);
    let port = server.port;
    let (mut stood, mut escalated, mut continued, mut prefill, mut decode) = (0, 0, 0, 0, 0);
    let mut outcomes = Vec::new();
    for prompt in PROMPTS {
        let cheap = content(&post_json(port, "/v1/chat/completions", &chat("small", prompt)));
        let fallback = content(&post_json(port, "/v1/chat/completions", &chat("coder", prompt)));
        let r = post_json(port, "/v1/chat/completions", &chat("auto", prompt));
        let answer = content(&r);
        let mean = score_field(&r, "mean").unwrap_or_else(|| panic!("{prompt}: no score"));
        assert!(score_field(&r, "tokens").is_some_and(|t| t > 0.0), "{prompt}");
        assert!(score_field(&r, "min").is_some_and(|m| m <= mean), "{prompt}");
        if mean >= MIN_MEAN {
            stood += 1;
            assert_eq!(r.header("x-wick-backend"), Some("small"), "{prompt}");
            assert_eq!(r.header("x-wick-escalation"), None, "{prompt}");
            assert_eq!(answer, cheap, "{prompt}");
            assert_eq!(fallback_work(&r, "decode"), 0, "{prompt}");
        } else {
            escalated += 1;
            assert_eq!(r.header("x-wick-backend"), Some("coder"), "{prompt}");
            assert_eq!(
                r.header("x-wick-escalation"),
                Some("small:low_score_mean"),
                "{prompt}"
            );
            let completion = r.json()["usage"]["completion_tokens"].as_u64().expect("usage");
            match r.header("x-wick-continued") {
                // From the first token the fallback rejected: the cheap answer's text up to it,
                // then the fallback's; the kept tokens count as the answer's, not as decoded.
                Some(c) => {
                    continued += 1;
                    let kept: u64 = c
                        .strip_prefix("kept=")
                        .and_then(|k| k.split('/').next()?.parse().ok())
                        .unwrap_or_else(|| panic!("{c}"));
                    assert!(kept > 0, "{c}");
                    assert_eq!(completion, kept + fallback_work(&r, "decode"), "{prompt}");
                    let common = answer
                        .chars()
                        .zip(cheap.chars())
                        .take_while(|(a, b)| a == b)
                        .count();
                    assert!(common > 0, "{prompt}: {answer:?} keeps nothing of {cheap:?}");
                }
                None => {
                    assert_eq!(answer, fallback, "{prompt}");
                    assert_eq!(fallback_work(&r, "decode"), completion, "{prompt}");
                }
            }
        }
        prefill += fallback_work(&r, "prefill");
        decode += fallback_work(&r, "decode");

        outcomes.push((
            prompt,
            cheap,
            fallback,
            mean,
            r.header("x-wick-score").map(str::to_string),
        ));
    }
    assert!(
        stood > 0 && escalated > 0 && continued > 0,
        "{stood} stood, {escalated} escalated ({continued} continued): pick other prompts"
    );
    // Each request was scored once.
    let verified = |outcome: &str| {
        counter(
            port,
            "wick_router_verifications_total",
            &format!("outcome=\"{outcome}\",route=\"auto\""),
        )
    };
    assert_eq!((verified("accepted"), verified("rejected")), (stood, escalated));
    // The fallback's tokens for the route: the requests' headers.
    let tokens = |phase: &str| {
        counter(
            port,
            "wick_router_fallback_tokens_total",
            &format!("phase=\"{phase}\",route=\"auto\""),
        )
    };
    assert_eq!((tokens("prefill"), tokens("decode")), (prefill, decode));
    for (prompt, cheap, fallback, mean, score) in outcomes {
        // Streamed: the whole answer is held and scored the same, then replayed or escalated
        // (from scratch: a stream is not continued).
        let mut streamed = chat("auto", prompt);
        streamed["stream"] = json!(true);
        let s = post_json(port, "/v1/chat/completions", &streamed);
        let whole = if mean >= MIN_MEAN { &cheap } else { &fallback };
        assert_eq!(&streamed_text(&s), whole, "{prompt}, streamed");
        assert_eq!(s.header("x-wick-score"), score.as_deref(), "{prompt}");
        let backend = if mean >= MIN_MEAN { "small" } else { "coder" };
        assert_eq!(s.header("x-wick-backend"), Some(backend), "{prompt}");
    }

    // Completions: the prompt and the answer's text are scored.
    let body =
        json!({"model": "lenient", "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0});
    let r = post_json(port, "/v1/completions", &body);
    assert_eq!(
        (r.status, r.header("x-wick-backend")),
        (200, Some("small")),
        "{}",
        r.body
    );
    assert!(
        score_field(&r, "tokens").is_some_and(|t| t > 0.0),
        "{:?}",
        r.headers
    );
    let direct = post_json(
        port,
        "/v1/completions",
        &json!({"model": "small", "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0}),
    );
    assert_eq!(
        r.json()["choices"][0]["text"],
        direct.json()["choices"][0]["text"]
    );

    // A structured answer is scored as its text; it stands as the cheap model's own.
    let json_answer = |model: &str| {
        let mut body = chat(model, "Give the capital of France as JSON with the key \"city\".");
        body["response_format"] = json!({"type": "json_object"});
        post_json(port, "/v1/chat/completions", &body)
    };
    let r = json_answer("lenient");
    assert_eq!(r.header("x-wick-backend"), Some("small"), "{}", r.body);
    assert!(
        score_field(&r, "tokens").is_some_and(|t| t > 0.0),
        "{:?}",
        r.headers
    );
    let text = content(&r);
    serde_json::from_str::<Value>(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(text, content(&json_answer("small")));

    // Tool calls: the cheap call is rendered in the fallback's template and scored; where it
    // stands it is the cheap model's call, where it escalates the fallback's.
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    let call = |model: &str| {
        let mut body = chat(model, "What is the weather in Paris?");
        body["tools"] = tools.clone();
        body["tool_choice"] = json!("required");
        body["max_tokens"] = json!(200);
        let r = post_json(port, "/v1/chat/completions", &body);
        assert_eq!(r.status, 200, "{}", r.body);
        let f = r.json()["choices"][0]["message"]["tool_calls"][0]["function"].clone();
        (r, (f["name"].clone(), f["arguments"].clone()))
    };
    let (r, lenient) = call("lenient");
    assert_eq!(r.header("x-wick-backend"), Some("small"));
    assert!(
        score_field(&r, "tokens").is_some_and(|t| t > 0.0),
        "{:?}",
        r.headers
    );
    assert_eq!(lenient, call("small").1);
    let (r, strict) = call("strict");
    assert_eq!(r.header("x-wick-backend"), Some("coder"));
    assert_eq!(r.header("x-wick-escalation"), Some("small:low_score_token"));
    assert_eq!(strict, call("coder").1);
}

/// The model's own chat template, as `wick config chat-template` prints it, in a file.
fn template_file(model: &str) -> String {
    let out = Command::new(wick_binary())
        .args(["config", "chat-template", "--model", model])
        .output()
        .expect("wick config chat-template runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!out.stdout.is_empty());
    let path = std::env::temp_dir().join(format!(
        "wick-score-template-{}-{}.jinja",
        std::process::id(),
        free_port()
    ));
    std::fs::write(&path, &out.stdout).expect("write template");
    path.to_string_lossy().into_owned()
}

#[test]
fn a_remote_fallback_scores_as_the_same_model_in_process_and_an_unreachable_one_is_failed_over() {
    let remote = Server::start(&["--model", &fallback_model(), "--served-model-name", "big"]);
    let template = template_file(&fallback_model());
    let remotes = format!(
        "[[models]]\nid = \"big\"\nurl = \"http://127.0.0.1:{}/v1\"\nchat_template = \"{template}\"\ntimeout_secs = 120\n\n\
         [[models]]\nid = \"gone\"\nurl = \"http://127.0.0.1:{}/v1\"\nchat_template = \"{template}\"\ntimeout_secs = 5\n\n",
        remote.port,
        free_port()
    );
    let policy = format!("min_mean_logprob = {MIN_MEAN}");
    let cfg = format!(
        "{}{remotes}{}{}{}",
        models(),
        route("local", "[\"small\", \"coder\"]", &policy),
        route("remote", "[\"small\", \"big\"]", &policy),
        route("down", "[\"small\", \"gone\"]", &policy),
    );
    let server = Server::start(&["--config", &write_config("remote", &cfg)]);
    let port = server.port;
    for prompt in PROMPTS {
        let local = post_json(port, "/v1/chat/completions", &chat("local", prompt));
        let r = post_json(port, "/v1/chat/completions", &chat("remote", prompt));
        assert!(r.header("x-wick-score").is_some(), "{prompt}: {:?}", r.headers);
        assert_eq!(r.header("x-wick-score"), local.header("x-wick-score"), "{prompt}");
        assert_eq!(content(&r), content(&local), "{prompt}");
        let who = |r: &Reply| r.header("x-wick-backend").map(|b| b.replace("big", "coder"));
        assert_eq!(who(&r), who(&local), "{prompt}");
    }
    // Nothing listens behind `gone`: the cheap answer stands, unscored, and says why.
    let prompt = PROMPTS[2];
    let cheap = content(&post_json(port, "/v1/chat/completions", &chat("small", prompt)));
    let r = post_json(port, "/v1/chat/completions", &chat("down", prompt));
    assert_eq!(content(&r), cheap);
    assert_eq!(r.header("x-wick-backend"), Some("small"));
    assert_eq!(r.header("x-wick-failover"), Some("gone:unreachable"));
    assert_eq!(r.header("x-wick-score"), None);
    let unavailable = counter(
        port,
        "wick_router_verifications_total",
        "outcome=\"unavailable\",route=\"down\"",
    );
    assert_eq!(unavailable, 1);
}
