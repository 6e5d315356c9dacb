//! Configuration problems, each with where the bad value came from (file:line:column, an
//! environment variable or a flag), the field's dotted path and, for a misspelt key or value, the
//! closest valid one.

use std::fmt;
use std::path::PathBuf;

/// Where a value was set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// 1-based line and column in a TOML file.
    File {
        path: PathBuf,
        line: usize,
        column: usize,
    },
    /// In a file, at a place no span points to (a value the file left out, for instance).
    FileUnlocated(PathBuf),
    Env(String),
    Flag(String),
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line, column } => write!(f, "{}:{line}:{column}", path.display()),
            Origin::FileUnlocated(path) => write!(f, "{}", path.display()),
            Origin::Env(var) => write!(f, "environment variable {var}"),
            Origin::Flag(flag) => write!(f, "flag {flag}"),
            Origin::Default => f.write_str("default"),
        }
    }
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub origin: Origin,
    /// Dotted path (`engine.kv_cache_mib`, `models[1].source`); empty for a TOML syntax error.
    pub field: String,
    pub message: String,
    /// The closest valid key or value, for a misspelling.
    pub suggestion: Option<String>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.origin)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)?;
        if let Some(s) = &self.suggestion {
            write!(f, " (did you mean `{s}`?)")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    /// Every problem found (validation does not stop at the first).
    #[error("{}", list(.0))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid(p) => p,
            ConfigError::Read { .. } => &[],
        }
    }
}

fn list(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(Problem::to_string).collect();
    lines.join("\n")
}

/// The candidate closest to a misspelt `word`, if any is close enough to be what was meant.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        // 0.8: `prot`/`port` and `kv_cache_mb`/`kv_cache_mib` pass, unrelated words do not.
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c.to_string())
}

/// 1-based (line, column) of a byte offset.
pub fn line_column(src: &str, offset: usize) -> (usize, usize) {
    let before = &src[..offset.min(src.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Rewrites serde's "unknown field `x`, expected one of `a`, `b`" (and the same for variants)
/// as "unknown key `x`" with a suggestion; other messages pass through.
pub fn explain(message: &str) -> (String, Option<String>, Option<String>) {
    let kind = if message.starts_with("unknown field") {
        "key"
    } else if message.starts_with("unknown variant") {
        "value"
    } else {
        return (message.trim_end().to_string(), None, None);
    };
    // serde quotes the unknown name and every expected one in backticks.
    let quoted: Vec<&str> = message.split('`').skip(1).step_by(2).collect();
    let Some((unknown, expected)) = quoted.split_first() else {
        return (message.trim_end().to_string(), None, None);
    };
    let suggestion = did_you_mean(unknown, expected.iter().copied());
    let text = match (&suggestion, expected.is_empty()) {
        (Some(_), _) => format!("unknown {kind} `{unknown}`"),
        (None, true) => format!("unknown {kind} `{unknown}` (this table takes no keys)"),
        (None, false) => {
            let all: Vec<String> = expected.iter().map(|e| format!("`{e}`")).collect();
            format!("unknown {kind} `{unknown}`; expected one of {}", all.join(", "))
        }
    };
    let unknown_key = (kind == "key").then(|| unknown.to_string());
    (text, suggestion, unknown_key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_keys_only() {
        assert_eq!(did_you_mean("prot", ["host", "port"]).as_deref(), Some("port"));
        assert_eq!(
            did_you_mean("kv_cache_mb", ["device", "kv_cache_mib", "block_size"]).as_deref(),
            Some("kv_cache_mib")
        );
        assert_eq!(did_you_mean("zzz", ["host", "port"]), None);
    }

    #[test]
    fn line_and_column_are_one_based() {
        let src = "a = 1\n[b]\n  c = 2\n";
        assert_eq!(line_column(src, 0), (1, 1));
        assert_eq!(line_column(src, src.find('c').unwrap()), (3, 3));
    }

    #[test]
    fn explains_serde_unknown_field_messages() {
        let (text, suggestion, key) = explain("unknown field `prot`, expected `host` or `port`");
        assert_eq!(text, "unknown key `prot`");
        assert_eq!(suggestion.as_deref(), Some("port"));
        assert_eq!(key.as_deref(), Some("prot"));
        let (text, suggestion, _) = explain("unknown variant `xml`, expected `text` or `json`");
        assert_eq!(text, "unknown value `xml`; expected one of `text`, `json`");
        assert_eq!(suggestion, None);
    }
}
