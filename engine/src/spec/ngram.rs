//! Prompt lookup (n-gram) proposals: no model, just the sequence's own tokens.
//!
//! For n from `max` down to `min`, find the latest earlier occurrence of the last n tokens of
//! prompt + output and propose the (up to) `k` tokens that followed it. Summaries that quote
//! their input, code edits that repeat the file, and extraction answers are full of such runs.

/// Up to `k` tokens that followed the latest earlier occurrence of the longest suffix of
/// `tokens` of `max..=min` tokens; empty when there is none.
pub fn propose(tokens: &[u32], min: usize, max: usize, k: usize) -> Vec<u32> {
    let len = tokens.len();
    if k == 0 || min == 0 {
        return Vec::new();
    }
    for n in (min..=max.min(len.saturating_sub(1))).rev() {
        let suffix = &tokens[len - n..];
        // Occurrences starting at `start` with something after them, latest first; the suffix
        // itself (start = len - n) has nothing after it and is not a match.
        let found = (0..len - n)
            .rev()
            .find(|&start| &tokens[start..start + n] == suffix);
        if let Some(start) = found {
            let from = start + n;
            return tokens[from..(from + k).min(len)].to_vec();
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::propose;

    #[test]
    fn proposes_what_followed_the_latest_occurrence() {
        //              0  1  2  3  4  5  6  7  8  9
        let tokens = [1, 2, 3, 4, 9, 2, 3, 5, 6, 2, 3];
        // Suffix [2, 3] occurs at 1 and 5; the latest (5) was followed by 5, 6, 2, 3.
        assert_eq!(propose(&tokens, 2, 4, 3), [5, 6, 2]);
        assert_eq!(propose(&tokens, 2, 4, 10), [5, 6, 2, 3]);
        // A longer suffix wins when it matches: [9, 2, 3] ... none earlier; [6, 2, 3] none.
        let tokens = [7, 8, 9, 1, 7, 8, 9, 2, 8, 9];
        // [8, 9] latest at 5 -> 2, 8, 9 ; but the 3-gram [2, 8, 9]? no. So 2-gram at 5.
        assert_eq!(propose(&tokens, 2, 3, 2), [2, 8]);
        // With min 3 there is no match at all.
        assert!(propose(&[7, 8, 9, 1, 7, 8, 9, 2, 8, 9], 3, 3, 2).is_empty());
    }

    #[test]
    fn prefers_the_longest_suffix() {
        // [4, 5] last occurred at 6 (followed by 0); [3, 4, 5] only at 0 (followed by 6).
        let tokens = [3, 4, 5, 6, 7, 9, 4, 5, 0, 3, 4, 5];
        assert_eq!(propose(&tokens, 2, 3, 1), [6]);
        assert_eq!(propose(&tokens, 2, 2, 1), [0]);
    }

    #[test]
    fn nothing_to_propose() {
        assert!(propose(&[], 1, 3, 4).is_empty());
        assert!(propose(&[5], 1, 3, 4).is_empty());
        assert!(propose(&[1, 2, 3], 1, 3, 4).is_empty());
        assert!(propose(&[1, 1], 1, 3, 0).is_empty());
        // A repeated token proposes itself.
        assert_eq!(propose(&[1, 1], 1, 3, 4), [1]);
    }
}
