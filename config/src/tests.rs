use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::*;

mod speculative;

const FILE: &str = "wick.toml";

fn load_text(src: &str, env: &[(&str, &str)], cli: &Overrides) -> Result<Config, ConfigError> {
    let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let env = Overrides::from_env(|k| env.get(k).cloned()).map_err(ConfigError::Invalid)?;
    load_str(Some((Path::new(FILE), src)), &env, cli)
}

/// The only problem of a configuration that must fail.
fn problem(src: &str) -> Problem {
    let err = load_text(src, &[], &Overrides::default()).expect_err("invalid configuration");
    let problems = err.problems();
    assert_eq!(problems.len(), 1, "{err}");
    problems[0].clone()
}

/// Column 1 of `line` in the test file.
fn at_line(line: usize) -> Origin {
    Origin::File {
        path: PathBuf::from(FILE),
        line,
        column: 1,
    }
}

#[test]
fn no_file_and_an_empty_file_are_the_defaults() {
    let none = load(None, &Overrides::default(), &Overrides::default()).unwrap();
    let empty = load_text("", &[], &Overrides::default()).unwrap();
    assert_eq!(none, empty);
    assert_eq!((none.server.host.as_str(), none.server.port), ("127.0.0.1", 8080));
    // CPU: 1024 MiB (wick serve applies it); GPU: free memory minus the headroom.
    assert_eq!(
        (none.engine.kv_cache_mib, none.engine.gpu_memory_headroom_mib),
        (None, 2048)
    );
    assert_eq!(
        (none.server.drain_delay_secs, none.server.drain_grace_secs),
        (5, 60)
    );
    // The embedded default model, served.
    let served = none.served_model().unwrap();
    assert_eq!(
        (served.id.as_str(), served.source.as_deref()),
        (DEFAULT_MODEL_ID, None)
    );
}

#[test]
fn unknown_key_names_file_line_field_and_the_key_meant() {
    let p = problem("[server]\nhost = \"0.0.0.0\"\nprot = 9000\n");
    assert_eq!(p.origin, at_line(3));
    assert_eq!(p.field, "server.prot");
    assert_eq!(p.suggestion.as_deref(), Some("port"));
    assert_eq!(
        p.to_string(),
        "wick.toml:3:1: server.prot: unknown key `prot` (did you mean `port`?)"
    );
    // In an array of tables, and at the top level.
    let p = problem("[[models]]\nid = \"a\"\nsorce = \"x.gguf\"\n");
    assert_eq!((p.origin, p.field.as_str()), (at_line(3), "models[0].sorce"));
    assert_eq!(p.suggestion.as_deref(), Some("source"));
    let p = problem("\n[engin]\ndevice = \"cpu\"\n");
    assert_eq!(
        (p.field.as_str(), p.suggestion.as_deref()),
        ("engin", Some("engine"))
    );
    assert_eq!(
        p.origin,
        Origin::File {
            path: FILE.into(),
            line: 2,
            column: 2
        }
    );
}

#[test]
fn wrong_type_and_bad_enum_value_name_their_line() {
    let p = problem("[engine]\ndevice = \"cpu\"\nkv_cache_mib = \"lots\"\n");
    assert_eq!(p.field, "engine.kv_cache_mib");
    assert!(matches!(p.origin, Origin::File { line: 3, .. }), "{p}");
    assert!(p.message.contains("invalid type"), "{p}");
    let p = problem("[logging]\nformat = \"jsno\"\n");
    assert_eq!(p.field, "logging.format");
    assert!(matches!(p.origin, Origin::File { line: 2, .. }), "{p}");
    assert_eq!(p.suggestion.as_deref(), Some("json"));
}

#[test]
fn syntax_error_has_a_line() {
    let p = problem("[server]\nport = = 1\n");
    assert!(matches!(p.origin, Origin::File { line: 2, .. }), "{p}");
}

