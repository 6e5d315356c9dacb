//! `[[models]]` speculative decoding (`draft`, `speculative`, their tuning keys), per-model
//! `dtype`, and the flags and variables that set them.

use super::*;

/// A target drafted for by a second local entry; line numbers below refer to this text.
const DRAFTED: &str = "[[models]]\n\
    id = \"target\"\n\
    source = \"t.gguf\"\n\
    dtype = \"f32\"\n\
    draft = \"small\"\n\
    num_speculative_tokens = 6\n\
    speculative_max_batch = 4\n\
    [[models]]\n\
    id = \"small\"\n\
    source = \"s.gguf\"\n\
    dtype = \"auto\"\n";

fn ids(models: Vec<&ModelConfig>) -> Vec<&str> {
    models.into_iter().map(|m| m.id.as_str()).collect()
}

/// The problem at `field` of a configuration that must fail (a broken `draft` also leaves the
/// entry it meant to name an ordinary local model, so `server.model` is ambiguous beside it).
fn problem_at(src: &str, field: &str) -> Problem {
    let err = load_text(src, &[], &Overrides::default()).expect_err("invalid configuration");
    let found = err.problems().iter().find(|p| p.field == field);
    found
        .cloned()
        .unwrap_or_else(|| panic!("no problem at {field}: {err}"))
}

fn cli(f: impl FnOnce(&mut Overrides)) -> Overrides {
    let mut o = Overrides::default();
    f(&mut o);
    o
}

#[test]
fn a_draft_is_valid_runs_inside_its_target_and_is_not_served_alone() {
    let cfg = load_text(DRAFTED, &[], &Overrides::default()).unwrap();
    // Two local models and no `server.model`: the one that only drafts is not a candidate.
    let target = cfg.served_model().unwrap();
    assert_eq!(target.id, "target");
    assert_eq!(ids(cfg.local_models()), ["target"]);
    let draft = cfg.draft_of(target).unwrap();
    assert_eq!(
        (draft.id.as_str(), draft.dtype.as_deref()),
        ("small", Some("auto"))
    );
    assert_eq!(
        (target.num_speculative_tokens, target.speculative_max_batch),
        (Some(6), Some(4))
    );
    // A route naming the draft serves it too, with an engine of its own.
    let routed = format!("{DRAFTED}[[routes]]\nname = \"auto\"\ntiers = [\"small\", \"target\"]\n");
    let cfg = load_text(&routed, &[], &Overrides::default()).unwrap();
    assert_eq!(ids(cfg.local_models()), ["target", "small"]);
    // The printed configuration reads back the same.
    let again = load_text(&cfg.to_toml(), &[], &Overrides::default()).unwrap();
    assert_eq!(cfg, again);
}

#[test]
fn ngram_speculation_needs_no_other_model() {
    let src = "[[models]]\nid = \"m\"\nspeculative = \"ngram\"\n";
    let cfg = load_text(src, &[], &Overrides::default()).unwrap();
    let m = cfg.served_model().unwrap();
    assert_eq!(m.speculative, Some(Speculative::Ngram));
    assert!(m.speculates() && cfg.draft_of(m).is_none());
    assert_eq!(m.num_speculative_tokens, None, "the engine's default (3) applies");
    let p = problem("[[models]]\nid = \"m\"\nspeculative = \"ngramm\"\n");
    assert_eq!(p.field, "models[0].speculative");
    assert!(matches!(p.origin, Origin::File { line: 3, .. }), "{p}");
    assert_eq!(p.suggestion.as_deref(), Some("ngram"));
}

#[test]
fn a_draft_must_be_another_local_model_that_does_not_speculate() {
    // Unknown, with the id meant.
    let p = problem_at(
        &DRAFTED.replace("draft = \"small\"", "draft = \"smal\""),
        "models[0].draft",
    );
    assert_eq!(
        (p.field.as_str(), p.origin.clone()),
        ("models[0].draft", at_line(5))
    );
    assert_eq!(p.message, "no model has id `smal`");
    assert_eq!(p.suggestion.as_deref(), Some("small"));
    // Itself.
    let p = problem_at(
        &DRAFTED.replace("draft = \"small\"", "draft = \"target\""),
        "models[0].draft",
    );
    assert_eq!(
        (p.field.as_str(), p.origin.clone()),
        ("models[0].draft", at_line(5))
    );
    assert!(p.message.contains("is this model"), "{p}");
    // Remote.
    let remote =
        "[[models]]\nid = \"target\"\ndraft = \"r\"\n[[models]]\nid = \"r\"\nurl = \"http://r/v1\"\n";
    let p = problem_at(remote, "models[0].draft");
    assert_eq!(
        (p.field.as_str(), p.origin.clone()),
        ("models[0].draft", at_line(3))
    );
    assert!(p.message.contains("`r` is remote"), "{p}");
    // A draft that speculates itself, with a draft or with n-grams.
    let src = format!("{DRAFTED}speculative = \"ngram\"\n");
    let p = problem(&src);
    assert_eq!(
        (p.field.as_str(), p.origin.clone()),
        ("models[0].draft", at_line(5))
    );
    assert!(p.message.contains("`small` speculates itself"), "{p}");
    let src = format!("{DRAFTED}[[models]]\nid = \"tiny\"\nsource = \"x.gguf\"\n")
        .replace("dtype = \"auto\"\n", "dtype = \"auto\"\ndraft = \"tiny\"\n");
    let err = load_text(&src, &[], &Overrides::default()).unwrap_err();
    assert!(
        err.to_string()
            .contains("wick.toml:5:1: models[0].draft: `small` speculates itself"),
        "{err}"
    );
}

