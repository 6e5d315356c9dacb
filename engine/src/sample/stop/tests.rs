use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const EOS: u32 = 2;
const CONTEXT: usize = 1 << 20;

fn checker(params: SamplingParams) -> StopChecker {
    StopChecker::new(&params, &[EOS], 0, CONTEXT)
}

fn stops(list: &[&str]) -> SamplingParams {
    SamplingParams {
        stop: list.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Feeds `(token, delta)` pairs until a finish; returns the emitted texts and the finish.
fn run(c: &mut StopChecker, tokens: &[(u32, &str)]) -> (Vec<String>, Option<FinishReason>) {
    let mut out = Vec::new();
    for &(id, delta) in tokens {
        let step = c.push(id, delta);
        out.push(step.text);
        if step.finish.is_some() {
            assert_eq!(out.concat(), c.text());
            return (out, step.finish);
        }
    }
    out.push(c.flush());
    assert_eq!(out.concat(), c.text());
    (out, None)
}

/// Texts alone, each token an ordinary id.
fn texts<'a>(deltas: &[&'a str]) -> Vec<(u32, &'a str)> {
    deltas.iter().map(|&d| (100, d)).collect()
}

#[test]
fn stop_string_across_three_tokens_is_cut_and_never_emitted() {
    let mut c = checker(stops(&["<END>"]));
    let (out, finish) = run(&mut c, &texts(&["Hello <E", "N", "D> trailing", "never seen"]));
    assert_eq!(out, vec!["Hello ", "", ""]);
    assert_eq!(finish, Some(FinishReason::Stop));
    assert_eq!(c.text(), "Hello ");
    assert_eq!(c.stop_match(), Some(&StopMatch::String("<END>".into())));
    // Further pushes change nothing.
    assert_eq!(c.push(100, "x").text, "");
    assert_eq!(c.text(), "Hello ");
    assert_eq!(c.finish_reason(), Some(FinishReason::Stop));
}

#[test]
fn held_text_is_released_when_it_is_not_a_stop() {
    let mut c = checker(stops(&["<END>"]));
    let (out, finish) = run(&mut c, &texts(&["a <E", "NX", " b <", "<E"]));
    // "<E" is held; "<ENX" cannot become "<END"; "<" is held, then "<<E": only "<E" is kept.
    assert_eq!(out, vec!["a ", "<ENX", " b ", "<", "<E"]);
    assert_eq!(finish, None);
    assert_eq!(c.text(), "a <ENX b <<E");

    // Released on a length finish too.
    let mut c = checker(SamplingParams {
        max_tokens: Some(2),
        ..stops(&["<END>"])
    });
    let (out, finish) = run(&mut c, &texts(&["x", "<EN"]));
    assert_eq!(out, vec!["x", "<EN"]);
    assert_eq!(finish, Some(FinishReason::Length));
}

#[test]
fn overlapping_stop_strings_the_first_complete_wins() {
    let case = |list: &[&str], deltas: &[&str]| {
        let mut c = checker(stops(list));
        let (_, finish) = run(&mut c, &texts(deltas));
        assert_eq!(finish, Some(FinishReason::Stop), "{list:?} {deltas:?}");
        let StopMatch::String(s) = c.stop_match().cloned().unwrap() else {
            panic!("not a string match")
        };
        (c.text().to_string(), s)
    };
    // "bc" is complete before "abcd", however the text is split.
    for deltas in [&["xabcd"][..], &["xa", "b", "cd"], &["x", "a", "b", "c", "d"]] {
        assert_eq!(case(&["abcd", "bc"], deltas), ("xa".into(), "bc".into()));
    }
    // A stop string that is a prefix of another: the shorter completes first.
    assert_eq!(
        case(&["cat", "category"], &["the c", "ategory"]),
        ("the ".into(), "cat".into())
    );
    // Same end: the longer (earlier start) wins.
    assert_eq!(case(&["b", "ab"], &["xa", "b"]), ("x".into(), "ab".into()));
    // Self-overlap: in "aaab" the match "aab" starts at 1.
    assert_eq!(case(&["aab"], &["a", "a", "a", "b"]), ("a".into(), "aab".into()));
    // Two stop strings inside one delta: the earlier one.
    assert_eq!(case(&["yy", "xx"], &["axxbyy"]), ("a".into(), "xx".into()));
    // Multi-byte characters on both sides of the boundary.
    assert_eq!(case(&["日本"], &["é日", "本語"]), ("é".into(), "日本".into()));
}

#[test]
fn stop_token_ids_end_without_their_text() {
    let mut c = checker(SamplingParams {
        stop_token_ids: vec![42],
        ..stops(&["zz"])
    });
    let (out, finish) = run(&mut c, &[(5, "hi z"), (42, " foo"), (6, "after")]);
    // The held "z" did not become "zz": released; " foo" is the stop token's and is not.
    assert_eq!(out, vec!["hi ", "z"]);
    assert_eq!(finish, Some(FinishReason::Stop));
    assert_eq!(c.stop_match(), Some(&StopMatch::TokenId(42)));
}