#[test]
fn validation_problems_point_at_the_key_and_are_all_reported() {
    let src = "[engine]\ndevice = \"gpu0\"\n\nkv_cache_mib = 0\ndtype = \"bf61\"\n[server]\nport = 0\n";
    let err = load_text(src, &[], &Overrides::default()).unwrap_err();
    let got: Vec<(String, Origin)> = err
        .problems()
        .iter()
        .map(|p| (p.field.clone(), p.origin.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("server.port".into(), at_line(7)),
            ("engine.device".into(), at_line(2)),
            ("engine.kv_cache_mib".into(), at_line(4)),
            ("engine.dtype".into(), at_line(5)),
        ]
    );
    assert_eq!(err.problems()[3].suggestion.as_deref(), Some("bf16"));
    assert!(
        err.to_string()
            .contains("wick.toml:2:1: engine.device: `gpu0` is not a device"),
        "{err}"
    );
}

#[test]
fn devices_are_cpu_cuda_or_cuda_n() {
    for ok in ["cpu", "cuda", "cuda:0", "cuda:7"] {
        assert_eq!(validate::check_device(ok), Ok(()), "{ok}");
    }
    for bad in ["gpu", "cuda:", "cuda:x", "cuda0", "CPU"] {
        assert!(validate::check_device(bad).is_err(), "{bad}");
    }
}

#[test]
fn routes_must_name_known_models() {
    let src = "[[models]]\nid = \"small\"\n[[models]]\nid = \"large\"\nurl = \"http://wick-large:8080/v1\"\n\
               [[routes]]\nname = \"auto\"\ntiers = [\"small\",\n  \"lareg\"]\n";
    let p = problem(src);
    assert_eq!(p.field, "routes[0].tiers[1]");
    assert_eq!(
        p.origin,
        Origin::File {
            path: FILE.into(),
            line: 9,
            column: 3
        }
    );
    assert_eq!(p.suggestion.as_deref(), Some("large"));
    // The same with the typo fixed is valid, and serves the only local model.
    let cfg = load_text(&src.replace("lareg", "large"), &[], &Overrides::default()).unwrap();
    assert_eq!(cfg.served_model().map(|m| m.id.as_str()), Some("small"));
}

#[test]
fn several_local_models_need_server_model() {
    let src = "[[models]]\nid = \"a\"\n[[models]]\nid = \"b\"\nsource = \"b.gguf\"\n";
    let p = problem(src);
    assert_eq!(p.field, "server.model");
    let cli = Overrides {
        model_id: Some("b".into()),
        ..Overrides::default()
    };
    let cfg = load_text(src, &[], &cli).unwrap();
    assert_eq!(
        cfg.served_model().and_then(|m| m.source.as_deref()),
        Some("b.gguf")
    );
    // A remote model cannot be served here.
    let p = problem("[server]\nmodel = \"r\"\n[[models]]\nid = \"r\"\nurl = \"http://x/v1\"\n");
    assert_eq!((p.field.as_str(), p.origin.clone()), ("server.model", at_line(2)));
}

#[test]
fn local_models_are_the_served_one_then_those_routes_name() {
    let src = "[server]\nmodel = \"b\"\n\
        [[models]]\nid = \"a\"\n\
        [[models]]\nid = \"b\"\nsource = \"b.gguf\"\n\
        [[models]]\nid = \"c\"\nsource = \"c.gguf\"\n\
        [[models]]\nid = \"r\"\nurl = \"http://r/v1\"\n\
        [[routes]]\nname = \"one\"\ntiers = [\"c\", \"r\", \"b\"]\n\
        [[routes]]\nname = \"two\"\ntiers = [\"b\", \"c\"]\n";
    let cfg = load_text(src, &[], &Overrides::default()).unwrap();
    let ids: Vec<&str> = cfg.local_models().iter().map(|m| m.id.as_str()).collect();
    // `a` is named by no route and not served; `r` is remote; none twice.
    assert_eq!(ids, ["b", "c"]);
    let unused: Vec<&str> = cfg.unused_models().iter().map(|m| m.id.as_str()).collect();
    assert_eq!(unused, ["a"]);
    // No routes: only the served model.
    let cfg = load_text("[[models]]\nid = \"a\"\n", &[], &Overrides::default()).unwrap();
    let ids: Vec<&str> = cfg.local_models().iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["a"]);
}

