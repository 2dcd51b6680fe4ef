//! The glob dialect of `invalidate_pattern`: `*` matches any run of characters, `?` one
//! character, `\` makes the next character literal; everything else is literal. It is matched
//! in process against L1 keys, and translated, fully escaped, into a Redis `SCAN MATCH` glob
//! whose results are filtered by the same matcher, so a pattern can never reach outside its
//! namespace.

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    Lit(char),
    One,
    Star,
}

/// A parsed pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pattern {
    source: String,
    toks: Vec<Tok>,
}

impl Pattern {
    pub(crate) fn parse(pattern: &str) -> Result<Self> {
        let mut toks = Vec::with_capacity(pattern.len());
        let mut chars = pattern.chars();
        while let Some(c) = chars.next() {
            toks.push(match c {
                '*' => Tok::Star,
                '?' => Tok::One,
                '\\' => Tok::Lit(chars.next().ok_or_else(|| {
                    Error::invalid(
                        "pattern",
                        format!("{pattern:?} ends with a lone '\\'; write '\\\\' for a backslash"),
                    )
                })?),
                c => Tok::Lit(c),
            });
        }
        Ok(Pattern {
            source: pattern.to_owned(),
            toks,
        })
    }

    pub(crate) fn source(&self) -> &str {
        &self.source
    }

    /// Whether `key` matches, with the classic linear-backtracking wildcard walk.
    pub(crate) fn matches(&self, key: &str) -> bool {
        let key: Vec<char> = key.chars().collect();
        let (mut p, mut k) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while k < key.len() {
            match self.toks.get(p) {
                Some(Tok::Star) => {
                    star = Some((p, k));
                    p += 1;
                }
                Some(Tok::One) => {
                    p += 1;
                    k += 1;
                }
                Some(Tok::Lit(c)) if key.get(k) == Some(c) => {
                    p += 1;
                    k += 1;
                }
                _ => match star {
                    Some((sp, sk)) => {
                        p = sp + 1;
                        k = sk + 1;
                        star = Some((sp, sk + 1));
                    }
                    None => return false,
                },
            }
        }
        self.toks
            .get(p..)
            .unwrap_or_default()
            .iter()
            .all(|t| *t == Tok::Star)
    }

    /// A Redis glob for keys under `prefix` (which holds no metacharacters) that matches at
    /// least every key this pattern matches. Redis's `?` matches one byte, ours one character,
    /// so `?` becomes `*` and the caller filters what comes back with [`matches`](Self::matches).
    pub(crate) fn to_redis_glob(&self, prefix: &str) -> String {
        let mut glob = String::with_capacity(prefix.len() + self.source.len() * 2);
        glob.push_str(prefix);
        for tok in &self.toks {
            match tok {
                Tok::Star | Tok::One => glob.push('*'),
                Tok::Lit(c) => {
                    if matches!(c, '*' | '?' | '[' | ']' | '\\' | '^' | '-') {
                        glob.push('\\');
                    }
                    glob.push(*c);
                }
            }
        }
        glob
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, k: &str) -> bool {
        Pattern::parse(p).unwrap().matches(k)
    }

    #[test]
    fn wildcards() {
        assert!(m("user:*", "user:1"));
        assert!(m("user:*", "user:"));
        assert!(!m("user:*", "users:1"));
        assert!(m("*:profile", "user:42:profile"));
        assert!(m("a?c", "abc"));
        assert!(!m("a?c", "ac"));
        assert!(m("*a*b*", "xxaxxbxx"));
        assert!(!m("*a*b*", "xxbxxaxx"));
        assert!(m("*", ""));
        assert!(m("", ""));
        assert!(!m("", "x"));
        assert!(m("é?", "éü"));
    }

    #[test]
    fn brackets_and_escapes_are_literal() {
        assert!(m("[ab]", "[ab]"));
        assert!(!m("[ab]", "a"));
        assert!(m(r"a\*", "a*"));
        assert!(!m(r"a\*", "ab"));
        assert!(m(r"a\\", r"a\"));
        assert!(Pattern::parse("a\\").is_err());
    }

    #[test]
    fn redis_glob_escapes_everything_but_our_wildcards() {
        let p = Pattern::parse(r"[x]-^\*?*").unwrap();
        assert_eq!(p.to_redis_glob("pre:"), r"pre:\[x\]\-\^\***");
    }
}