#[test]
fn eos_stops_unless_ignored() {
    let mut c = checker(SamplingParams::default());
    let (out, finish) = run(&mut c, &[(5, "a"), (EOS, "</s>")]);
    assert_eq!((out.concat(), finish), ("a".into(), Some(FinishReason::Stop)));
    assert_eq!(c.stop_match(), Some(&StopMatch::Eos(EOS)));

    let mut c = checker(SamplingParams {
        ignore_eos: true,
        max_tokens: Some(3),
        ..Default::default()
    });
    let (out, finish) = run(&mut c, &[(5, "a"), (EOS, "</s>"), (EOS, "</s>")]);
    assert_eq!(out, vec!["a", "</s>", "</s>"]);
    assert_eq!(finish, Some(FinishReason::Length));
    assert_eq!(c.stop_match(), None);
}

#[test]
fn min_tokens_suppresses_stopping() {
    let params = SamplingParams {
        min_tokens: 3,
        stop_token_ids: vec![9],
        ..stops(&["!"])
    };
    let mut c = checker(params.clone());
    // EOS, a stop id and a stop string before the 3rd token are ordinary text.
    let (out, finish) = run(&mut c, &[(EOS, "<eos>"), (9, "!"), (5, "x"), (6, "y")]);
    assert_eq!(out, vec!["<eos>", "!", "x", "y", ""]);
    assert_eq!(finish, None);
    // From the 3rd token on, each stops.
    for (third, want) in [
        ((EOS, "e"), StopMatch::Eos(EOS)),
        ((9, "n"), StopMatch::TokenId(9)),
        ((5, "a!b"), StopMatch::String("!".into())),
    ] {
        let mut c = checker(params.clone());
        let (out, finish) = run(&mut c, &[(5, "a"), (6, "b"), third]);
        assert_eq!(finish, Some(FinishReason::Stop));
        assert_eq!(c.stop_match(), Some(&want));
        assert_eq!(out.concat(), if third.0 == 5 { "aba" } else { "ab" });
    }
    // A stop string begun before min_tokens and completed at it counts.
    let mut c = checker(SamplingParams {
        min_tokens: 2,
        ..stops(&["ab"])
    });
    let (out, finish) = run(&mut c, &texts(&["a", "b"]));
    assert_eq!((out.concat(), finish), (String::new(), Some(FinishReason::Stop)));
}

#[test]
fn max_tokens_and_context_give_length() {
    let mut c = checker(SamplingParams {
        max_tokens: Some(2),
        ..Default::default()
    });
    let (out, finish) = run(&mut c, &texts(&["a", "b", "c"]));
    assert_eq!(
        (out, finish),
        (vec!["a".into(), "b".into()], Some(FinishReason::Length))
    );
    // A stop on the last allowed token is a stop.
    let mut c = checker(SamplingParams {
        max_tokens: Some(2),
        ..Default::default()
    });
    assert_eq!(run(&mut c, &[(5, "a"), (EOS, "")]).1, Some(FinishReason::Stop));
    // No max_tokens: the context's room; max_tokens beyond it is capped.
    for max_tokens in [None, Some(100)] {
        let params = SamplingParams {
            max_tokens,
            ..Default::default()
        };
        let mut c = StopChecker::new(&params, &[EOS], 10, 12);
        assert_eq!(c.max_tokens(), 2);
        assert_eq!(
            run(&mut c, &texts(&["a", "b", "c"])).1,
            Some(FinishReason::Length)
        );
        assert_eq!(c.num_tokens(), 2);
    }
    assert_eq!(FinishReason::Length.as_str(), "length");
    assert_eq!(FinishReason::Stop.as_str(), "stop");
}

#[test]
fn flush_releases_held_text() {
    let mut c = checker(stops(&["STOP"]));
    assert_eq!(c.push(5, "go ST").text, "go ");
    assert_eq!(c.flush(), "ST");
    assert_eq!(c.text(), "go ST");
    assert_eq!(c.flush(), "");
}

/// Random texts over a small alphabet (so stop strings occur and overlap), split into random
/// tokens: the emitted text is always the full text cut before the first-completed stop string,
/// the deltas concatenate to it, and no delta or prefix of the output contains a stop string.
#[test]
fn streaming_equals_cutting_the_full_text() {
    let alphabet = ["a", "b", " ", "é", "日"];
    let stop_sets: [&[&str]; 4] = [&["ab a"], &["bb", "b b"], &["é日", "aé", "日日日"], &["a", "ba"]];
    let mut rng = StdRng::seed_from_u64(7);
    for round in 0..2000 {
        let list = stop_sets[round % stop_sets.len()];
        let full: String = (0..rng.random_range(0..30))
            .map(|_| alphabet[rng.random_range(0..alphabet.len())])
            .collect();
        // Cut into tokens at random character boundaries.
        let chars: Vec<char> = full.chars().collect();
        let mut deltas = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            let n = rng.random_range(1..=4).min(chars.len() - i);
            deltas.push(chars[i..i + n].iter().collect::<String>());
            i += n;
        }
        // Reference: the occurrence with the smallest (end, start).
        let first = list
            .iter()
            .filter_map(|s| full.find(s).map(|at| (at + s.len(), at)))
            .min();
        let want = first.map_or(full.as_str(), |(_, start)| &full[..start]);

        let mut c = checker(stops(list));
        let refs: Vec<&str> = deltas.iter().map(String::as_str).collect();
        let (out, finish) = run(&mut c, &texts(&refs));
        assert_eq!(out.concat(), want, "{full:?} split {deltas:?} stops {list:?}");
        assert_eq!(finish, first.map(|_| FinishReason::Stop));
        assert!(list.iter().all(|s| !c.text().contains(s)), "{full:?}");
    }
}