#[test]
fn unused_models_are_those_nothing_serves_routes_or_drafts_with() {
    let src = "[server]\nmodel = \"t\"\n\
        [[models]]\nid = \"t\"\nsource = \"t.gguf\"\ndraft = \"d\"\n\
        [[models]]\nid = \"d\"\nsource = \"d.gguf\"\n\
        [[models]]\nid = \"u\"\nsource = \"u.gguf\"\ndraft = \"ud\"\n\
        [[models]]\nid = \"ud\"\nsource = \"ud.gguf\"\n\
        [[models]]\nid = \"r\"\nurl = \"http://r/v1\"\n\
        [[models]]\nid = \"spare\"\nurl = \"http://spare/v1\"\n\
        [[routes]]\nname = \"one\"\ntiers = [\"t\", \"r\"]\n";
    let cfg = load_text(src, &[], &Overrides::default()).unwrap();
    let unused: Vec<&str> = cfg.unused_models().iter().map(|m| m.id.as_str()).collect();
    // `d` drafts for the served `t`; `r` is a route's tier; `u` and its draft `ud` and the
    // remote `spare` are named by nothing this process runs.
    assert_eq!(unused, ["u", "ud", "spare"]);
}

#[test]
fn precedence_is_defaults_then_file_then_env_then_flags() {
    let src = "[server]\nport = 9000\nhost = \"0.0.0.0\"\n[engine]\nmax_num_seqs = 8\nkv_cache_mib = 64\n";
    let none = Overrides::default();
    let file = load_text(src, &[], &none).unwrap();
    assert_eq!(
        (
            file.server.port,
            file.engine.max_num_seqs,
            file.engine.kv_cache_mib
        ),
        (9000, 8, Some(64))
    );
    assert_eq!(
        file.engine.max_num_batched_tokens, 256,
        "default where the file is silent"
    );

    let env = [
        ("WICK_PORT", "9100"),
        ("WICK_MAX_NUM_SEQS", "16"),
        ("WICK_HOST", ""),
    ];
    let with_env = load_text(src, &env, &none).unwrap();
    assert_eq!((with_env.server.port, with_env.engine.max_num_seqs), (9100, 16));
    assert_eq!(
        with_env.server.host, "0.0.0.0",
        "an empty variable leaves the file's value"
    );
    assert_eq!(with_env.engine.kv_cache_mib, Some(64));

    let cli = Overrides {
        port: Some(9200),
        ..Overrides::default()
    };
    let with_cli = load_text(src, &env, &cli).unwrap();
    assert_eq!((with_cli.server.port, with_cli.engine.max_num_seqs), (9200, 16));
}

#[test]
fn model_flags_apply_to_the_served_model() {
    let cli = Overrides {
        model: Some("org/model:file.gguf".into()),
        served_model_name: Some("m".into()),
        ..Overrides::default()
    };
    let cfg = load(None, &Overrides::default(), &cli).unwrap();
    assert_eq!(cfg.models.len(), 1);
    let m = &cfg.models[0];
    assert_eq!(
        (m.source.as_deref(), m.served_name.as_deref()),
        (Some("org/model:file.gguf"), Some("m"))
    );
    let src = "[[models]]\nid = \"x\"\nsource = \"a.gguf\"\n";
    let cfg = load_text(src, &[("WICK_MODEL", "b.gguf")], &Overrides::default()).unwrap();
    assert_eq!(
        (cfg.models[0].id.as_str(), cfg.models[0].source.as_deref()),
        ("x", Some("b.gguf"))
    );
}

#[test]
fn a_bad_value_from_env_or_a_flag_names_the_variable_or_flag() {
    let err = load_text("", &[("WICK_PORT", "http")], &Overrides::default()).unwrap_err();
    assert_eq!(err.problems()[0].origin, Origin::Env("WICK_PORT".into()));
    let err = load_text("", &[("WICK_KV_CACHE_MIB", "0")], &Overrides::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "environment variable WICK_KV_CACHE_MIB: engine.kv_cache_mib: must be greater than 0"
    );
    let cli = Overrides {
        max_num_seqs: Some(0),
        ..Overrides::default()
    };
    let err = load_text("[engine]\nmax_num_seqs = 4\n", &[], &cli).unwrap_err();
    assert_eq!(err.problems()[0].origin, Origin::Flag("--max-num-seqs".into()));
}