#[test]
fn draft_and_speculative_together_are_refused() {
    let src = DRAFTED.replace(
        "draft = \"small\"\n",
        "draft = \"small\"\nspeculative = \"ngram\"\n",
    );
    let p = problem(&src);
    assert_eq!(
        (p.field.as_str(), p.origin.clone()),
        ("models[0].speculative", at_line(6))
    );
    assert!(
        p.message
            .contains("`draft` and `speculative = \"ngram\"` together"),
        "{p}"
    );
}

#[test]
fn tuning_keys_need_speculation_and_stay_in_range() {
    for (k, ok) in [(0, false), (1, true), (16, true), (17, false)] {
        let src = DRAFTED.replace(
            "num_speculative_tokens = 6",
            &format!("num_speculative_tokens = {k}"),
        );
        match load_text(&src, &[], &Overrides::default()) {
            Ok(_) => assert!(ok, "{k} accepted"),
            Err(err) => {
                assert!(!ok, "{k}: {err}");
                assert_eq!(
                    err.to_string(),
                    "wick.toml:6:1: models[0].num_speculative_tokens: must be between 1 and 16"
                );
            }
        }
    }
    let p = problem(&DRAFTED.replace("speculative_max_batch = 4", "speculative_max_batch = 0"));
    assert_eq!(
        (p.field.as_str(), p.origin.clone(), p.message.as_str()),
        (
            "models[0].speculative_max_batch",
            at_line(7),
            "must be greater than 0"
        )
    );
    // Without `draft` or `speculative`, each is an error on its own line.
    let err = load_text(
        &DRAFTED.replace("draft = \"small\"\n", ""),
        &[],
        &Overrides::default(),
    )
    .unwrap_err();
    let got: Vec<(String, Origin)> = err
        .problems()
        .iter()
        .map(|p| (p.field.clone(), p.origin.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            // `small` is an ordinary local model now, so which one is served is ambiguous too.
            ("server.model".into(), Origin::FileUnlocated(PathBuf::from(FILE))),
            ("models[0].num_speculative_tokens".into(), at_line(5)),
            ("models[0].speculative_max_batch".into(), at_line(6)),
        ]
    );
    assert!(
        err.problems()[1]
            .message
            .contains("only applies with `draft` or `speculative`"),
        "{err}"
    );
}

#[test]
fn dtype_per_model_and_auto_everywhere() {
    let src = "[engine]\ndtype = \"auto\"\n[[models]]\nid = \"m\"\ndtype = \"q8_0\"\n";
    let cfg = load_text(src, &[], &Overrides::default()).unwrap();
    assert_eq!(
        (cfg.engine.dtype.as_deref(), cfg.models[0].dtype.as_deref()),
        (Some("auto"), Some("q8_0"))
    );
    let p = problem("[[models]]\nid = \"m\"\ndtype = \"bf61\"\n");
    assert_eq!(
        (p.field.as_str(), p.origin.clone()),
        ("models[0].dtype", at_line(3))
    );
    assert_eq!(p.suggestion.as_deref(), Some("bf16"));
    assert!(p.message.contains("auto, f32, f16, bf16, q8_0, q4_0"), "{p}");
    // Local-only keys on a remote model.
    let src = "[[models]]\nid = \"m\"\n[[models]]\nid = \"r\"\nurl = \"http://r/v1\"\ndtype = \"f32\"\nspeculative = \"ngram\"\n";
    let err = load_text(src, &[], &Overrides::default()).unwrap_err();
    let got: Vec<(&str, &Origin)> = err
        .problems()
        .iter()
        .map(|p| (p.field.as_str(), &p.origin))
        .collect();
    assert_eq!(
        got,
        [
            ("models[1].dtype", &at_line(6)),
            ("models[1].speculative", &at_line(7))
        ]
    );
    assert!(
        err.problems()[0]
            .message
            .contains("only applies to a local model"),
        "{err}"
    );
}

