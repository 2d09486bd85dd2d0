//! "Did you mean ...?": the closest known word to a misspelt one.

/// The candidate closest to `input`, if it is close enough to be a plausible typo.
///
/// Case differences are free (`get` finds `GET`), and a swap of two neighbouring letters counts as
/// one edit (`prodcut` finds `product`). The allowed distance grows with the word: one edit for
/// short words, up to three for long ones. Ties go to the earlier candidate.
pub(crate) fn closest<'a, I>(input: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let input_lower = input.to_lowercase();
    let input_len = input_lower.chars().count();
    let allowed = match input_len {
        0..=3 => 1,
        4..=8 => 2,
        _ => 3,
    };
    let mut best: Option<(usize, &'a str)> = None;
    for candidate in candidates {
        let candidate_lower = candidate.to_lowercase();
        let d = distance(&input_lower, &candidate_lower);
        // A distance as large as the word itself means "replace everything": not a typo.
        let longest = input_len.max(candidate_lower.chars().count());
        if d <= allowed && d < longest && best.is_none_or(|(best_d, _)| d < best_d) {
            best = Some((d, candidate));
        }
    }
    best.map(|(_, candidate)| candidate)
}

/// The hint for a reference to an undefined name: the closest defined one, the defined ones, or
/// where to define it (`section`, e.g. `upstreams`).
pub(crate) fn unknown_name_hint(input: &str, defined: &[&str], section: &str) -> String {
    match closest(input, defined.iter().copied()) {
        Some(name) => format!("did you mean `{name}`?"),
        None if defined.is_empty() => format!("define it under `{section}:`"),
        None => format!("defined under `{section}`: {}", defined.join(", ")),
    }
}

/// `did you mean `x`?` for the closest candidate, if any.
pub(crate) fn did_you_mean<'a, I>(input: &str, candidates: I) -> Option<String>
where
    I: IntoIterator<Item = &'a str>,
{
    closest(input, candidates).map(|c| format!("did you mean `{c}`?"))
}

/// Optimal string alignment distance: insertions, deletions, substitutions and adjacent swaps.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // Three rolling rows: the one two back is needed for swaps.
    let mut before: Vec<usize> = vec![0; b.len() + 1];
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current: Vec<usize> = vec![0; b.len() + 1];
    for (i, &ca) in a.iter().enumerate() {
        current[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            let mut d = (previous[j] + cost).min(previous[j + 1] + 1).min(current[j] + 1);
            if i > 0 && j > 0 && a.get(i - 1) == Some(&cb) && b.get(j - 1) == Some(&ca) {
                d = d.min(before[j - 1] + 1);
            }
            current[j + 1] = d;
        }
        std::mem::swap(&mut before, &mut previous);
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_swap_counts_as_one() {
        assert_eq!(distance("prodcut", "product"), 1);
        assert_eq!(distance("abc", "abc"), 0);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("kitten", "sitting"), 3);
    }

    #[test]
    fn closest_typo_in_key_suggests_key() {
        assert_eq!(closest("upstrem", ["name", "match", "upstream"]), Some("upstream"));
        assert_eq!(closest("routs", ["listeners", "upstreams", "routes"]), Some("routes"));
    }

    #[test]
    fn closest_lowercase_method_suggests_uppercase() {
        assert_eq!(closest("get", ["GET", "PUT", "POST"]), Some("GET"));
    }

    #[test]
    fn closest_unrelated_word_suggests_nothing() {
        assert_eq!(closest("banana", ["round_robin", "least_request"]), None);
        assert_eq!(closest("x", ["s"]), None);
    }

    #[test]
    fn closest_tie_prefers_first_candidate() {
        assert_eq!(closest("ab", ["aa", "bb"]), Some("aa"));
    }

    #[test]
    fn did_you_mean_renders_backticked_candidate() {
        assert_eq!(did_you_mean("prodcut", ["cart", "product"]).as_deref(), Some("did you mean `product`?"));
    }
}