#[test]
fn request_limits_default_layer_and_must_be_positive() {
    let cfg = load_text("", &[], &Overrides::default()).unwrap();
    assert_eq!((cfg.server.max_tools, cfg.server.max_schema_bytes), (128, 65536));
    let cli = Overrides {
        max_schema_bytes: Some(1000),
        ..Overrides::default()
    };
    let src = "[server]\nmax_tools = 10\nmax_schema_bytes = 500\n";
    let cfg = load_text(src, &[("WICK_MAX_TOOLS", "20")], &cli).unwrap();
    assert_eq!((cfg.server.max_tools, cfg.server.max_schema_bytes), (20, 1000));
    let err = load_text("", &[("WICK_MAX_TOOLS", "0")], &Overrides::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "environment variable WICK_MAX_TOOLS: server.max_tools: must be greater than 0"
    );
    let err = load_text("[server]\nmax_schema_bytes = 0\n", &[], &Overrides::default()).unwrap_err();
    assert!(
        err.to_string()
            .contains("server.max_schema_bytes: must be greater than 0"),
        "{err}"
    );
}

#[test]
fn responses_store_bounds_default_layer_and_must_be_positive() {
    let cfg = load_text("", &[], &Overrides::default()).unwrap();
    assert_eq!(
        (
            cfg.server.responses_store_max,
            cfg.server.responses_store_ttl_secs
        ),
        (1024, 3600)
    );
    let cli = Overrides {
        responses_store_ttl_secs: Some(60),
        ..Overrides::default()
    };
    let src = "[server]\nresponses_store_max = 10\nresponses_store_ttl_secs = 5\n";
    let cfg = load_text(src, &[("WICK_RESPONSES_STORE_MAX", "20")], &cli).unwrap();
    assert_eq!(
        (
            cfg.server.responses_store_max,
            cfg.server.responses_store_ttl_secs
        ),
        (20, 60)
    );
    let err = load_text("", &[("WICK_RESPONSES_STORE_MAX", "0")], &Overrides::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "environment variable WICK_RESPONSES_STORE_MAX: server.responses_store_max: must be greater than 0"
    );
    let err = load_text(
        "[server]\nresponses_store_ttl_secs = 0\n",
        &[],
        &Overrides::default(),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("server.responses_store_ttl_secs: must be greater than 0"),
        "{err}"
    );
    let cli = Overrides {
        responses_store_ttl_secs: Some(0),
        ..Overrides::default()
    };
    let err = load_text("", &[], &cli).unwrap_err();
    assert_eq!(
        err.problems()[0].origin,
        Origin::Flag("--responses-store-ttl-secs".into())
    );
}

#[test]
fn responses_store_byte_bound_defaults_to_64_mib_layers_and_must_be_positive() {
    let cfg = load_text("", &[], &Overrides::default()).unwrap();
    assert_eq!(cfg.server.responses_store_max_bytes, 64 << 20);
    let src = "[server]\nresponses_store_max_bytes = 1000\n";
    assert_eq!(
        load_text(src, &[], &Overrides::default())
            .unwrap()
            .server
            .responses_store_max_bytes,
        1000
    );
    let env = [("WICK_RESPONSES_STORE_MAX_BYTES", "2000")];
    assert_eq!(
        load_text(src, &env, &Overrides::default())
            .unwrap()
            .server
            .responses_store_max_bytes,
        2000
    );
    let cli = Overrides {
        responses_store_max_bytes: Some(3000),
        ..Overrides::default()
    };
    assert_eq!(
        load_text(src, &env, &cli)
            .unwrap()
            .server
            .responses_store_max_bytes,
        3000
    );
    let err = load_text(
        "[server]\nresponses_store_max_bytes = 0\n",
        &[],
        &Overrides::default(),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("server.responses_store_max_bytes: must be greater than 0"),
        "{err}"
    );
    let err = load_text(
        "",
        &[("WICK_RESPONSES_STORE_MAX_BYTES", "lots")],
        &Overrides::default(),
    )
    .unwrap_err();
    assert_eq!(
        err.problems()[0].origin,
        Origin::Env("WICK_RESPONSES_STORE_MAX_BYTES".into())
    );
    let cli = Overrides {
        responses_store_max_bytes: Some(0),
        ..Overrides::default()
    };
    let err = load_text("", &[], &cli).unwrap_err();
    assert_eq!(
        err.problems()[0].origin,
        Origin::Flag("--responses-store-max-bytes".into())
    );
}