#[test]
fn draft_model_flag_adds_a_draft_kept_as_stored_for_the_served_model() {
    let flags = cli(|o| {
        o.draft_model = Some("small.gguf".into());
        o.dtype = Some("f32".into());
    });
    let cfg = load(None, &Overrides::default(), &flags).unwrap();
    let served = cfg.served_model().unwrap();
    assert_eq!(
        (served.id.as_str(), served.draft.as_deref()),
        (DEFAULT_MODEL_ID, Some("draft"))
    );
    let draft = cfg.draft_of(served).unwrap();
    assert_eq!(
        (draft.source.as_deref(), draft.dtype.as_deref()),
        (Some("small.gguf"), Some("auto"))
    );
    assert_eq!(cfg.engine.dtype.as_deref(), Some("f32"));
    assert_eq!(ids(cfg.local_models()), [DEFAULT_MODEL_ID]);
    // --draft-dtype, and the same from the environment.
    let env = [
        ("WICK_DRAFT_MODEL", "small.gguf"),
        ("WICK_NUM_SPECULATIVE_TOKENS", "3"),
    ];
    let cfg = load_text("", &env, &cli(|o| o.draft_dtype = Some("q8_0".into()))).unwrap();
    let served = cfg.served_model().unwrap();
    assert_eq!(served.num_speculative_tokens, Some(3));
    assert_eq!(
        cfg.draft_of(served).and_then(|d| d.dtype.as_deref()),
        Some("q8_0")
    );
    // An id `draft` that is taken already: the new entry gets another.
    let src =
        "[server]\nmodel = \"m\"\n[[models]]\nid = \"m\"\n[[models]]\nid = \"draft\"\nsource = \"x.gguf\"\n";
    let cfg = load_text(src, &[], &cli(|o| o.draft_model = Some("y.gguf".into()))).unwrap();
    let draft = cfg.draft_of(cfg.served_model().unwrap()).unwrap();
    assert_eq!(
        (draft.id.as_str(), draft.source.as_deref()),
        ("draft-2", Some("y.gguf"))
    );
}

#[test]
fn draft_model_flag_replaces_the_files_draft_source_and_ngram_replaces_the_draft() {
    let cfg = load_text(DRAFTED, &[], &cli(|o| o.draft_model = Some("other.gguf".into()))).unwrap();
    assert_eq!(cfg.models.len(), 2, "no new entry");
    let draft = cfg.draft_of(cfg.served_model().unwrap()).unwrap();
    assert_eq!(
        (draft.id.as_str(), draft.source.as_deref(), draft.dtype.as_deref()),
        ("small", Some("other.gguf"), Some("auto"))
    );
    // --speculative ngram over a file's draft: n-grams, and the target stays the served model.
    let cfg = load_text(DRAFTED, &[], &cli(|o| o.speculative = Some(Speculative::Ngram))).unwrap();
    let served = cfg.served_model().unwrap();
    assert_eq!(
        (served.id.as_str(), served.draft.as_deref(), served.speculative),
        ("target", None, Some(Speculative::Ngram))
    );
    // --draft-model over a file's `speculative`: the draft.
    let src = "[[models]]\nid = \"m\"\nspeculative = \"ngram\"\n";
    let cfg = load_text(src, &[], &cli(|o| o.draft_model = Some("d.gguf".into()))).unwrap();
    let served = cfg.served_model().unwrap();
    assert_eq!(
        (served.draft.as_deref(), served.speculative),
        (Some("draft"), None)
    );
}

