//! What the test wrappers share: the kind of request a rule applies to, and
//! how a rule picks its requests by key and by count. [`super::testing`]
//! fails the requests a rule picks, [`super::pausing`] holds, fails, counts
//! or hooks them; both decide *which* requests the same way.

/// The kind of request a rule applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Put,
    Get,
    List,
    Delete,
    /// A local folder's fsync of a directory, inside [`super::Backend::sync`]
    /// (the key is the directory's path).
    Fsync,
}

impl Op {
    /// Parses `put`, `get`, `list`, `delete` (the binary's test hook).
    pub fn parse(s: &str) -> Option<Op> {
        match s {
            "put" => Some(Op::Put),
            "get" => Some(Op::Get),
            "list" => Some(Op::List),
            "delete" => Some(Op::Delete),
            _ => None,
        }
    }

    /// The request's name as a store's log would show it.
    pub fn name(self) -> &'static str {
        match self {
            Op::Put => "PUT",
            Op::Get => "GET",
            Op::List => "LIST",
            Op::Delete => "DELETE",
            Op::Fsync => "FSYNC",
        }
    }
}

/// How a rule's pattern is compared with a request's key (or listed prefix).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyMatch {
    /// The key starts with the pattern.
    Prefix,
    /// The key contains the pattern anywhere.
    Contains,
}

/// What a rule makes of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Turn {
    /// Another operation or key: the rule has nothing to say.
    Other,
    /// A matching request among the first `skip`: let through untouched.
    Skipped,
    /// The rule applies to this request.
    Applies,
    /// A matching request after the rule has applied `times` times.
    Spent,
}

/// Picks requests: of `op`, on a key matching `pattern`, the ones after the
/// first `skip` matching ones, `times` of them (`None`: for ever).
#[derive(Clone, Debug)]
pub struct Selector {
    op: Op,
    pattern: String,
    key_match: KeyMatch,
    skip: usize,
    times: Option<usize>,
    /// Matching requests seen so far.
    seen: usize,
    /// Requests the rule applied to so far.
    applied: usize,
}

impl Selector {
    pub fn new(op: Op, pattern: impl Into<String>, key_match: KeyMatch, skip: usize, times: Option<usize>) -> Selector {
        Selector { op, pattern: pattern.into(), key_match, skip, times, seen: 0, applied: 0 }
    }

    /// Decides for one request, counting it.
    pub fn turn(&mut self, op: Op, key: &str) -> Turn {
        let matches = match self.key_match {
            KeyMatch::Prefix => key.starts_with(&self.pattern),
            KeyMatch::Contains => key.contains(&self.pattern),
        };
        if op != self.op || !matches {
            return Turn::Other;
        }
        self.seen += 1;
        if self.seen <= self.skip {
            return Turn::Skipped;
        }
        if self.times.is_some_and(|t| self.applied >= t) {
            return Turn::Spent;
        }
        self.applied += 1;
        Turn::Applies
    }

    /// How many requests the rule applied to so far.
    pub fn applied(&self) -> usize {
        self.applied
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_then_applies_then_is_spent() {
        let mut s = Selector::new(Op::Put, "chunks/", KeyMatch::Prefix, 1, Some(2));
        assert_eq!(s.turn(Op::Get, "chunks/a"), Turn::Other, "another operation");
        assert_eq!(s.turn(Op::Put, "trees/chunks/a"), Turn::Other, "not a prefix");
        assert_eq!(s.turn(Op::Put, "chunks/a"), Turn::Skipped);
        assert_eq!(s.turn(Op::Put, "chunks/b"), Turn::Applies);
        assert_eq!(s.turn(Op::Put, "chunks/c"), Turn::Applies);
        assert_eq!(s.turn(Op::Put, "chunks/d"), Turn::Spent);
        assert_eq!(s.applied(), 2);
        let mut anywhere = Selector::new(Op::List, "chunks/", KeyMatch::Contains, 0, None);
        assert_eq!(anywhere.turn(Op::List, "trees/chunks/a"), Turn::Applies);
        assert_eq!(Op::parse("list").map(Op::name), Some("LIST"));
        assert_eq!(Op::parse("LIST"), None);
    }
}