#[test]
fn secrets_are_masked_in_print_and_debug() {
    let src = "[server]\napi_keys = [\"sk-from-file\"]\n";
    let cfg = load_text(src, &[], &Overrides::default()).unwrap();
    assert_eq!(cfg.server.api_keys[0].expose(), "sk-from-file");
    let printed = cfg.to_toml();
    assert!(!printed.contains("sk-from-file"), "{printed}");
    assert!(printed.contains(&format!("api_keys = [\"{MASK}\"]")), "{printed}");
    assert!(!format!("{cfg:?}").contains("sk-from-file"));
    let cfg = load_text(src, &[("WICK_API_KEY", "k1, k2")], &Overrides::default()).unwrap();
    let keys: Vec<&str> = cfg.server.api_keys.iter().map(Secret::expose).collect();
    assert_eq!(keys, ["k1", "k2"]);
    assert!(!cfg.to_toml().contains("k1"));
}

#[test]
fn printed_config_reads_back_the_same_except_secrets() {
    let cfg = load(None, &Overrides::default(), &Overrides::default()).unwrap();
    let again = load_text(&cfg.to_toml(), &[], &Overrides::default()).unwrap();
    assert_eq!(cfg, again);
}

#[test]
fn every_example_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let none = Overrides::default();
            load(Some(&path), &none, &none).unwrap_or_else(|e| panic!("{}:\n{e}", path.display()));
            names.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    names.sort();
    assert_eq!(
        names,
        [
            "cascade.toml",
            "cpu-default.toml",
            "gpu-llama3.1-8b.toml",
            "speculative.toml",
            "verified-cascade.toml"
        ]
    );
}

#[test]
fn a_negative_price_is_refused() {
    let p = problem("[[models]]\nid = \"default\"\nprice_input_per_mtok = -1.0\n");
    assert_eq!(p.field, "models[0].price_input_per_mtok");
    assert!(p.message.contains("at least 0"), "{}", p.message);
}

#[test]
fn capabilities_default_by_kind_and_local_models_read_text_only() {
    let src = "[[models]]\nid = \"a\"\n[[models]]\nid = \"r\"\nurl = \"http://r/v1\"\n\
        [[models]]\nid = \"t\"\nurl = \"http://t/v1\"\ncapabilities = [\"tools\"]\n\
        [server]\nmodel = \"a\"\n";
    let cfg = load_text(src, &[], &Overrides::default()).unwrap();
    assert_eq!(cfg.models[0].capabilities(), Capability::LOCAL.to_vec());
    assert_eq!(cfg.models[1].capabilities(), Capability::ALL.to_vec());
    assert_eq!(cfg.models[2].capabilities(), vec![Capability::Tools]);
    let p = problem("[[models]]\nid = \"a\"\ncapabilities = [\"tools\", \"image_input\"]\n");
    assert_eq!(p.field, "models[0].capabilities");
    assert!(p.message.contains("image_input"), "{}", p.message);
    // An unknown capability is a type error on its line.
    let p = problem("[[models]]\nid = \"a\"\ncapabilities = [\"vision\"]\n");
    assert!(p.message.contains("vision"), "{}", p.message);
}

#[test]
fn kv_cache_dtype_is_auto_f32_or_f16_from_file_env_or_flag() {
    let none = Overrides::default();
    assert_eq!(load_text("", &[], &none).unwrap().engine.kv_cache_dtype, "auto");
    let file = "[engine]\nkv_cache_dtype = \"f16\"\n";
    assert_eq!(load_text(file, &[], &none).unwrap().engine.kv_cache_dtype, "f16");
    let env = [("WICK_KV_CACHE_DTYPE", "f32")];
    assert_eq!(load_text(file, &env, &none).unwrap().engine.kv_cache_dtype, "f32");
    let flag = Overrides {
        kv_cache_dtype: Some("auto".into()),
        ..Overrides::default()
    };
    assert_eq!(
        load_text(file, &env, &flag).unwrap().engine.kv_cache_dtype,
        "auto"
    );

    let err = load_text("[engine]\nkv_cache_dtype = \"fp16\"\n", &[], &none).unwrap_err();
    let p = &err.problems()[0];
    assert_eq!(
        (p.field.as_str(), &p.origin),
        ("engine.kv_cache_dtype", &at_line(2))
    );
    assert_eq!(p.suggestion.as_deref(), Some("f16"));
}