#[test]
fn bad_speculation_flags_and_variables_are_named() {
    // Both in one layer: reported, not one silently dropped.
    let both = cli(|o| {
        o.draft_model = Some("d.gguf".into());
        o.speculative = Some(Speculative::Ngram);
    });
    let err = load_text("", &[], &both).unwrap_err();
    assert_eq!(err.problems().len(), 1, "{err}");
    assert_eq!(err.problems()[0].origin, Origin::Flag("--speculative".into()));
    assert_eq!(err.problems()[0].field, "models[0].speculative");
    // Nothing to apply --draft-dtype to.
    let err = load_text("", &[], &cli(|o| o.draft_dtype = Some("f16".into()))).unwrap_err();
    assert_eq!(err.problems()[0].origin, Origin::Flag("--draft-dtype".into()));
    assert!(err.to_string().contains("has no draft model"), "{err}");
    // Out of range, or without speculation.
    let k0 = cli(|o| {
        o.speculative = Some(Speculative::Ngram);
        o.num_speculative_tokens = Some(0);
    });
    let err = load_text("", &[], &k0).unwrap_err();
    assert_eq!(
        err.to_string(),
        "flag --num-speculative-tokens: models[0].num_speculative_tokens: must be between 1 and 16"
    );
    let err = load_text("", &[("WICK_NUM_SPECULATIVE_TOKENS", "4")], &Overrides::default()).unwrap_err();
    assert_eq!(
        err.problems()[0].origin,
        Origin::Env("WICK_NUM_SPECULATIVE_TOKENS".into())
    );
    let err = load_text("", &[("WICK_SPECULATIVE", "eagle")], &Overrides::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "environment variable WICK_SPECULATIVE: `eagle`: expected `ngram`"
    );
    let err = load_text("", &[], &cli(|o| o.draft_dtype = Some("f8".into())))
        .map(|_| ())
        .unwrap_err();
    assert_eq!(err.problems()[0].origin, Origin::Flag("--draft-dtype".into()));
    let bad_dtype = cli(|o| {
        o.draft_model = Some("d.gguf".into());
        o.draft_dtype = Some("f8".into());
    });
    let err = load_text("", &[], &bad_dtype).unwrap_err();
    assert_eq!(
        (err.problems()[0].origin.clone(), err.problems()[0].field.as_str()),
        (Origin::Flag("--draft-dtype".into()), "models[1].dtype")
    );
}

#[test]
fn draft_vocab_comes_with_a_draft_and_is_positive() {
    let with = DRAFTED.replace(
        "speculative_max_batch = 4\n",
        "speculative_max_batch = 4\ndraft_vocab = 32768\n",
    );
    let cfg = load_text(&with, &[], &Overrides::default()).unwrap();
    assert_eq!(cfg.served_model().unwrap().draft_vocab, Some(32768));
    let p = problem(&with.replace("draft_vocab = 32768", "draft_vocab = 0"));
    assert_eq!(
        (p.field.as_str(), p.origin.clone(), p.message.as_str()),
        ("models[0].draft_vocab", at_line(8), "must be greater than 0")
    );
    // Prompt lookup has no draft to restrict.
    let p = problem("[[models]]\nid = \"m\"\nspeculative = \"ngram\"\ndraft_vocab = 100\n");
    assert_eq!(
        (p.field.as_str(), p.origin.clone(), p.message.as_str()),
        ("models[0].draft_vocab", at_line(4), "only applies with `draft`")
    );
}

#[test]
fn speculative_measure_comes_with_speculation() {
    let with = DRAFTED.replace(
        "speculative_max_batch = 4\n",
        "speculative_max_batch = 4\nspeculative_measure = false\n",
    );
    let cfg = load_text(&with, &[], &Overrides::default()).unwrap();
    assert_eq!(cfg.served_model().unwrap().speculative_measure, Some(false));
    let again = load_text(&cfg.to_toml(), &[], &Overrides::default()).unwrap();
    assert_eq!(again.models, cfg.models);
    let p = problem("[[models]]\nid = \"m\"\nspeculative_measure = false\n");
    assert_eq!(
        (p.field.as_str(), p.origin.clone()),
        ("models[0].speculative_measure", at_line(3))
    );
    load_text(
        "[[models]]\nid = \"m\"\nspeculative = \"ngram\"\nspeculative_measure = true\n",
        &[],
        &Overrides::default(),
    )
    .expect("with prompt lookup");
}

#[test]
fn draft_lookup_comes_with_a_draft() {
    let with = DRAFTED.replace(
        "speculative_max_batch = 4\n",
        "speculative_max_batch = 4\ndraft_lookup = false\n",
    );
    let cfg = load_text(&with, &[], &Overrides::default()).unwrap();
    assert_eq!(cfg.served_model().unwrap().draft_lookup, Some(false));
    // Prompt lookup alone guesses nothing for a draft.
    let p = problem("[[models]]\nid = \"m\"\nspeculative = \"ngram\"\ndraft_lookup = true\n");
    assert_eq!(
        (p.field.as_str(), p.origin.clone(), p.message.as_str()),
        ("models[0].draft_lookup", at_line(4), "only applies with `draft`")
    );
    let remote =
        "[[models]]\nid = \"m\"\n[[models]]\nid = \"r\"\nurl = \"http://r/v1\"\ndraft_lookup = true\n";
    let p = problem_at(remote, "models[1].draft_lookup");
    assert_eq!(p.message, "only applies to a local model (`source`)");
}

/// `verify = "lossless"`: valid where the route's fallback drafts with a cheaper tier of it;
/// each way of getting it wrong is reported at the key, with the fix where there is one.
#[test]
fn a_lossless_route_needs_its_fallback_to_draft_with_a_cheaper_tier() {
    let route = |tiers: &str, policy: &str| {
        format!("{DRAFTED}[server]\nmodel = \"target\"\n[[routes]]\nname = \"code\"\ntiers = {tiers}\npolicy = {{ verify = \"lossless\"{policy} }}\n")
    };
    let cfg = load_text(&route("[\"small\", \"target\"]", ""), &[], &Overrides::default()).unwrap();
    assert_eq!(cfg.routes[0].policy.verify, Some(VerifyMode::Lossless));
    // Read back from the printed configuration.
    let again = load_text(&cfg.to_toml(), &[], &Overrides::default()).unwrap();
    assert_eq!(again.routes, cfg.routes);

    let field = "routes[0].policy.verify";
    let p = problem_at(&route("[\"target\"]", ""), field);
    assert!(p.message.contains("two tiers"), "{p}");
    // The fallback drafts with `small`, which is not a tier of this route.
    let remote = "[[models]]\nid = \"api\"\nurl = \"http://127.0.0.1:9/v1\"\n";
    let p = problem_at(&format!("{remote}{}", route("[\"api\", \"target\"]", "")), field);
    assert_eq!(
        p.suggestion.as_deref(),
        Some("add `draft = \"api\"` to the [[models]] entry `target`"),
        "{p}"
    );
    let p = problem_at(&format!("{remote}{}", route("[\"small\", \"api\"]", "")), field);
    assert!(p.message.contains("remote"), "{p}");
    let p = problem_at(
        &route("[\"small\", \"target\"]", ", min_mean_logprob = -1.0"),
        field,
    );
    assert!(p.message.contains("nothing to judge"), "{p}");
    // Anything but `lossless` and `score` is not a mode.
    let err = load_text(
        &route("[\"small\", \"target\"]", "").replace("lossless", "scored"),
        &[],
        &Overrides::default(),
    )
    .expect_err("unknown mode");
    assert!(err.to_string().contains("did you mean `score`"), "{err}");
}

/// `verify = "score"`: any pair, judged by thresholds; a remote fallback needs its chat
/// template and logprobs.
#[test]
fn a_score_route_needs_a_threshold_and_a_fallback_that_can_score() {
    let route = |tiers: &str, policy: &str| {
        format!("{DRAFTED}[server]\nmodel = \"target\"\n[[routes]]\nname = \"auto\"\ntiers = {tiers}\npolicy = {{ verify = \"score\"{policy} }}\n")
    };
    let ok = route("[\"small\", \"target\"]", ", min_mean_logprob = -0.5");
    let cfg = load_text(&ok, &[], &Overrides::default()).unwrap();
    assert_eq!(cfg.routes[0].policy.verify, Some(VerifyMode::Score));
    let again = load_text(&cfg.to_toml(), &[], &Overrides::default()).unwrap();
    assert_eq!(again.routes, cfg.routes);

    let field = "routes[0].policy.verify";
    let p = problem_at(&route("[\"target\"]", ", min_token_logprob = -4.0"), field);
    assert!(p.message.contains("two tiers"), "{p}");
    let p = problem_at(&route("[\"small\", \"target\"]", ""), field);
    assert!(p.message.contains("no threshold"), "{p}");
    assert!(
        p.suggestion.as_deref().is_some_and(|s| s.contains("--calibrate")),
        "{p}"
    );
    let remote = |extra: &str| format!("[[models]]\nid = \"api\"\nurl = \"http://127.0.0.1:9/v1\"\n{extra}");
    let to_api = route("[\"small\", \"api\"]", ", min_mean_logprob = -0.5");
    let p = problem_at(&format!("{}{to_api}", remote("")), field);
    assert_eq!(
        p.suggestion.as_deref(),
        Some("add `chat_template = \"path/to/template.jinja\"` (the model's own template) to the [[models]] entry `api`"),
        "{p}"
    );
    let p = problem_at(
        &format!(
            "{}{to_api}",
            remote("chat_template = \"t.jinja\"\ncapabilities = [\"tools\"]\n")
        ),
        field,
    );
    assert!(p.message.contains("logprobs"), "{p}");
    load_text(
        &format!("{}{to_api}", remote("chat_template = \"t.jinja\"\n")),
        &[],
        &Overrides::default(),
    )
    .expect("a remote fallback with its template");
}
